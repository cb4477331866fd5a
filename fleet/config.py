"""Typed configuration: ``regions.yaml`` read into pydantic models.

The same models are the typed arguments of the Serve app builders, so a bad value in
``serve_config.yaml`` or ``regions.yaml`` fails the deploy with a clear message instead of a
replica crash loop.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGES = ("admission", "enrichment", "targeting", "pacing", "pricing", "auction", "respond")


def resolve(path: str | Path) -> Path:
    """Relative paths are relative to the repository, wherever the replica's cwd is."""
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SupplyChainAction = Literal["bid", "bid_down", "refuse"]


class SupplyChainPolicy(Strict):
    """What a tier does with a request's supply chain (``fleet.pipeline.supply_chain``): bid as
    usual, bid down (values x ``bid_down``), or refuse with the OpenRTB no-bid reason."""

    missing: SupplyChainAction = "bid"  # no schain at all
    incomplete: SupplyChainAction = "bid_down"  # complete: 0
    max_hops: int = Field(default=6, ge=1)
    too_long: SupplyChainAction = "refuse"  # more nodes than max_hops
    unknown_seller: SupplyChainAction = "bid_down"  # a node's sid not in its system's sellers.json
    bid_down: float = Field(default=0.8, gt=0, le=1)


class TierPolicy(Strict):
    """Stage budgets as shares of the request's budget, and how to recognise the tier."""

    min_floor_usd: float = 0.0
    deals: bool = False
    budgets: dict[str, float]
    supply_chain: SupplyChainPolicy = SupplyChainPolicy()

    @model_validator(mode="after")
    def _check(self) -> "TierPolicy":
        unknown = set(self.budgets) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stages in budgets: {sorted(unknown)}")
        total = sum(self.budgets.values())
        if not 0 < total <= 1.0 + 1e-9:
            raise ValueError(f"stage budget shares must sum to (0, 1], got {total}")
        return self


class AdmissionPolicy(Strict):
    dedup_window_s: float = 60.0
    dedup_capacity: int = 200_000
    blocked_publishers: list[str] = []
    blocked_domains: list[str] = []
    crawler_ua_patterns: list[str] = []
    datacenter_cidrs: list[str] = []
    # A system's sellers.json (asi domain -> a local file, refreshed by `fleet sellers refresh`,
    # never fetched on the request path): a chain node whose sid is not in it is an unknown seller.
    sellers: dict[str, str] = {}


class PartnerSpec(Strict):
    """One external demand partner a region calls over OpenRTB (stage 6, ``fleet.pipeline.fanout``)."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    endpoint: str  # http(s) URL the BidRequest is POSTed to
    openrtb: Literal["2.5", "2.6"] = "2.6"
    tiers: list[str] = []  # tiers it may see; empty: every tier
    cutoff_class: str = "standard"  # a row of ``partners.cutoff_classes``: default cutoff ms per tier
    cutoff_ms: dict[str, float] = {}  # per-tier overrides of its class
    currency: str = "USD"  # what it bids in (floors are sent converted to it)
    gzip: bool = False  # gzip the request body (and accept a gzipped answer)
    qps: float = Field(default=1000.0, gt=0)  # calls per second per replica, at most
    seat: str | None = None  # its seat (wseat/bseat are checked against a bid's seat, else this)


class PartnerSettings(Strict):
    """How a region calls partners; the cutoffs are defaults control's policies override."""

    reserve_ms: float = Field(default=4.0, ge=0)  # kept after the partners for auction + respond
    min_tmax_ms: float = Field(default=3.0, ge=0)  # a partner given less than this is not called
    cutoff_classes: dict[str, dict[str, float]] = {
        "fast": {"premium": 40.0, "standard": 30.0, "remnant": 20.0},
        "standard": {"premium": 50.0, "standard": 40.0, "remnant": 30.0},
        "slow": {"premium": 60.0, "standard": 45.0, "remnant": 30.0},
    }
    probe_share: float = Field(default=0.1, gt=0, le=1)  # a throttled partner still gets this share
    window: int = Field(default=200, ge=10)  # recent answers per partner and tier its p95 is read from
    min_samples: int = Field(default=20, ge=1)  # no throttle from fewer answers than this
    recover_after: int = Field(default=5, ge=1)  # in-time answers in a row that end a tail throttle
    max_error_rate: float = Field(default=0.2, gt=0, le=1)  # over the window: throttled
    backoff_s: float = Field(default=0.5, gt=0)  # after consecutive errors: no calls this long, doubling
    max_backoff_s: float = Field(default=30.0, gt=0)
    backoff_after: int = Field(default=3, ge=1)  # consecutive errors before backing off
    max_connections: int = Field(default=64, ge=1)  # per partner per replica (keep-alive pool)


