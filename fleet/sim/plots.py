"""PNG plots of a simulated run: latency distribution, spend against plan, value by latency."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fleet.sim.exchange import AuctionRecord  # noqa: E402


def write_plots(records: list[AuctionRecord], card: dict, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    lat = [r.latency_ms for r in records if r.status in (200, 204)]
    fig, ax = plt.subplots(figsize=(7, 4))
    if lat:
        ax.hist(lat, bins=60, color="#3b6ea5")
        for q, style in ((0.5, "--"), (0.99, ":")):
            v = sorted(lat)[min(len(lat) - 1, int(q * len(lat)))]
            ax.axvline(v, color="k", linestyle=style, label=f"p{int(q * 100)} {v:.1f} ms")
        ax.legend()
    ax.set_xlabel("latency seen by the exchange (server + simulated network), ms")
    ax.set_ylabel("auctions")
    ax.set_title("Latency distribution")
    paths.append(_save(fig, out_dir / f"{stem}-latency.png"))

    camp = card["per_campaign"]
    names = list(camp)
    fig, ax = plt.subplots(figsize=(max(7, 0.6 * len(names)), 4))
    xs = range(len(names))
    ax.bar([x - 0.27 for x in xs], [camp[n]["plan_usd"] for n in names], 0.27, label="plan (budget for the window)")
    ax.bar(list(xs), [camp[n]["fleet_spend_usd"] for n in names], 0.27, label="fleet spend")
    ax.bar([x + 0.27 for x in xs], [camp[n]["oracle_spend_usd"] for n in names], 0.27, label="oracle spend")
    ax.set_xticks(list(xs), names, rotation=45, ha="right")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_ylabel("USD")
    ax.set_title("Spend against plan per campaign")
    ax.legend()
    paths.append(_save(fig, out_dir / f"{stem}-spend.png"))

    buckets = card["by_latency"]
    keys = list(buckets)
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], [buckets[k]["value_per_opportunity"] * 1000 for k in keys], 0.4, label="fleet")
    ax.bar([x + 0.2 for x in xs], [buckets[k]["oracle_value_per_opportunity"] * 1000 for k in keys], 0.4, label="oracle")
    ax.set_xticks(list(xs), keys)
    ax.set_ylabel("value per 1,000 opportunities, USD")
    ax.set_xlabel("latency bucket")
    ax.set_title("Value per opportunity by latency")
    ax.legend()
    paths.append(_save(fig, out_dir / f"{stem}-value-by-latency.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
