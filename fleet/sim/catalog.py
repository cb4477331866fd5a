"""The campaign catalog as the simulator reads it: the file itself, not the fleet's loader.

The oracle must not share the fleet's code, or a bug there (a default lost, a field misread)
would be invisible to the scorecard meant to catch it. So the simulator reads the YAML (or JSON)
file into its own plain records, with the defaults the catalog format documents
(``fleet/campaigns/catalog.yaml``: empty targeting lists mean "any"; creative duration 15 s,
mime video/mp4). Attribute names are the file's keys, which is also what the market's truth
functions read (``id``, ``cat``, ``targeting.segments``).

A ``synth:pacing:<n>:<seed>`` catalog has no file: its generator (``fleet.campaigns.synth``,
plain data) is turned into the same plain records the file would give.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Creative:
    id: str
    format: str
    w: int = 0
    h: int = 0
    duration_s: int = 15
    mime: str = "video/mp4"
    cat: tuple[str, ...] = ()
    attr: tuple[int, ...] = ()
    bundle: str | None = None
    title: str = ""
    image_url: str = ""
    click_url: str = "https://advertiser.example/landing"
    media_url: str = "https://cdn.advertiser.example/media.mp4"


@dataclass(frozen=True)
class Targeting:
    countries: tuple[str, ...] = ()
    device_types: tuple[int, ...] = ()
    os: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    domains_deny: tuple[str, ...] = ()
    deals: tuple[str, ...] = ()
    hours_utc: tuple[int, ...] = ()
    days_utc: tuple[int, ...] = ()
    segments: tuple[str, ...] = ()
    publishers_deny: tuple[str, ...] = ()


@dataclass(frozen=True)
class Strategy:
    goal: str = "cpm"
    base_cpm: float = 1.0
    max_bid: float = 5.0
    target_cpc: float | None = None
    target_cpa: float | None = None


@dataclass(frozen=True)
class Campaign:
    id: str
    advertiser: str
    adomain: tuple[str, ...]
    budget_daily: float
    creatives: tuple[Creative, ...]
    strategy: Strategy = Strategy()
    targeting: Targeting = Targeting()
    flight_start: dt.date | None = None
    flight_end: dt.date | None = None
    freq_cap: tuple[int, int] | None = None  # (count, window_s)
    cat: tuple[str, ...] = ()

    def in_flight(self, day: dt.date) -> bool:
        return (self.flight_start is None or self.flight_start <= day) and (
            self.flight_end is None or day <= self.flight_end)


def _tuples(raw: dict, fields) -> dict:
    """The record's keys that the struct knows, lists as tuples (unknown keys are ignored)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in (raw or {}).items() if k in fields}


def _date(v) -> dt.date | None:
    if v is None or isinstance(v, dt.date):
        return v
    return dt.date.fromisoformat(str(v))


def campaign(raw: dict) -> Campaign:
    """One campaign record of the file."""
    cap = raw.get("freq_cap")
    return Campaign(
        id=str(raw["id"]), advertiser=str(raw.get("advertiser", "")),
        adomain=tuple(raw.get("adomain") or ()), budget_daily=float(raw["budget_daily"]),
        creatives=tuple(Creative(**_tuples(cr, Creative.__dataclass_fields__)) for cr in raw["creatives"]),
        strategy=Strategy(**_tuples(raw.get("strategy"), Strategy.__dataclass_fields__)),
        targeting=Targeting(**_tuples(raw.get("targeting"), Targeting.__dataclass_fields__)),
        flight_start=_date(raw.get("flight_start")), flight_end=_date(raw.get("flight_end")),
        freq_cap=(int(cap["count"]), int(cap["window_s"])) if cap else None,
        cat=tuple(raw.get("cat") or ()),
    )


def read_catalog(path: str | Path, root: Path | None = None) -> list[Campaign]:
    """The catalog file (YAML, or JSON by suffix; a relative path from ``root``), or a
    ``synth:pacing:<n>:<seed>`` catalog."""
    if str(path).startswith("synth:"):
        import msgspec

        from fleet.campaigns.synth import pacing_campaigns

        _, kind, n, seed = str(path).split(":")
        if kind != "pacing":
            raise ValueError(f"unknown synthetic catalog {path}")
        return [campaign(r) for r in msgspec.to_builtins(pacing_campaigns(int(n), int(seed)))]
    p = Path(path)
    if not p.is_absolute() and root is not None:
        p = root / p
    text = p.read_text()
    raw = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    return [campaign(r) for r in raw["campaigns"]]
