"""The event ledger: signed notice identity, non-blocking event emission to Redis Streams, an
idempotent consumer that turns events into spend, and reconciliation (issue 6)."""