class RegionSpec(Strict):
    route_prefix: str
    max_tmax_ms: int = Field(gt=0)
    network_allowance_ms: int = Field(ge=0)
    replicas: int = Field(default=1, ge=1)
    max_ongoing_requests: int = Field(default=64, ge=1)
    num_cpus: float = Field(default=0.0, ge=0)
    cache_shards: int = Field(default=2, ge=1)
    budget_share: float = Field(gt=0, le=1)
    public_url: str = "http://127.0.0.1:8000"
    exchanges: list[str] = []
    partners: list[PartnerSpec] = []  # external demand (stage 6); none: no fan-out

    @model_validator(mode="after")
    def _prefix(self) -> "RegionSpec":
        if not self.route_prefix.startswith("/") or self.route_prefix.endswith("/"):
            raise ValueError("route_prefix must start with '/' and not end with it")
        return self


class CacheSettings(Strict):
    """The region's cache shards (count per region: ``cache_shards``) and the ingress's use of them."""

    enabled: bool = True
    max_users: int = Field(default=500_000, ge=1)  # per shard, in memory
    window_s: float = Field(default=86_400.0, gt=0)  # longest frequency-cap window kept
    max_pending: int = Field(default=100_000, ge=1)  # writes held while Redis is away
    refresh_s: float = Field(default=45.0, ge=1)  # precomputed features: 30-60 s
    stale_s: float = Field(default=300.0, gt=0)  # re-read an entry from Redis after this
    default_multiplier: float = Field(default=0.9, gt=0, le=1)  # bid factor on a miss/timeout
    # Ingress micro-batch window per shard: 0 batches what one event-loop turn gathered, with
    # no added wait (lookups travel the shards' socket, tens of microseconds a call).
    lookup_window_s: float = Field(default=0.0, ge=0)
    # The ingress's near-cache (fleet.cache.client): users it looked up within near_ttl_s are
    # answered from its own memory, re-read in the background once older than near_refresh_s.
    # 0 turns it off (every lookup waits for its shard).
    near_ttl_s: float = Field(default=30.0, ge=0)
    near_refresh_s: float = Field(default=1.0, gt=0)
    near_max_users: int = Field(default=50_000, ge=1)  # per ingress replica

    def shard_options(self) -> dict:
        return {"max_users": self.max_users, "window_s": self.window_s, "max_pending": self.max_pending,
                "refresh_s": self.refresh_s, "stale_s": self.stale_s}


class LedgerSettings(Strict):
    """Event emission, the ledger consumer and notice signing."""

    enabled: bool = True
    # A bid's win, bill and loss notices are accepted until its signed deadline: the bid time plus
    # the imp's ``exp`` (at most ``max_bill_window_s``) or, without one, ``bill_window_s``. The
    # reservation stays held that long (docs/ledger.md, "The overspend bound").
    bill_window_s: float = Field(default=900.0, gt=0)
    max_bill_window_s: float = Field(default=3600.0, gt=0)
    expire_s: float = Field(default=900.0, gt=0)  # an open bid without a deadline (older events) expires after
    notice_ttl_s: float = Field(default=86_400.0, gt=0)  # a signature made without a bid's deadline expires after
    max_buffer: int = Field(default=50_000, ge=1)  # events held in memory while Redis is away
    flush_s: float = Field(default=0.05, gt=0)
    spill_dir: str = ".fleet/spill"  # then to an append-only file here, replayed in order
    drift_tolerance: float = Field(default=0.02, ge=0)  # reconciliation flags beyond this


