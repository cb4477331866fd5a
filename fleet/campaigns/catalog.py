"""The campaign catalog: a YAML or JSON file validated into the catalog model's msgspec structs
(``model.py``), or a synthetic catalog named by a ``synth:`` spec (``synth.py``)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import yaml

from fleet.campaigns.model import Campaign
from fleet.campaigns.synth import pacing_campaigns
from fleet.config import resolve


class Catalog(msgspec.Struct):
    campaigns: list[Campaign]


def load_catalog(path: str | Path) -> list[Campaign]:
    """A catalog file (YAML or JSON), or ``synth:pacing:<n>:<seed>`` (generated, seeded)."""
    if str(path).startswith("synth:"):
        _, kind, n, seed = str(path).split(":")
        if kind != "pacing":
            raise ValueError(f"unknown synthetic catalog {path}")
        return pacing_campaigns(int(n), int(seed))
    p = resolve(path)
    text = p.read_bytes()
    raw = msgspec.json.decode(text) if p.suffix == ".json" else yaml.safe_load(text)
    catalog = msgspec.convert(raw, Catalog)
    ids = [c.id for c in catalog.campaigns]
    if len(ids) != len(set(ids)):
        raise ValueError(f"duplicate campaign ids in {p}")
    return catalog.campaigns
