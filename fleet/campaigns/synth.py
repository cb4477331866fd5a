"""Synthetic catalogs of any size, for benchmarks and scale tests (seeded, reproducible)."""

from __future__ import annotations

import random

from fleet.campaigns.model import Campaign, Creative, FrequencyCap, Strategy, Targeting

COUNTRIES = ["USA", "CAN", "GBR", "DEU", "FRA", "NLD", "ESP", "ITA", "JPN", "SGP", "AUS", "IND", "BRA"]
SIZES = [(300, 250), (728, 90), (320, 50), (300, 600), (160, 600), (970, 250), (320, 480)]
OSES = ["ios", "android", "windows", "macos", "linux"]
SEGMENTS = [f"seg-{i}" for i in range(200)]
CATS = ["IAB1", "IAB2", "IAB3", "IAB9", "IAB12", "IAB17", "IAB18", "IAB20", "IAB22"]


def synth_campaigns(n: int, seed: int = 7) -> list[Campaign]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        fmt = rng.choices(["banner", "video", "native", "audio"], [0.7, 0.15, 0.1, 0.05])[0]
        creatives = []
        if fmt == "banner":
            for w, h in rng.sample(SIZES, rng.randint(1, 3)):
                creatives.append(Creative(id=f"cr{i}-{w}x{h}", format="banner", w=w, h=h))
        elif fmt == "video":
            creatives.append(Creative(id=f"cr{i}-v", format="video", w=640, h=360, duration_s=rng.choice([15, 30])))
        elif fmt == "audio":
            creatives.append(Creative(id=f"cr{i}-a", format="audio", duration_s=30, mime="audio/mpeg"))
        else:
            creatives.append(Creative(id=f"cr{i}-n", format="native", w=1200, h=627))
        base = round(rng.uniform(0.3, 6.0), 2)
        targeting = Targeting(
            countries=rng.sample(COUNTRIES, rng.randint(1, 4)) if rng.random() < 0.8 else [],
            device_types=rng.sample([1, 2, 4, 5], rng.randint(1, 2)) if rng.random() < 0.3 else [],
            os=rng.sample(OSES, rng.randint(1, 2)) if rng.random() < 0.3 else [],
            segments=rng.sample(SEGMENTS, rng.randint(1, 5)) if rng.random() < 0.3 else [],
            hours_utc=sorted(rng.sample(range(24), 12)) if rng.random() < 0.1 else [],
            deals=[f"deal-{rng.randrange(50)}"] if rng.random() < 0.05 else [],
        )
        out.append(
            Campaign(
                id=f"c{i}",
                advertiser=f"adv{i % 997}",
                adomain=[f"adv{i % 997}.example"],
                cat=[rng.choice(CATS)],
                budget_daily=rng.choice([500.0, 2000.0, 10000.0]),
                creatives=creatives,
                strategy=Strategy(base_cpm=base, max_bid=round(base * rng.uniform(1.2, 3.0), 2)),
                targeting=targeting,
                freq_cap=FrequencyCap(count=rng.randint(1, 10), window_s=3600) if rng.random() < 0.2 else None,
            )
        )
    return out


def pacing_campaigns(n: int = 60, seed: int = 11) -> list[Campaign]:
    """Campaigns the simulator's traffic can deliver (its countries, banner sizes and formats),
    each aimed at one region's audience or at all: the pacing run's catalog. Budgets are set by
    the run through control's API, so the ones here only seed daily flights."""
    from fleet.sim.traffic import REGION_GEO, SIZES as TRAFFIC_SIZES

    rng = random.Random(seed)
    regions = list(REGION_GEO)
    out = []
    for i in range(n):
        where = rng.choice(regions + [None])
        countries = list(REGION_GEO[where][0]) if where else []
        sizes = rng.sample(TRAFFIC_SIZES[:4], rng.randint(2, 4))
        base = round(rng.uniform(1.0, 4.0), 2)
        out.append(Campaign(
            id=f"p{i:02d}", advertiser=f"adv-p{i}", adomain=[f"p{i}.example"], cat=[rng.choice(CATS)],
            budget_daily=100.0,
            creatives=[Creative(id=f"crp{i}-{w}x{h}", format="banner", w=w, h=h) for w, h in sizes],
            strategy=Strategy(base_cpm=base, max_bid=round(base * rng.uniform(1.5, 2.5), 2)),
            targeting=Targeting(countries=countries),
        ))
    return out
