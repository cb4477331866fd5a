"""The model versions one replica prices with, the canary's choice, and what each version did.

A replica prices with one current version and, during a canary, a candidate for a share of its
priced requests. ``serve_config.yaml`` declares a version (``user_config: {model, candidate}``,
applied in place by ``reconfigure``); control's assignment settles over the declaration during a
canary (the baseline) and after a promotion (``ModelAssignment.version_for``).

Where the versions live depends on how the region prices:

- local (``warmups`` None): the versions load into this process (``fleet.ml.scorer``), one load
  at a time, warmed before they are swapped in; a candidate that fails to load keeps its share
  and prices it by rule, so control sees its errors;
- remote: the inference deployment loads them (``serve.multiplexed``); a version is loaded there
  by one warm-up call when it is assigned, not on a request (``WarmUps``), requests for a version
  price by rule until that call has answered, and a candidate gets its share only from then, so
  its cold start does not count against it.

``ModelSlots.pick`` is the one canary choice both pricing paths use (``fleet.region.pricing``);
``VersionOutcomes`` counts per version what the requests it priced did: control's evidence.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from fleet.ml.features import N_FEATURES
from fleet.obs.histogram import StageHistograms

log = logging.getLogger("ray.serve")


WARMUP_CALL_S = 30.0  # one remote warm-up call's bound (a model's load on the inference side takes seconds)


def _warm_rows() -> np.ndarray:
    return np.zeros((1, N_FEATURES), np.float32)


@dataclass(frozen=True, slots=True)
class Canary:
    version: str
    share: float  # of priced requests
    scorer: object | None = None  # local pricing: the candidate loaded here (None: it failed to load)


class WarmUps:
    """Versions loaded on the inference side: one warm-up call each, off the requests' path (the
    first call of a version loads it, which takes longer than any pricing budget). A call is
    bounded (``WARMUP_CALL_S``): one that has not answered by then is given up, ``error`` says so
    (``/ready`` shows it), and the next ``ensure`` (every readiness probe) calls again; an
    unanswered call held the version as warming for good, and the region not ready, silently."""

    def __init__(self, warm_up: Callable[[str, np.ndarray], Awaitable], timeout_s: float | None = None):
        self.warm_up = warm_up  # (version, rows): a call of that version, answered once it is loaded
        self.timeout_s = timeout_s  # None: WARMUP_CALL_S
        self.warm: set[str] = set()
        self.error = ""  # why the last warm-up call failed ('' once one answered)
        self._warming: dict[str, asyncio.Task] = {}  # held: a task is weakly referenced

    def ready(self, version: str) -> bool:
        return version in self.warm

    def ensure(self, version: str | None) -> None:
        if version and version not in self.warm and version not in self._warming:
            self._warming[version] = asyncio.get_running_loop().create_task(self._run(version))

    async def _run(self, version: str) -> None:
        limit = WARMUP_CALL_S if self.timeout_s is None else self.timeout_s
        try:
            await asyncio.wait_for(self.warm_up(version, _warm_rows()), limit)
            self.warm.add(version)
            self.error = ""
        except asyncio.TimeoutError:  # tried again on the next probe, request or assignment
            self.error = f"{version}: inference warm-up call not answered within {limit:g} s"
            log.warning("inference warm-up: %s", self.error)
        except Exception as exc:
            self.error = f"{version}: inference warm-up call failed: {exc!r}"[:200]
            log.warning("inference warm-up for %s failed: %s", version, exc)
        finally:
            self._warming.pop(version, None)


class ModelSlots:
    """The current version and a canary's candidate of one replica (see the module docstring)."""

    def __init__(self, region: str, declared: str | None = None, backend: str = "auto",
                 warmups: WarmUps | None = None, stats: Counter | None = None, scorer=None):
        self.region = region
        self.backend = backend
        self.warmups = warmups  # remote pricing; None: versions load in this process
        self.declared = declared  # what serve_config.yaml names (user_config can change it)
        self.declared_candidate: str | None = None  # a candidate named in user_config: control canaries it
        self.assigned = None  # control's ModelAssignment last applied
        self.scorer = scorer  # local pricing: the current version, loaded
        self.remote_version: str | None = None  # remote pricing: the version asked for
        self.candidate: Canary | None = None
        self.error = ""  # why the last load failed ('' when it did not)
        self.stats = stats if stats is not None else Counter()
        self.rng = random.Random()
        self._lock = threading.Lock()

    @property
    def current(self) -> str | None:
        if self.warmups is not None:
            return self.remote_version
        return self.scorer.version if self.scorer is not None else None

    def wanted(self) -> str | None:
        """The version this replica should price with now: its declaration, or control's."""
        if self.assigned is None:
            return self.declared
        return self.assigned.version_for(self.region, self.declared)

    def ready(self, version: str) -> bool:
        return self.warmups is None or self.warmups.ready(version)

    def pick(self) -> tuple[object | None, str | None]:
        """(scorer, version) for one priced request: the canary's candidate for its share of
        requests once it is ready, the current version otherwise (remote: no scorer here)."""
        c = self.candidate
        if c is not None and c.share > 0 and self.ready(c.version) and self.rng.random() < c.share:
            return c.scorer, c.version
        s = self.scorer  # read once: a load swapping it in on its thread cannot split the pair
        return s, (self.remote_version if self.warmups is not None else s.version if s is not None else None)

    def reconfigure(self, user_config: dict | None) -> None:
        """``user_config: {model: name/version, candidate: ...}`` in serve_config.yaml."""
        spec = (user_config or {}).get("model")
        self.declared = spec
        self.declared_candidate = (user_config or {}).get("candidate")  # control canaries it
        if self.wanted() != spec:
            return  # control's version stands over this declaration (a canary's baseline, a promotion)
        if self.warmups is not None:
            self.remote_version = spec  # the inference replicas load it (multiplexed) on first use
            return
        if spec and spec != self.current:
            self.load(spec)
        elif spec is None and "model" in (user_config or {}):
            self.scorer = None  # explicit null: back to rule pricing

    async def assign(self, m) -> None:
        """Control's model assignment: the current version, and a candidate for a share."""
        self.assigned = m
        settled = self.wanted()
        if self.warmups is not None:
            self.remote_version = settled
            self.candidate = Canary(m.candidate, m.share) if m.candidate else None
            for version in (settled, m.candidate):
                self.warmups.ensure(version)  # before its first request, not on it
            return
        if settled and settled != self.current:
            await asyncio.to_thread(self.load, settled)
        if not m.candidate:
            self.candidate = None
            return
        held = self.candidate
        if held is not None and held.version == m.candidate:
            self.candidate = Canary(held.version, m.share, held.scorer)
            return
        from fleet.ml.scorer import load_scorer

        try:
            scorer = await asyncio.to_thread(load_scorer, m.candidate, self.backend)
            scorer.predict(_warm_rows())
        except Exception as exc:  # the candidate's share prices by rule, and control sees its errors
            log.error("candidate %s not loaded: %s", m.candidate, exc)
            scorer = None
        self.candidate = Canary(m.candidate, m.share, scorer)

    def load(self, spec: str) -> None:
        """Load a version into this process and swap it in; on failure keep pricing as before
        and say so. Loads run one at a time (``reconfigure`` and control's pushes call this from
        threads), and a version no longer wanted when its load ends is not swapped in: a slow
        load of an older decision cannot overwrite a newer one."""
        from fleet.ml.scorer import load_scorer

        with self._lock:
            if spec != self.wanted():
                return
            try:
                scorer = load_scorer(spec, self.backend)
            except Exception as exc:  # the region keeps bidding on what it had
                self.error = f"{spec}: {exc}"
                self.stats["model.load_error"] += 1
                log.error("model %s not loaded, pricing stays on %s: %s", spec, self.current or "rule", exc)
                return
            scorer.predict(_warm_rows())  # warm up before the swap
            if spec != self.wanted():
                return
            self.scorer = scorer  # one assignment: requests see the old or the new, never half
            self.error = ""

    def summary(self) -> dict | None:
        """Control's assignment as this replica applies it (None before the first)."""
        m = self.assigned
        if m is None:
            return None
        return {"current": m.current, "candidate": m.candidate, "share": m.share, "over": m.over,
                "pricing": self.wanted()}


class VersionOutcomes:
    """Per version, what the requests it priced did since the last report: priced, rule
    fallbacks (errors), bids, value and price, and the pricing latency."""

    def __init__(self) -> None:
        self.versions: dict[str, dict] = {}
        self.latency: dict[str, StageHistograms] = {}

    def observe(self, p) -> None:
        """One priced request (``fleet.pipeline.request.Pending`` after the auction)."""
        v = self.versions.get(p.model)
        if v is None:
            v = self.versions[p.model] = {"priced": 0, "errors": 0, "bids": 0, "value": 0.0, "price": 0.0}
            self.latency[p.model] = StageHistograms()
        v["priced"] += 1
        if "pricing_rule_fallback" in p.dl.degraded:
            v["errors"] += 1
        winners = p.winners or {}
        v["bids"] += bool(winners)
        for o in winners.values():
            v["value"] += o.value
            v["price"] += o.price
        self.latency[p.model].observe("pricing", p.pricing_s)

    def take(self) -> dict[str, dict]:
        """The counters (with the pricing latency histogram) since the last call, reset."""
        out = {}
        for name, v in self.versions.items():
            out[name] = {**v, "latency_counts": self.latency[name].counts.get("pricing", [])}
        self.versions, self.latency = {}, {}
        return out
