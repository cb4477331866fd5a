"""Stage 6, demand partners: fan out to external bidders beside internal pricing, and bring
their valid bids to the one auction.

``Partners`` (one per replica) holds each configured partner's pooled client, tail health and
QPS bucket, the cutoff policy in force (control's, else ``regions.yaml``), and the counts.
``start`` runs as soon as a request is admitted and enriched: for each eligible partner it
decides whether to call (control's share, the tail throttle, backoff, the QPS cap) and with how
much time: ``tmax = min(policy cutoff, time left before the deadline - reserve_ms)``, the same
number as its HTTP timeout. The calls run as tasks while targeting and pricing go on; the
auction awaits the ``Round`` (``collect``), which never waits past the latest partner deadline,
so a hanging partner costs at most its cutoff and nothing a partner does delays the answer
past the request's deadline or raises into it.
"""

from __future__ import annotations

import asyncio
import random
import time

from fleet.config import PartnerSettings, PartnerSpec
from fleet.ledger.events import Event
from fleet.partners.client import CallResult, PartnerClient, Sent
from fleet.partners.health import PartnerHealth
from fleet.partners.messages import PartnerCutoff, PartnerPolicy, partner_policy_from_tiers
from fleet.partners.outbound import Outbound
from fleet.partners.stats import PartnerStats
from fleet.partners.validate import PartnerBid, Validator
from fleet.pipeline.auction import Offer
from fleet.pipeline.deadline import now


class QpsBucket:
    """Token bucket: ``qps`` calls a second, bursts of a tenth of a second (at least one)."""

    __slots__ = ("rate", "cap", "tokens", "t")

    def __init__(self, qps: float):
        self.rate, self.cap = qps, max(1.0, qps / 10.0)
        self.tokens, self.t = self.cap, now()

    def take(self) -> bool:
        t = now()
        self.tokens = min(self.cap, self.tokens + (t - self.t) * self.rate)
        self.t = t
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Partner:
    __slots__ = ("spec", "client", "health", "qps", "defaults")

    def __init__(self, spec: PartnerSpec, settings: PartnerSettings, tiers: list[str], rng: random.Random):
        self.spec = spec
        self.client = PartnerClient(spec, settings.max_connections)
        self.health = PartnerHealth(settings, rng)
        self.qps = QpsBucket(spec.qps)
        cls = settings.cutoff_classes[spec.cutoff_class]
        seen = spec.tiers or tiers
        self.defaults = {t: PartnerCutoff(cutoff_ms=float(spec.cutoff_ms.get(t, cls.get(t, 0.0))))
                         for t in tiers if t in seen}


