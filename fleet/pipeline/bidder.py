"""One region's request path, stages 1-8, in-process and without Ray: the stages' order.

``RegionBidder.bid`` takes the raw HTTP facts and returns an ``Answer`` (status, body, headers).
It never raises for bad input: malformed bodies are 400/413, rejections and empty auctions are
204 with a reason, and an answer that would leave after the deadline becomes a no-bid. The
region's runtime (``fleet.region``) drives it in parts: ``admit`` (stage 1), the cache lookup,
``target`` (stages 2-4), pricing by the model version it picks (``fleet.region.models``), and
``finish`` (stages 5-8). What notices do to it is ``fleet.pipeline.notices.NoticeSettlement``'s.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections import Counter

import numpy as np

from fleet.campaigns.model import Campaign, Creative
from fleet.config import RegionsFile
from fleet.openrtb import codec
from fleet.openrtb.inventory import inventory
from fleet.openrtb.model import Imp
from fleet.openrtb.nbr import NBR
from fleet.obs.histogram import StageHistograms
from fleet.pipeline.admission import Admission, Rejected
from fleet.pipeline.auction import choose
from fleet.pipeline.creative_fit import SlotRules, seat_allowed
from fleet.pipeline import dsa
from fleet.pipeline.deadline import Deadline, now
from fleet.cache.store import FreqEvent, Profile
from fleet.ledger.events import Event
from fleet.pipeline.enrichment import enrich, identity, privacy_block
from fleet.pipeline.fanout import partner_selected
from fleet.pipeline.pacing import FrequencyCounter, LocalBudget, reserve_winners
from fleet.pipeline.pricing import WinRateModel, model_prices_many, price_job, score
from fleet.pipeline.pricing import offers as price_offers
from fleet.pipeline.request import Admitted, Answer, Pending
from fleet.pipeline.respond import BidIds, NoticeUrlTooLong, build_response, response_currency
from fleet.pipeline.targeting import CampaignIndex, deal_terms, imp_facts

__all__ = [Admitted, "Answer", Pending, "RegionBidder"]

JSON = "application/json"
log = logging.getLogger("fleet.bidder")


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
        # a fleet.ml.scorer.Scorer, or None for rule pricing: what ``bid`` prices with (a region
        # runtime's model slots pass the version they pick to ``price_local`` instead)
        self.scorer = scorer
        self.win_rate = WinRateModel()
        # creative id -> ad format: the win-rate model's segment within a publisher
        self.formats = {cr.id: cr.format for c in campaigns for cr in c.creatives}
        self.latency = StageHistograms()  # seconds per stage of every answered request
        # uid -> (Profile | None, lookup outcome), for in-process use; Serve looks up async.
        self.profiles = profiles
        self.cache_default_multiplier = config.defaults.cache.default_multiplier
        self.signer = signer  # a fleet.ledger.signing.NoticeSigner: notice URLs carry a signature
        self.tiers = dict(config.tiers)  # stage budgets per tier; control's policy pushes replace them

    # -- helpers ------------------------------------------------------------------------

    def to_fleet(self, amount: float, cur: str) -> float | None:
        rate = self.rates.get(cur.upper() if cur else self.fleet_cur)
        return None if rate is None else amount * rate

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

    # -- the path -----------------------------------------------------------------------

    def bid(self, body: bytes, **http) -> Answer:
        """The whole path in-process: stages 1-4, the local model (or rule), stages 5-8.

        ``http``: the keyword arguments of ``begin`` (encodings, version header, arrival).
        """
        p = self.begin(body, **http)
        return p if isinstance(p, Answer) else self.price_local(p)

    def price_local(self, p: Pending, choice: tuple | None = None) -> Answer:
        """Stages 5-8 priced by the in-process model (or by rule when it has nothing).
        ``choice``: (scorer, version) for a request with candidates, as the region's model slots
        picked it (``fleet.region.models``); by default the bidder's own ``scorer``."""
        if choice is None:
            s = self.scorer
            choice = (s, s.version if s is not None else None) if p.paced else (s, None)
        scorer, p.model = choice
        t0 = now()
        ctrs = self.score_local(p, scorer)
        p.pricing_s = now() - t0
        return self.finish(p, ctrs, f"model:{scorer.version}" if ctrs is not None else "rule")

    def begin(self, body: bytes, **http) -> Answer | Pending:
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
    ) -> Answer | Admitted:
        """Stage 1, and the start of 2: an early answer (400, 413, 204) or an admitted request
        with the user key enrichment should look up (None: contextual or anonymous)."""
        arrival = now() if arrival is None else arrival
        self.stats["requests"] += 1
        defaults = self.config.defaults
        # 1 admission: decode and validate, then the cheap rejections.
        try:
            ver = codec.check_version(version)
            req = codec.decode_request(body, content_encoding, defaults.max_body_bytes, self.stats)
        except codec.RequestError as exc:
            self.stats[f"http.{exc.status}"] += 1
            err = codec.encode_response_error(exc.reason, exc.nbr)
            return Answer(exc.status, err, {"content-type": JSON}, exc.reason)
        dl = Deadline.plan(arrival, req.tmax, defaults.tmax_ms, self.spec.max_tmax_ms,
                           self.spec.network_allowance_ms)
        if dl.budget_s <= 0:
            return self._no_bid(NBR.INSUFFICIENT_AUCTION_TIME, "tmax_below_allowance", dl)
        inv = inventory(req)  # the one publisher and domain every stage reads
        try:
            self.admission.check(req, inv)
        except Rejected as exc:
            return self._no_bid(exc.nbr, exc.reason.replace(" ", "_"), dl)
        cur = response_currency(req.cur, self.fleet_cur, self.rates)
        if cur is None:
            return self._no_bid(NBR.INVALID_REQUEST, "no_supported_currency", dl)

        # Floors in the fleet currency, per imp; the tier comes from the richest imp.
        floors: dict[str, float] = {}
        for imp in req.imp:
            f = self.to_fleet(imp.bidfloor, imp.bidfloorcur)
            if f is not None:
                floors[imp.id] = f
        has_deals = any(imp.pmp is not None and imp.pmp.deals for imp in req.imp)
        tier = self.config.tier_for(has_deals, max(floors.values(), default=0.0))
        dl.set_tier(tier, self.tiers[tier])
        self.stats[f"tier.{tier}"] += 1
        try:  # the tier's supply-chain policy: bid, bid down or refuse
            supply = self.admission.supply_chain(req, self.config.tiers[tier].supply_chain)
        except Rejected as exc:
            return self._no_bid(exc.nbr, exc.reason, dl)
        if supply.reason:
            self.stats[f"supply.{supply.reason}.{supply.action}"] += 1

        # 2 enrichment starts here: privacy decides once (the admitted request carries it), and
        # the caller looks ``uid`` up within the stage's budget.
        dl.start("enrichment")
        privacy = privacy_block(req, defaults.privacy)
        return Admitted(req, ver, dl, floors, tier, cur, accept_encoding, identity(req, privacy), inv, privacy,
                        supply.factor)

    def target(self, a: Admitted, profile: Profile | None, lookup: str) -> Answer | Pending:
        """The rest of stage 2 (the context from the lookup's outcome), then stages 3-4."""
        req, dl, floors, defaults = a.req, a.dl, a.floors, self.config.defaults
        user = enrich(req, profile, lookup, self.cache_default_multiplier, blocked=a.privacy, uid=a.uid)
        if a.supply != 1.0:  # the supply chain bid down
            user = dataclasses.replace(user, multiplier=user.multiplier * a.supply)
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
        own = seat_allowed(req, defaults.seat)  # wseat/bseat may leave our own campaigns out
        if not own:
            self.stats["seat_not_allowed"] += 1
        for i, imp in enumerate(req.imp if own else ()):
            if i >= self.max_imps:  # bounded work per request, whatever its size
                self.stats["imp.over_limit"] += len(req.imp) - i
                break
            if i and dl.over():
                truncated = True
                break
            if imp.id not in floors:
                self.stats["imp.unknown_floor_currency"] += 1
                continue
            facts = imp_facts(req, imp, a.inv, user.segments, when)
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
                terms = deal_terms(c, deals, floors[imp.id], req.at, defaults.seat, self.to_fleet)
                if terms is None:
                    continue
                cr = rules.first_fit(c)
                if cr is not None:
                    candidates.append((imp, c, cr, *terms))
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
                       a.accept_encoding, a.inv)

    def score_local(self, p: Pending, scorer=None) -> np.ndarray | None:
        """Click probabilities from the in-process model, or None (rule pricing, flagged): see
        ``fleet.pipeline.pricing.score``."""
        scorer = self.scorer if scorer is None and p.model is None else scorer
        return score([p], scorer, self.stats)[0]

    def finish(self, p: Pending, ctrs: np.ndarray | None, source: str, priced: list | None = None) -> Answer:
        """Stages 5-8: model prices when ``ctrs`` came back (from ``source``), else the rule.
        ``priced``: those prices already made (``model_prices_many``, for requests priced
        together)."""
        req, dl, user, paced, wall = p.req, p.dl, p.user, p.paced, p.wall
        defaults = self.config.defaults
        # 5 pricing: the model's values for every candidate row; the rule when there are none.
        if p.model is not None:
            self.stats[f"priced.{p.model}.{'model' if ctrs is not None else 'fallback'}"] += 1
        if ctrs is None:
            priced = None
        else:
            self.stats["part.in_time"] += len(paced)
            if priced is None:
                priced = model_prices_many([price_job(p, ctrs, source)], self.win_rate)[0]
        offers = price_offers(paced, priced, user.multiplier, defaults.first_price_shade)
        p.offered = bool(offers)
        for imp_id, extra in (p.partner_offers or {}).items():  # stage 6: one auction for both
            offers.setdefault(imp_id, []).extend(extra)

        # 7 auction
        dl.start("auction")
        winners = choose(offers)
        # Pacing's reservation is made as the bid is chosen: a lease that ran dry since
        # targeting (concurrent requests) drops the bid rather than overspend. It is held until
        # the bid's notice deadline: a bill may come until then.
        test = req.test == 1
        imps = {imp.id: imp for imp in req.imp}
        ls = defaults.ledger
        windows = (ls.bill_window_s, ls.max_bill_window_s)
        # Reservations are keyed by bid id (signed into its notices): an exchange that reuses
        # a request id cannot settle one bid's hold with another's notice.
        bid_ids = {imp_id: self.ids() for imp_id in winners}
        holds = reserve_winners(self.budget, winners, imps, bid_ids, wall, windows, test, self.stats)
        p.winners = winners  # what the version that priced it did (fleet.region.models)
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
                req.id, winners, imps, base_url=self.base_url, region=self.region, publisher=p.inv.publisher,
                seat=defaults.seat, currency=p.currency, rate=1.0 / self.rates[p.currency], ids=self.ids,
                ts_ms=int(wall * 1000), ext=ext, signer=self.signer, windows=windows, test=test,
                bid_ids=bid_ids, dsa_required=dsa.required(req),
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
            return self._no_bid(NBR.INSUFFICIENT_AUCTION_TIME, "deadline", dl)
        # Only a bid that leaves reserves tentative spend and counts toward frequency caps
        # (on bids until the ledger counts billed impressions).
        events, ledger = [], []
        bids = {b.impid: b for sb in resp.seatbid for b in sb.bid}
        pub = p.inv.publisher or ""
        for o in winners.values():
            b = bids[o.imp_id]
            if o.partner is not None:
                ledger.append(partner_selected(o, b, wall, self.region, req.id, pub, test))
                continue
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
