"""Consistent hashing: which shard owns a key.

Each shard sits at ``vnodes`` pseudo-random points on a 64-bit ring and a key belongs to the
first point clockwise from its hash, so adding or removing one of N shards moves about 1/N of
the keys (only those between the changed points and their predecessors) instead of nearly all
of them, as ``hash % N`` would.
"""

from __future__ import annotations

import bisect
import hashlib


def _h(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    def __init__(self, shards: list[str] | tuple[str, ...] = (), vnodes: int = 128):
        self.vnodes = vnodes
        self._points: list[int] = []
        self._owners: list[str] = []
        self.shards: list[str] = []
        for s in shards:
            self.add(s)

    def _rebuild(self) -> None:
        pts = sorted((_h(f"{s}#{v}"), s) for s in self.shards for v in range(self.vnodes))
        self._points = [p for p, _ in pts]
        self._owners = [s for _, s in pts]

    def add(self, shard: str) -> None:
        if shard not in self.shards:
            self.shards.append(shard)
            self._rebuild()

    def remove(self, shard: str) -> None:
        if shard in self.shards:
            self.shards.remove(shard)
            self._rebuild()

    def owner(self, key: str) -> str:
        if not self._points:
            raise LookupError("the ring has no shards")
        i = bisect.bisect(self._points, _h(key))
        return self._owners[i if i < len(self._points) else 0]
