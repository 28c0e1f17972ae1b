"""Inbound mail: intake (MTA pipe, IMAP, Maildir), the exactly-once record, and the
classification of what comes back (delivery reports, auto-replies, replies, new mail)."""