class ControlSettings(Strict):
    """The central control actor and the regions' use of it (see docs/control.md)."""

    enabled: bool = True
    interval_s: float = Field(default=1.0, gt=0)  # control tick; replicas report and renew leases
    lease_ttl_s: float = Field(default=5.0, gt=0)  # control out of reach this long: spending stops
    lease_horizon_s: float = Field(default=2.0, gt=0)  # plan one lease covers
    headroom: float = Field(default=1.1, ge=1.0)
    # A replica's lease counts at control until this long after it expired: a bid it reserved may
    # still bill until its deadline (at least ledger.max_bill_window_s; checked below).
    hold_s: float = Field(default=3600.0, gt=0)
    catchup_s: float = Field(default=10.0, gt=0)  # a gap between spend and plan to date closes over this
    # While control cannot save its state (Redis away) it grants at most this share of each
    # flight's budget in new room (fleet.control.standin); every restart holds as much back.
    standin_share: float = Field(default=0.002, ge=0, le=1)
    p_min: float = Field(default=0.0005, gt=0, le=1)
    p_start: float = Field(default=0.2, gt=0, le=1)
    sync_timeout_s: float = Field(default=1.0, gt=0)
    policy_every_s: float = Field(default=30.0, gt=0)  # cutoff policies recomputed this often
    health_stale_s: float = Field(default=5.0, gt=0)
    seed_catalog: bool = True  # campaigns without a flight get a daily one from the catalog
    url: str | None = None  # control in another cluster (HTTP long-poll); None: the actor handle
    rollout: dict = {}  # canary thresholds (fleet.control.rollout.Thresholds fields)

    def pacing(self):
        from fleet.control.pacer import PacingSettings

        return PacingSettings(self.interval_s, self.lease_ttl_s, self.lease_horizon_s, self.headroom,
                              self.hold_s, self.catchup_s, self.p_min, self.p_start)


class TelemetrySettings(Strict):
    """Traces and metrics (docs/observability.md)."""

    trace_rate: float = Field(default=0.01, ge=0, le=1)  # head sampling; degraded and failed: always,
    max_forced_traces_per_s: float = Field(default=20.0, ge=0)  # ... up to this many a second per replica
    metrics_s: float = Field(default=5.0, gt=0)  # the replica's figures go to Prometheus this often


class PrivacySettings(Strict):
    """The privacy decision's parameters (``fleet.pipeline.privacy``): our TCF vendor id and the
    purposes each level of use needs (TCF v2 purpose ids)."""

    vendor_id: int = Field(default=1234, ge=1, le=65535)  # our id in the IAB Global Vendor List
    personalised_purposes: frozenset[int] = frozenset({1, 3, 4})  # store, profile, personalised ads
    measurement_purposes: frozenset[int] = frozenset({1, 2, 7})  # store, basic ads, measurement


class Defaults(Strict):
    tmax_ms: int = 120
    max_body_bytes: int = 64 * 1024
    currency: str = "USD"
    seat: str = "fleet"
    catalog: str = "fleet/campaigns/catalog.yaml"
    first_price_shade: float = Field(default=0.85, gt=0, le=1)
    # Overload: a request left with less than this of its budget once it reaches the handler
    # (queue time counted from the ingress's stamp) is answered 204 `overload` at once
    # (fleet/region/overload.py, docs/architecture.md "Deadline semantics").
    shed_below_ms: float = Field(default=10.0, ge=0)
    cache: CacheSettings = CacheSettings()
    ledger: LedgerSettings = LedgerSettings()
    control: ControlSettings = ControlSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    privacy: PrivacySettings = PrivacySettings()
    partners: PartnerSettings = PartnerSettings()


