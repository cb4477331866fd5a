"""The in-memory half of a cache shard: user entries, frequency events, publisher statistics.

Plain Python with no I/O: the shard (``fleet.cache.shard``) puts Redis behind it. Frequency
events carry a stable id (auction and imp), so merging what Redis holds with what this process
counted is a set union: a replayed or re-read event never counts twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec


@dataclass(frozen=True, slots=True)
class FreqEvent:
    """One counted exposure: ``user`` saw (was bid for by) campaign ``cid`` at ``ts``."""

    user: str
    cid: str
    eid: str
    ts: float
    segments: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Profile:
    """What the shard serves for one user: stored segments, last seen, and events per campaign."""

    segments: tuple[str, ...]
    seen: float
    freq: dict[str, tuple[tuple[str, float], ...]]  # cid -> ((event id, ts), ...)
    age_s: float  # since this copy was loaded from Redis (or created here)


_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(
    tuple[tuple[str, ...], float, dict[str, tuple[tuple[str, float], ...]], float]).decode


def profile_tuple(p: Profile) -> tuple:
    """A Profile's fields in the one order both its encodings use (the shard socket's answers,
    ``fleet.cache.wire``, and ``pack_profile``)."""
    return (p.segments, p.seen, p.freq, p.age_s)


def pack_profile(p: Profile) -> bytes:
    """``p`` as one bytes object, for copies held a long time in a busy process (the ingress's
    near-cache): bytes are invisible to the garbage collector, where a held Profile is a dict and
    a tuple per campaign it must walk in every full collection (measured: thousands of held
    profiles took the ingress's full collections from 2-5 ms to 9-16 ms)."""
    return _pack(profile_tuple(p))


def unpack_profile(b: bytes) -> Profile:
    """The Profile ``pack_profile`` packed: a fresh copy that dies with the request using it."""
    return Profile(*_unpack(b))


@dataclass(slots=True)
class UserEntry:
    segments: set[str] = field(default_factory=set)
    seen: float = 0.0
    freq: dict[str, dict[str, float]] = field(default_factory=dict)  # cid -> eid -> ts
    loaded_at: float = 0.0
    complete: bool = False  # Redis's copy merged in (or Redis had none)


class ShardStore:
    """Bounded map of users; the oldest-inserted entry goes first when full (it reloads on
    demand from Redis, so eviction costs a miss, never a count)."""

    def __init__(self, max_users: int = 500_000, window_s: float = 86_400.0, clock=time.time):
        self.max_users = max_users
        self.window_s = window_s  # events older than the longest cap window are forgotten
        self.clock = clock
        self.users: dict[str, UserEntry] = {}

    def _entry(self, user: str, now: float) -> UserEntry:
        e = self.users.get(user)
        if e is None:
            if len(self.users) >= self.max_users:
                self.users.pop(next(iter(self.users)))
            e = self.users[user] = UserEntry(loaded_at=now)
        return e

    def view(self, user: str, now: float | None = None) -> Profile | None:
        """The user's profile, or None when this shard has not loaded it (a miss)."""
        e = self.users.get(user)
        if e is None or not e.complete:
            return None
        now = self.clock() if now is None else now
        horizon = now - self.window_s
        freq = {}
        for cid, evs in e.freq.items():
            live = tuple((eid, ts) for eid, ts in evs.items() if ts >= horizon)
            if live:
                freq[cid] = live
        return Profile(tuple(sorted(e.segments)), e.seen, freq, max(0.0, now - e.loaded_at))

    def apply(self, ev: FreqEvent) -> None:
        """Count an event in memory (whether or not the user's Redis copy is loaded yet)."""
        e = self._entry(ev.user, ev.ts)
        e.freq.setdefault(ev.cid, {})[ev.eid] = ev.ts
        e.segments.update(ev.segments)
        e.seen = max(e.seen, ev.ts)

    def merge(self, user: str, segments: tuple[str, ...], seen: float,
              events: list[tuple[str, str, float]], now: float | None = None) -> None:
        """Merge the user's copy read from Redis: (cid, eid, ts) events, union by event id."""
        now = self.clock() if now is None else now
        e = self._entry(user, now)
        e.segments.update(segments)
        e.seen = max(e.seen, seen)
        for cid, eid, ts in events:
            e.freq.setdefault(cid, {}).setdefault(eid, ts)
        e.loaded_at = now
        e.complete = True

    def prune(self, now: float | None = None) -> int:
        """Drop events past the window; returns how many went."""
        horizon = (self.clock() if now is None else now) - self.window_s
        dropped = 0
        for e in self.users.values():
            for cid in list(e.freq):
                evs = e.freq[cid]
                old = [k for k, ts in evs.items() if ts < horizon]
                for k in old:
                    del evs[k]
                dropped += len(old)
                if not evs:
                    del e.freq[cid]
        return dropped


@dataclass(slots=True)
class PublisherStats:
    """Win and loss feedback per publisher, the source of the precomputed publisher features."""

    wins: int = 0
    losses: int = 0
    price_sum: float = 0.0  # clearing prices of wins, CPM

    def features(self, prior_wins: float = 1.0, prior_n: float = 4.0) -> tuple[float, float | None]:
        """(smoothed win rate, mean clearing price or None)."""
        n = self.wins + self.losses
        rate = (self.wins + prior_wins) / (n + prior_n)
        return rate, (self.price_sum / self.wins if self.wins else None)
