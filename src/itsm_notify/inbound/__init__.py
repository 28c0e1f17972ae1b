"""Inbound mail: what comes back to the help desk. Intake (MTA pipe, IMAP, Maildir) with
an exactly-once record, then parsing and classification (delivery reports, complaints,
auto-replies, replies, new mail), then the decision written through the source."""
