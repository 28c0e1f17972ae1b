"""Composing: templates to text and HTML, header fields, and the message's wire format
(with the measured fast paths beside the plain ones they must equal)."""
