"""Per-region context cache: sharded in-memory actors, write-through to Redis (issue 5)."""