class RegionsFile(Strict):
    defaults: Defaults = Defaults()
    regions: dict[str, RegionSpec]
    latency_ms: dict[str, dict[str, float]]
    tiers: dict[str, TierPolicy]
    admission: AdmissionPolicy = AdmissionPolicy()
    currencies: dict[str, float]  # value of one unit in the fleet currency

    @model_validator(mode="after")
    def _check(self) -> "RegionsFile":
        names = set(self.regions)
        for src, row in self.latency_ms.items():
            if src not in names or set(row) != names:
                raise ValueError(f"latency_ms row {src!r} must name exactly the regions {sorted(names)}")
        if set(self.latency_ms) != names:
            raise ValueError("latency_ms needs one row per region")
        if self.defaults.currency not in self.currencies:
            raise ValueError("the fleet currency must be in the currency table")
        share = sum(r.budget_share for r in self.regions.values())
        if abs(share - 1.0) > 1e-6:
            raise ValueError(f"budget_share over regions must sum to 1, got {share}")
        if not self.tiers:
            raise ValueError("at least one tier policy is required")
        classes = self.defaults.partners.cutoff_classes
        for rname, r in self.regions.items():
            if len({p.id for p in r.partners}) != len(r.partners):
                raise ValueError(f"region {rname!r}: partner ids must be unique")
            for p in r.partners:
                if p.currency not in self.currencies:
                    raise ValueError(f"partner {p.id!r}: currency {p.currency!r} not in the currency table")
                if p.cutoff_class not in classes:
                    raise ValueError(f"partner {p.id!r}: unknown cutoff_class {p.cutoff_class!r}")
                unknown = (set(p.tiers) | set(p.cutoff_ms)) - set(self.tiers)
                if unknown:
                    raise ValueError(f"partner {p.id!r}: unknown tiers {sorted(unknown)}")
        led, ctl = self.defaults.ledger, self.defaults.control
        if led.bill_window_s > led.max_bill_window_s:
            raise ValueError("ledger.bill_window_s must not exceed ledger.max_bill_window_s")
        if ctl.hold_s < led.max_bill_window_s:
            raise ValueError("control.hold_s must cover ledger.max_bill_window_s: a lost replica's bids may "
                             "bill until their deadline, and control counts its lease until then")
        return self

    def tier_for(self, has_deals: bool, floor_usd: float) -> str:
        """The first tier (in file order, richest first) that the impression qualifies for."""
        for name, tier in self.tiers.items():
            if (tier.deals and has_deals) or floor_usd >= tier.min_floor_usd:
                return name
        return next(reversed(self.tiers))


class RegionAppArgs(BaseModel):
    """Typed args of the region app builder, as written in ``serve_config.yaml``."""

    model_config = ConfigDict(extra="forbid")

    region: str
    regions_file: str = "regions.yaml"
    catalog: str | None = None
    model: str | None = None  # "name/version" under models/; None prices by rule
    model_backend: str = "auto"  # auto | onnx-cpu | onnx-cuda | xgboost-cpu | xgboost-cuda
    # local: score in the ingress process (CPU regions: no hop). remote: the region's inference
    # deployment batches rows across requests (GPU regions, with a fractional num_gpus).
    pricing: Literal["local", "remote"] = "local"
    cache: bool = True  # look users up in the region's cache shards (False: request data only)
    near_cache: bool = True  # the ingress's near-cache in front of them (False: every lookup waits)
    ledger: bool = True  # emit events and run the region's ledger consumer (False: neither)
    control: bool = True  # spend under control's leases and policies (False: a local allowance)
    route_prefix: str | None = None  # where this app is deployed, when not the region's own prefix
    telemetry: bool = True  # traces (sampled) and the fleet's Prometheus metrics
    inference_replicas: int = 1
    num_gpus: float = 0.0
    # Every process of the region (replicas, cache shards, ledger consumer) on the node that
    # advertises region:<name>, control on the head (fleet up --nodes; fleet.runtime.placement).
    region_resource: bool = False


@functools.lru_cache(maxsize=8)
def load_regions(path: str = "regions.yaml") -> RegionsFile:
    with open(resolve(path)) as fh:
        return RegionsFile.model_validate(yaml.safe_load(fh))
