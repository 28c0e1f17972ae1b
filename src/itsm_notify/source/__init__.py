"""The source: the one place that knows the help desk's own schema (tables or views)."""
