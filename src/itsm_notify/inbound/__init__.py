"""Inbound mail: what comes back to the help desk (delivery reports, complaints,
auto-replies, replies and new mail), parsed and classified. Pure: no database, no
sockets; intake (stdin, Maildir, IMAP) and the database work live elsewhere."""
