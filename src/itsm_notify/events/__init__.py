"""The event model and its rules: what an event is, who is told, the event types."""
