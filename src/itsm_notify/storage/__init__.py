"""Storage: the tool's schema, engines, the outbox queue and the delivery records."""
