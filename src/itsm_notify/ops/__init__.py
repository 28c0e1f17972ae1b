"""Operations: the scheduler, diagnostics (test-email), unsubscribe, the demo."""