class Partners:
    """Stage 6 for one replica."""

    def __init__(self, specs: list[PartnerSpec], settings: PartnerSettings, tiers: list[str],
                 rates: dict[str, float], clock=time.time, rng: random.Random | None = None):
        rng = rng or random.Random()
        self.settings = settings
        self.rates = rates
        self.clock = clock
        self.partners = {s.id: Partner(s, settings, tiers, rng) for s in specs}
        self.policy: PartnerPolicy = {}  # control's, by partner and tier (overrides defaults)
        self.stats = PartnerStats(list(self.partners))

    def __bool__(self) -> bool:
        return bool(self.partners)

    def cutoff(self, pid: str, tier: str) -> PartnerCutoff | None:
        """The cutoff in force: control's for this partner and tier, else the default; None
        where the partner may not see the tier."""
        p = self.partners[pid]
        if tier not in p.defaults:
            return None
        return self.policy.get(pid, {}).get(tier) or p.defaults[tier]

    def apply_policy(self, tier_policies: dict[str, dict]) -> None:
        """Control's pushed tier policies: their ``partners`` entries replace the defaults;
        partners or tiers a policy does not name keep theirs."""
        self.policy = {pid: t for pid, t in partner_policy_from_tiers(tier_policies).items()
                       if pid in self.partners}

    def start(self, a) -> "Round | None":
        """Call the eligible partners for ``a`` (``fleet.pipeline.request.Admitted``); None
        when none is eligible."""
        if not self.partners or not a.floors:
            return None
        t0 = now()
        dl, tier, wall = a.dl, a.tier, self.clock()
        left_ms = (dl.at - t0) * 1000.0 - self.settings.reserve_ms
        out: Outbound | None = None
        rnd = Round(self, a, t0)
        for pid, p in self.partners.items():
            c = self.cutoff(pid, tier)
            if c is None:
                continue
            counts, skipped = self.stats.c(pid, tier), self.stats.skipped[pid]
            counts["eligible"] += 1
            if c.cutoff_ms <= 0 or c.share <= 0:
                skipped["policy_off"] += 1
                continue
            why = p.health.admit(tier, c.cutoff_ms, c.share, wall)
            if why is not None:
                skipped[why] += 1
                continue
            tmax = min(c.cutoff_ms, left_ms)
            if tmax < self.settings.min_tmax_ms:
                skipped["no_time"] += 1
                continue
            if not p.qps.take():
                skipped["qps_capped"] += 1
                continue
            if out is None:
                out = Outbound(a.req, a.floors, a.privacy)
            body, headers = out.body(p.spec, int(tmax), self.rates[p.spec.currency])
            rnd.launch(p, body, headers, c.cutoff_ms, t0 + tmax / 1000.0, full=tmax >= c.cutoff_ms)
        return rnd if rnd.tasks else rnd.empty()

    async def close(self) -> None:
        for p in self.partners.values():
            await p.client.close()

    def summary(self) -> dict:
        """``/stats``'s ``partners`` block."""
        wall = self.clock()
        extra = {}
        for pid, p in self.partners.items():
            extra[pid] = {
                "state": {t: p.health.state(t, self.cutoff(pid, t).cutoff_ms, wall) for t in p.defaults},
                "p95_ms": {t: p.health.p95_ms(t) for t in p.defaults},
                "cutoff_ms": {t: self.cutoff(pid, t).cutoff_ms for t in p.defaults},
                "share": {t: self.cutoff(pid, t).share for t in p.defaults},
                "from_control": sorted(self.policy.get(pid, {})),
            }
        return self.stats.snapshot(extra)

    def report(self) -> dict:
        p95 = {pid: {t: p.health.p95_ms(t) for t in p.defaults} for pid, p in self.partners.items()}
        cut = {pid: {t: self.cutoff(pid, t).cutoff_ms for t in p.defaults} for pid, p in self.partners.items()}
        return self.stats.report(p95, cut)


