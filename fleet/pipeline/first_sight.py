"""Cold users apart from failures: the first lookup of a user is not a degraded decision.

A cache miss means the user's profile was not in its shard's memory. For a user this replica
never looked up before, that is a first sight: a new user, or one nobody here asked for since
the shard started (the shard reads Redis in the background, and the next lookup finds it). The
bid still uses population defaults (``enrichment.DEFAULT_MULTIPLIER``), but the outcome is
``cold_user``, counted apart (``enrich.cold_user``), not flagged as a degraded decision. A miss
for a user this replica has looked up before stays ``miss`` (flagged ``enrichment_miss``): the
shard lost or evicted it, which is what an operator's degraded share must show, together with
timeouts and errors.

Memory is bounded: two generations of at most ``max_users`` ids each; when the newer fills, the
older is dropped (a user unseen for two generations is a first sight again).
"""

from __future__ import annotations

COLD_USER = "cold_user"


class FirstSight:
    def __init__(self, max_users: int = 200_000):
        self.max_users = max_users
        self.recent: set[str] = set()
        self.older: set[str] = set()

    def seen(self, uid: str) -> bool:
        """Whether ``uid`` was seen before; it is seen from now on."""
        if uid in self.recent:
            return True
        before = uid in self.older
        if len(self.recent) >= self.max_users:
            self.older, self.recent = self.recent, set()
        self.recent.add(uid)
        return before

    def outcome(self, uid: str, lookup: str) -> str:
        """The lookup's outcome as enrichment names it: a first-sight miss is ``cold_user``."""
        seen = self.seen(uid)
        return COLD_USER if lookup == "miss" and not seen else lookup
