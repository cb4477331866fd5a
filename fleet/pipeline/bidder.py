"""One region's request path, stages 1-8, in-process and without Ray.

``RegionBidder.bid`` takes the raw HTTP facts and returns an ``Answer`` (status, body, headers).
It never raises for bad input: malformed bodies are 400/413, rejections and empty auctions are
204 with a reason, and an answer that would leave after the deadline becomes a no-bid. The Serve
deployment in ``fleet.serve.region_app`` is a thin wrapper around this class.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from fleet.campaigns.model import Campaign, Creative
from fleet.config import RegionsFile
from fleet.openrtb import codec
from fleet.openrtb.model import BidRequest, Imp
from fleet.openrtb.nbr import NBR
from fleet.obs.histogram import StageHistograms
from fleet.pipeline.admission import Admission, Rejected
from fleet.pipeline.auction import Offer, choose
from fleet.pipeline.creative_fit import SlotRules
from fleet.pipeline.deadline import Deadline, now
from fleet.cache.store import FreqEvent, Profile
from fleet.ledger.events import Event
from fleet.pipeline.enrichment import UserContext, enrich, identity
from fleet.pipeline.pacing import FrequencyCounter, LocalBudget
from fleet.ml.features import FeatureBuilder, matrix
from fleet.pipeline.pricing import WinRateModel, meet_floor, model_prices, rule_price
from fleet.pipeline.respond import BidIds, NoticeUrlTooLong, bill_window, build_response
from fleet.pipeline.targeting import CampaignIndex, ImpFacts

JSON = "application/json"
log = logging.getLogger("fleet.bidder")


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    degraded: tuple[str, ...] = ()
    spent: dict[str, float] = field(default_factory=dict)  # seconds per stage, and "total"
    events: list[FreqEvent] = field(default_factory=list)  # exposures for the cache to count
    ledger: list[Event] = field(default_factory=list)  # bid selected / response sent
    dl: Deadline | None = None  # the request's deadline (tracing reads its budgets)


def publisher_of(req: BidRequest) -> str | None:
    inv = req.site if req.site is not None else req.app
    if inv is None:
        return None
    return inv.publisher.id if inv.publisher is not None and inv.publisher.id else inv.id


@dataclass(slots=True)
class Admitted:
    """A request through stage 1: decoded, admitted, its deadline and tier planned."""

    req: BidRequest
    version: str
    dl: Deadline
    floors: dict[str, float]
    tier: str
    currency: str
    accept_encoding: str | None
    uid: str | None  # whom enrichment looks up; None: contextual or anonymous


@dataclass(slots=True)
class Pending:
    """A request through stages 1-4, waiting for its candidates to be priced (locally, or by
    the inference deployment when the region prices remotely)."""

    req: BidRequest
    version: str
    dl: Deadline
    user: UserContext
    paced: list  # (imp, campaign, creative, deal id, floor, auction type) per candidate
    had_candidates: bool
    floors: dict[str, float]
    tier: str
    currency: str
    wall: float
    accept_encoding: str | None
    model: str | None = None  # the version asked to price (a canary's candidate, or the current)
    pricing_s: float = 0.0  # time the model call took

    def rows(self) -> np.ndarray:
        """One feature row per candidate, in ``paced`` order: what the model is called with."""
        builders: dict[str, FeatureBuilder] = {}
        rows = []
        for imp, c, cr, _deal, _floor, _at in self.paced:
            fb = builders.get(imp.id)
            if fb is None:
                fb = builders[imp.id] = FeatureBuilder(self.req, imp, self.user, self.floors[imp.id])
            rows.append(fb.row(c, cr))
        return matrix(rows)


class RegionBidder:
    """The in-process bid path of one region replica."""

    def __init__(
        self,
        region: str,
        config: RegionsFile,
        campaigns: list[Campaign],
        *,
        replicas: int | None = None,
        max_candidates: int = 16,
        max_imps: int = 64,
        scorer=None,
        profiles=None,
        signer=None,
        clock=time.time,
    ):
        spec = config.regions[region]
        self.region = region
        self.config = config
        self.spec = spec
        self.base_url = spec.public_url.rstrip("/") + spec.route_prefix
        self.clock = clock
        self.max_candidates = max_candidates  # per imp, best max bid first (see targeting)
        self.max_imps = max_imps  # imps past this many in one request are not bid on
        self.index = CampaignIndex(campaigns)
        self.admission = Admission(config.admission)
        self.budget = LocalBudget(spec.budget_share / (replicas or spec.replicas), clock=clock)
        self.freq = FrequencyCounter(clock=clock)
        self.ids = BidIds()
        self.rates = config.currencies
        self.fleet_cur = config.defaults.currency
        self.stats: Counter[str] = Counter()
        self.scorer = scorer  # a fleet.ml.scorer.Scorer, or None for rule pricing
        self.win_rate = WinRateModel()
        # creative id -> ad format: the win-rate model's segment within a publisher
        self.formats = {cr.id: cr.format for c in campaigns for cr in c.creatives}
        self.latency = StageHistograms()  # seconds per stage of every answered request
        # uid -> (Profile | None, lookup outcome), for in-process use; Serve looks up async.
        self.profiles = profiles
        self.cache_default_multiplier = config.defaults.cache.default_multiplier
        self.signer = signer  # a fleet.ledger.signing.NoticeSigner: notice URLs carry a signature
        self.tiers = dict(config.tiers)  # stage budgets per tier; control's policy pushes replace them
        # A canary: (scorer or None when it failed to load, its version, share of priced requests)
        self.candidate: tuple[object | None, str, float] | None = None
        self.versions: dict[str, dict] = {}  # version -> outcome counters since the last report
        self.version_latency: dict[str, StageHistograms] = {}
        self.rng = random.Random()

    # -- helpers ------------------------------------------------------------------------

    def _to_fleet(self, amount: float, cur: str) -> float | None:
        rate = self.rates.get(cur.upper() if cur else self.fleet_cur)
        return None if rate is None else amount * rate

    def _response_currency(self, req: BidRequest) -> str | None:
        if not req.cur or self.fleet_cur in req.cur:
            return self.fleet_cur
        for c in req.cur:
            if c.upper() in self.rates:
                return c.upper()
        return None

    def _no_bid(self, nbr: NBR, reason: str, dl: Deadline | None = None) -> Answer:
        self.stats["nobid"] += 1
        self.stats[f"nobid.{reason}"] += 1
        headers = {"x-openrtb-nbr": str(int(nbr)), "x-fleet-reason": reason}
        degraded = tuple(dl.degraded) if dl is not None else ()
        if degraded:
            headers["x-fleet-degraded"] = ",".join(degraded)
        return Answer(204, b"", headers, reason, degraded, self._spent(dl), dl=dl)

    def _spent(self, dl: Deadline | None) -> dict[str, float]:
        if dl is None:
            return {}
        dl.finish()
        if dl.degraded:
            self.stats["degraded"] += 1
            for kind in dl.degraded:
                self.stats[f"degraded.{kind}"] += 1
        spent = {**dl.spent, "total": now() - dl.arrival}
        self.latency.observe_all(spent)
        return spent

    def admit_notice(self, notice):
        """The notice with its price in the fleet's currency (what pacing and the ledger count),
        or why its unsigned figures cannot be true. An exchange charges in the response's
        currency (``cur``) and never more than the bid, first or second price; a price it could
        not have charged would block or misstate the campaign's spend."""
        if notice.price is None:
            return notice
        price = self._to_fleet(notice.price, notice.currency or self.fleet_cur)
        if price is None:
            return f"unknown currency {notice.currency!r}"
        if notice.kind in ("win", "bill") and notice.our_bid is not None:
            if price > notice.our_bid * 1.001 + 1e-4:
                return "price above the bid"
            # within conversion rounding of our bid: never more than the reservation it settles
            price = min(price, notice.our_bid)
        if price == notice.price and (notice.currency is None or notice.currency.upper() == self.fleet_cur):
            return notice
        return dataclasses.replace(notice, price=price, currency=self.fleet_cur)

    def learn(self, notice) -> None:
        """Notices settle the bid's reservation; win and loss notices teach the win-rate model
        (loss reason 102: outbid)."""
        if notice is None:
            return
        self.stats["notices_learned"] += 1
        self.budget.settle(notice)
        if notice.publisher is None or notice.our_bid is None:
            return
        segment = self.formats.get(notice.creative)
        if notice.kind == "win":
            self.win_rate.observe(notice.publisher, segment, notice.our_bid, True)
        elif notice.kind == "loss" and notice.loss_reason == 102:
            self.win_rate.observe(notice.publisher, segment, notice.our_bid, False)

    def eligible(self, req: BidRequest, imp: Imp, user: UserContext,
                 when: dt.datetime) -> list[tuple[Campaign, Creative]]:
        """Every campaign (with its first fitting creative) targeting admits for ``imp``: the
        bid path's targeting without its candidate cap or deadline, for the oracle and for
        training data."""
        rules = SlotRules(imp, req)
        return [(c, cr) for c in self.index.iter_matches(self.index.match(self._facts(req, imp, user, when)))
                if (cr := rules.first_fit(c)) is not None]

    def clock_dt(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.timezone.utc)

    def _facts(self, req: BidRequest, imp: Imp, user: UserContext, when: dt.datetime) -> ImpFacts:
        dev = req.device
        inv = req.site if req.site is not None else req.app
        domain = None
        publisher = None
        if inv is not None:
            domain = req.site.domain if req.site is not None else (req.app.bundle or req.app.domain)
            publisher = inv.publisher.id if inv.publisher is not None else None
        pmp = imp.pmp
        formats = imp.formats()
        return ImpFacts(
            country=dev.geo.country if dev is not None and dev.geo is not None else None,
            device_type=dev.devicetype if dev is not None else None,
            os=dev.os if dev is not None else None,
            domain=domain.lower() if domain else None,
            publisher=publisher,
            formats=formats,
            banner_sizes=tuple(imp.banner.sizes()) if formats == ("banner",) else (),
            deal_ids=tuple(d.id for d in pmp.deals) if pmp is not None else (),
            private_auction=bool(pmp is not None and pmp.private_auction == 1),
            segments=user.segments,
            when=when,
        )

    # -- the path -----------------------------------------------------------------------

    def bid(self, body: bytes, **http) -> Answer:
        """The whole path in-process: stages 1-4, the local model (or rule), stages 5-8.

        ``http``: the keyword arguments of ``begin`` (encodings, version header, arrival).
        """
        p = self.begin(body, **http)
        return p if isinstance(p, Answer) else self.price_local(p)

    def pick_model(self) -> tuple[object | None, str | None]:
        """The scorer and version for one request: the canary's candidate for its share of
        requests, the current version otherwise."""
        cand = self.candidate
        if cand is not None and cand[2] > 0 and self.rng.random() < cand[2]:
            return cand[0], cand[1]
        return self.scorer, (self.scorer.version if self.scorer is not None else None)

    def price_local(self, p: "Pending") -> Answer:
        """Stages 5-8 priced by the in-process model (or by rule when it has nothing)."""
        scorer, p.model = self.pick_model() if p.paced else (self.scorer, None)
        t0 = now()
        ctrs = self.score_local(p, scorer)
        p.pricing_s = now() - t0
        return self.finish(p, ctrs, f"model:{scorer.version}" if ctrs is not None else "rule")

    def begin(self, body: bytes, **http) -> "Answer | Pending":
        """Stages 1-4 in-process: the cache lookup (when ``profiles`` is set) is synchronous."""
        a = self.admit(body, **http)
        if isinstance(a, Answer):
            return a
        profile, lookup = (self.profiles(a.uid) if a.uid is not None and self.profiles is not None
                           else (None, "off"))
        return self.target(a, profile, lookup)

    def admit(
        self,
        body: bytes,
        *,
        content_encoding: str | None = None,
        accept_encoding: str | None = None,
        version: str | None = None,
        arrival: float | None = None,
    ) -> "Answer | Admitted":
        """Stage 1, and the start of 2: an early answer (400, 413, 204) or an admitted request
        with the user key enrichment should look up (None: contextual or anonymous)."""
        arrival = now() if arrival is None else arrival
        self.stats["requests"] += 1
        defaults = self.config.defaults
        # 1 admission: decode and validate, then the cheap rejections.
        try:
            ver = codec.check_version(version)
            req = codec.decode_request(body, content_encoding, defaults.max_body_bytes)
        except codec.RequestError as exc:
            self.stats[f"http.{exc.status}"] += 1
            err = codec.encode_response_error(exc.reason, exc.nbr)
            return Answer(exc.status, err, {"content-type": JSON}, exc.reason)
        dl = Deadline.plan(arrival, req.tmax, defaults.tmax_ms, self.spec.max_tmax_ms,
                           self.spec.network_allowance_ms)
        if dl.budget_s <= 0:
            return self._no_bid(NBR.TECHNICAL_ERROR, "tmax_below_allowance", dl)
        try:
            self.admission.check(req)
        except Rejected as exc:
            return self._no_bid(exc.nbr, exc.reason.replace(" ", "_"), dl)
        cur = self._response_currency(req)
        if cur is None:
            return self._no_bid(NBR.INVALID_REQUEST, "no_supported_currency", dl)

        # Floors in the fleet currency, per imp; the tier comes from the richest imp.
        floors: dict[str, float] = {}
        for imp in req.imp:
            f = self._to_fleet(imp.bidfloor, imp.bidfloorcur)
            if f is not None:
                floors[imp.id] = f
        has_deals = any(imp.pmp is not None and imp.pmp.deals for imp in req.imp)
        tier = self.config.tier_for(has_deals, max(floors.values(), default=0.0))
        dl.set_tier(tier, self.tiers[tier])
        self.stats[f"tier.{tier}"] += 1

        # 2 enrichment starts here: the caller looks ``uid`` up within the stage's budget.
        dl.start("enrichment")
        return Admitted(req, ver, dl, floors, tier, cur, accept_encoding, identity(req))

    def target(self, a: "Admitted", profile: Profile | None, lookup: str) -> "Answer | Pending":
        """The rest of stage 2 (the context from the lookup's outcome), then stages 3-4."""
        req, dl, floors, defaults = a.req, a.dl, a.floors, self.config.defaults
        user = enrich(req, profile, lookup, self.cache_default_multiplier)
        if user.contextual_only:
            self.stats[f"privacy.{user.reason}"] += 1
        elif user.defaulted:
            dl.degrade(f"enrichment_{user.lookup}")
        self.stats[f"enrich.{user.lookup}"] += 1

        # 3 targeting, with frequency caps (stored events and this replica's own)
        dl.start("targeting")
        wall = self.clock()
        when = dt.datetime.fromtimestamp(wall, dt.timezone.utc)  # one clock read per request
        # (imp, campaign, creative, deal id, floor, auction type) per eligible pairing
        candidates: list[tuple[Imp, Campaign, Creative, str | None, float, int]] = []
        truncated = False
        stored = user.freq or {}
        for i, imp in enumerate(req.imp):
            if i >= self.max_imps:  # bounded work per request, whatever its size
                self.stats["imp.over_limit"] += len(req.imp) - i
                break
            if i and dl.over():
                truncated = True
                break
            if imp.id not in floors:
                self.stats["imp.unknown_floor_currency"] += 1
                continue
            facts = self._facts(req, imp, user, when)
            rules = SlotRules(imp, req)
            deals = {d.id: d for d in imp.pmp.deals} if imp.pmp is not None else {}
            found = 0
            for n, c in enumerate(self.index.iter_matches(self.index.match(facts))):
                if found >= self.max_candidates:
                    break
                if n & 15 == 15 and dl.over():
                    truncated = True
                    break
                if c.freq_cap is not None and not self.freq.allowed(user.user_id, c, wall, stored.get(c.id)):
                    self.stats["freq_capped"] += 1
                    continue
                deal_id, floor, at = None, floors[imp.id], req.at
                if c.targeting.deals:
                    # A deal's own floor and auction type replace the imp's (section 3.2.12).
                    deal = next((deals[d] for d in c.targeting.deals if d in deals), None)
                    if deal is None or (deal.wseat and defaults.seat not in deal.wseat):
                        continue
                    floor = self._to_fleet(deal.bidfloor, deal.bidfloorcur)
                    if floor is None:
                        continue
                    deal_id, at = deal.id, deal.at or req.at
                cr = rules.first_fit(c)
                if cr is not None:
                    candidates.append((imp, c, cr, deal_id, floor, at))
                    found += 1
        if truncated:
            dl.degrade("targeting_truncated")

        # 4 pacing: the local budget allowance (at the campaign's cap). A test request (``test:
        # 1``) spends nothing, so it asks no budget and counts no opportunity.
        dl.start("pacing")
        paced = candidates if req.test == 1 else [
            cand for cand in candidates if self.budget.allow(cand[1], cand[1].strategy.max_bid / 1000.0, wall)]
        self.stats["part.eligible"] += len(candidates)
        self.stats["part.called"] += len(paced)

        dl.start("pricing")
        return Pending(req, a.version, dl, user, paced, bool(candidates), floors, a.tier, a.currency, wall,
                       a.accept_encoding)

    def score_local(self, p: "Pending", scorer=None) -> np.ndarray | None:
        """Click probabilities from the in-process model, or None (rule pricing, flagged).

        In-process scoring costs tens of microseconds for a request's rows; if the pricing
        budget is already gone there is no call at all, and a failing model costs a rule price,
        never the request.
        """
        scorer = self.scorer if scorer is None and p.model is None else scorer
        if not p.paced:
            return None
        if scorer is None:
            if p.model is not None:  # the version asked for is not loaded: a rule price, flagged
                p.dl.degrade("pricing_rule_fallback")
                self.stats["pricing.model_missing"] += 1
            return None
        if p.dl.over():
            p.dl.degrade("pricing_rule_fallback")
            self.stats["pricing.over_budget"] += 1
            return None
        try:
            return scorer.predict(p.rows())
        except Exception:
            p.dl.degrade("pricing_rule_fallback")
            self.stats["pricing.model_error"] += 1
            return None

    def finish(self, p: "Pending", ctrs: np.ndarray | None, source: str) -> Answer:
        """Stages 5-8: model prices when ``ctrs`` came back (from ``source``), else the rule."""
        req, dl, user, paced, wall = p.req, p.dl, p.user, p.paced, p.wall
        defaults = self.config.defaults
        # 5 pricing: the model's values for every candidate row; the rule when there are none.
        offers: dict[str, list[Offer]] = {}
        shade = defaults.first_price_shade
        priced = None
        if p.model is not None:
            self.stats[f"priced.{p.model}.{'model' if ctrs is not None else 'fallback'}"] += 1
        if ctrs is not None:
            self.stats["part.in_time"] += len(paced)
            priced = model_prices(ctrs, [c[1] for c in paced], [c[5] not in (2, 3) for c in paced],
                                  user.multiplier, self.win_rate, source, publisher_of(req),
                                  [c[2].format for c in paced])
        for n, (imp, c, cr, deal_id, floor, at) in enumerate(paced):
            price = priced[n] if priced is not None else rule_price(
                c, first_price=at not in (2, 3), shade=shade, multiplier=user.multiplier)
            bid = meet_floor(price, floor, c.strategy.max_bid, fixed=at == 3 and deal_id is not None)
            if bid is None or bid <= 0:
                continue
            offers.setdefault(imp.id, []).append(
                Offer(imp.id, c, cr, bid, price.value, deal_id, price.source)
            )

        # 7 auction
        dl.start("auction")
        winners = choose(offers)
        # Pacing's reservation is made as the bid is chosen: a lease that ran dry since
        # targeting (concurrent requests) drops the bid rather than overspend. It is held until
        # the bid's notice deadline: a bill may come until then.
        holds = []
        test = req.test == 1
        imps = {imp.id: imp for imp in req.imp}
        ls = defaults.ledger
        windows = (ls.bill_window_s, ls.max_bill_window_s)
        # Reservations are keyed by bid id (signed into its notices): an exchange that reuses
        # a request id cannot settle one bid's hold with another's notice.
        bid_ids = {imp_id: self.ids() for imp_id in winners}
        for imp_id, o in list(winners.items()):
            key = bid_ids[imp_id]
            if test:
                continue
            # What a bill may charge: our bid as its notice URL signs it (4 decimals of CPM).
            amount = max(o.price, round(o.price, 4)) / 1000.0
            if self.budget.reserve(o.campaign, amount, wall, key,
                                   until=wall + bill_window(imps[imp_id], *windows)):
                holds.append(key)
            else:
                del winners[imp_id]
                self.stats["pacing.lease_spent"] += 1
        if p.model is not None:
            self._version_outcome(p, winners)
        if not winners:
            return self._no_bid(NBR.UNKNOWN, "no_bid_above_floor" if p.had_candidates else "no_eligible_bid", dl)

        # 8 respond
        dl.start("respond")
        ext = {"fleet": {"region": self.region, "tier": p.tier,
                         "pricing": next(iter(winners.values())).source}}
        if dl.degraded:
            ext["fleet"]["degraded"] = list(dl.degraded)
        if user.contextual_only:
            ext["fleet"]["contextual"] = user.reason
        try:
            resp = build_response(
                req.id, winners, imps, base_url=self.base_url, region=self.region, publisher=publisher_of(req),
                seat=defaults.seat, currency=p.currency, rate=1.0 / self.rates[p.currency], ids=self.ids,
                ts_ms=int(wall * 1000), ext=ext, signer=self.signer, windows=windows, test=test,
                bid_ids=bid_ids,
            )
            out, gz = codec.maybe_gzip(codec.encode_response(resp), p.accept_encoding)
        except NoticeUrlTooLong:
            # The exchange's ids make notice URLs longer than we accept back: its bills would be
            # refused, so no bid at all (bidding would spend what we could never count).
            for key in holds:
                self.budget.release(key)
            return self._no_bid(NBR.INVALID_REQUEST, "notice_url_too_long", dl)
        except Exception:  # a request no test foresaw: no bid, and the reservations go back
            log.exception("response for request %r not built", req.id)
            self.stats["errors.respond"] += 1
            for key in holds:
                self.budget.release(key)
            return self._no_bid(NBR.TECHNICAL_ERROR, "respond_error", dl)
        dl.finish()
        if dl.expired():
            self.stats["late_suppressed"] += 1
            for key in holds:
                self.budget.release(key)
            return self._no_bid(NBR.TECHNICAL_ERROR, "deadline", dl)
        # Only a bid that leaves reserves tentative spend and counts toward frequency caps
        # (on bids until the ledger counts billed impressions).
        events, ledger = [], []
        bids = {b.impid: b for sb in resp.seatbid for b in sb.bid}
        pub = publisher_of(req) or ""
        for o in winners.values():
            b = bids[o.imp_id]
            ledger.append(Event(f"selected:{b.id}", "selected", wall, self.region, b.id, req.id, o.imp_id,
                                o.campaign.id, o.creative.id, o.source, pub, o.price, user.user_id or "",
                                0, wall, wall + (b.exp or 0), "test" if test else ""))
            if user.user_id is not None and not test:
                eid = f"{req.id}:{o.imp_id}"
                self.freq.record(user.user_id, o.campaign, wall, eid)
                events.append(FreqEvent(user.user_id, o.campaign.id, eid, wall, user.segments))
        ledger.append(Event(f"response:{self.region}:{req.id}", "response", wall, self.region, auction=req.id))
        self.stats["bids"] += len(winners)
        self.stats["answered_bid"] += 1
        headers = {"content-type": JSON, "x-openrtb-version": p.version}
        if dl.degraded:
            headers["x-fleet-degraded"] = ",".join(dl.degraded)
        if gz:
            headers["content-encoding"] = "gzip"
        return Answer(200, out, headers, "", tuple(dl.degraded), self._spent(dl), events, ledger, dl)

    def _version_outcome(self, p: "Pending", winners: dict) -> None:
        """What the version that priced this request did: the canary's evidence."""
        v = self.versions.get(p.model)
        if v is None:
            v = self.versions[p.model] = {"priced": 0, "errors": 0, "bids": 0, "value": 0.0, "price": 0.0}
            self.version_latency[p.model] = StageHistograms()
        v["priced"] += 1
        if "pricing_rule_fallback" in p.dl.degraded:
            v["errors"] += 1
        v["bids"] += bool(winners)
        for o in winners.values():
            v["value"] += o.value
            v["price"] += o.price
        self.version_latency[p.model].observe("pricing", p.pricing_s)

    def take_versions(self) -> dict[str, dict]:
        """Per-version outcome counters (with the pricing latency histogram) since the last call."""
        out = {}
        for name, v in self.versions.items():
            out[name] = {**v, "latency_counts": self.version_latency[name].counts.get("pricing", [])}
        self.versions, self.version_latency = {}, {}
        return out