class Round:
    """One request's partner calls, from ``start`` to the auction."""

    __slots__ = ("owner", "a", "t0", "tasks", "until", "offers", "participating", "done")

    def __init__(self, owner: Partners, a, t0: float):
        self.owner, self.a, self.t0 = owner, a, t0
        self.tasks: dict[str, tuple] = {}  # pid -> (task, cutoff, on the wire, given its whole cutoff)
        self.until = t0
        self.offers: dict[str, list[Offer]] = {}
        self.participating = 0
        self.done = False

    def empty(self) -> "Round":
        self.done = True
        return self

    def launch(self, p: Partner, body: bytes, headers: dict, cutoff_ms: float, deadline: float,
               full: bool = True) -> None:
        """``full``: the call was given its whole cutoff (not cut short by the request's time)."""
        sent = Sent()
        task = asyncio.get_running_loop().create_task(p.client.call(body, headers, deadline, sent))
        self.tasks[p.spec.id] = (task, cutoff_ms, sent, full)
        self.until = max(self.until, deadline)

    def _late(self, p: Partner, counts, sent: Sent, res: CallResult, cutoff_ms: float, full: bool, wall: float) -> None:
        """A call out of time. Out of time before the request was written (our side: a busy
        loop, a full pool), the partner never saw it: not called, and nothing about its tail."""
        if not sent.done:
            self.owner.stats.skipped[p.spec.id]["unsent"] += 1
            return
        counts["called"] += 1
        counts["late"] += 1
        if full:  # late within less than its cutoff says nothing about its tail
            p.health.observe(self.a.tier, "late", res.elapsed_ms, cutoff_ms, wall)

    async def collect(self) -> dict[str, list[Offer]]:
        """The partners' valid bids as offers, per imp; waits at most until the latest
        partner deadline (those not done then are late, and cancelled)."""
        if self.done:
            return self.offers
        self.done = True
        tasks = [t for t, *_ in self.tasks.values()]
        pending = [t for t in tasks if not t.done()]
        if pending:
            wait = self.until - now()
            if wait > 0:
                await asyncio.wait(pending, timeout=wait)
        o = self.owner
        a, st, wall = self.a, o.stats, o.clock()
        validator = None
        for pid, (task, cutoff_ms, sent, full) in self.tasks.items():
            p = o.partners[pid]
            counts = st.c(pid, a.tier)
            if not task.done() or task.cancelled():
                task.cancel()
                res = CallResult("timeout", (now() - self.t0) * 1000.0)
                if not sent.done:
                    # aiohttp writes the request from a task of its own, which may already be
                    # queued to run: whether the partner sees this call is known once that task
                    # has had its turn (it is ahead of this callback in the loop's queue).
                    asyncio.get_running_loop().call_soon(self._late, p, counts, sent, res, cutoff_ms, full, wall)
                    continue
            else:
                res = task.result()  # the client never raises
            if res.outcome == "timeout":
                self._late(p, counts, sent, res, cutoff_ms, full, wall)
                continue
            counts["called"] += 1
            if res.outcome == "error":
                counts["errors"] += 1
                st.error_kinds[pid][res.detail] += 1
                p.health.observe(a.tier, "error", res.elapsed_ms, cutoff_ms, wall)
                continue
            bids: list[PartnerBid] | None = []
            if res.outcome == "answer":
                if validator is None:
                    validator = Validator(a.req, a.floors, o.rates)
                bids = validator.judge(pid, p.spec.seat or pid, res.body, st.dropped[pid])
            if bids is None:  # unreadable: an error, for counts and health alike
                counts["errors"] += 1
                st.error_kinds[pid]["malformed_response"] += 1
                p.health.observe(a.tier, "error", res.elapsed_ms, cutoff_ms, wall)
                continue
            counts["in_time"] += 1
            p.health.observe(a.tier, "in_time", res.elapsed_ms, cutoff_ms, wall)
            if bids:
                counts["participating"] += 1
                self.participating += 1
                for b in bids:
                    self.offers.setdefault(b.imp_id, []).append(
                        Offer(b.imp_id, None, None, b.price, b.price, b.bid.dealid, f"partner:{pid}", b))
        return self.offers

    def settle_later(self) -> None:
        """The request ended without an auction: its calls are still accounted for, in the
        background, never holding the answer."""
        if not self.done:
            asyncio.get_running_loop().create_task(self.collect())

    def close(self, winners: dict | None, internal_offered: bool) -> None:
        """After the answer: partner wins counted (only bids that left), and the request's
        participating bidders in its pre-fan-out bucket."""
        st = self.owner.stats
        for o in (winners or {}).values():
            if o.partner is not None:
                st.won(o.partner.partner, self.a.tier, o.price)
        st.request((self.t0 - self.a.dl.arrival) * 1000.0, self.participating, internal_offered)


async def collect_partners(p) -> None:
    """Await the partners of ``p`` (a ``Pending``). The wait is the request's ``partners``
    time (beside the stages, on ``/stats``), not the stage it interrupts (pricing), whose clock
    moves past it."""
    rnd = p.fanout
    if rnd is None:
        return
    t0 = now()
    p.partner_offers = await rnd.collect()
    waited = now() - t0
    p.dl.spent["partners"] = waited
    p.dl.stage_started += waited


def partner_selected(o: Offer, b, wall: float, region: str, auction: str, publisher: str, test: bool):
    """The ``selected`` ledger event of a winning partner bid ``o`` sent as our bid ``b``: the
    partner's own URLs, price and currency ride on it (contract item 3); no user (its exposure
    is not ours to count)."""
    pb = o.partner
    return Event(f"selected:{b.id}", "selected", wall, region, b.id, auction, o.imp_id,
                 f"partner:{pb.partner}", pb.bid.crid or "", o.source, publisher, o.price, "",
                 0, wall, wall + (b.exp or 0), "test" if test else "",
                 partner=pb.partner, partner_urls=pb.urls, partner_price=pb.partner_price,
                 partner_cur=pb.partner_cur, partner_bid=pb.bid.id or "", partner_seat=pb.seat or "")
