"""The stacked bar of ``fleet bench cost`` results: CPU per request by process group, one bar per
scope, target and phase, for one or more result files side by side (before and after a change).

``python -m fleet.bench.cost_plot OUT.png bench/results/cost-a.json[:label] ...`` (prints the
tables by process group as markdown too).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fleet.bench.cost_roles import GROUPS

COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974")


def bars(docs: list[tuple[str, dict]], phase: str = "saturation") -> list[tuple[str, dict[str, float]]]:
    """(bar label, group -> us per request) for every file, scope and target."""
    out = []
    for name, doc in docs:
        for scope, r in doc["results"].items():
            for target, m in r["medians"].items():
                label = f"{name}\n{scope}: {target}" if name else f"{scope}: {target}"
                out.append((label, m[phase]["groups_us"]))
    return out


def plot(docs: list[tuple[str, dict]], out: Path, phase: str = "saturation") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = bars(docs, phase)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(rows) + 3.5), 5.0))
    bottoms = [0.0] * len(rows)
    xs = range(len(rows))
    for g, color in zip(GROUPS, COLORS):
        vals = [r[1].get(g, 0.0) for r in rows]
        ax.bar(xs, vals, bottom=bottoms, color=color, label=g, width=0.7)
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    ax.set_xticks(list(xs), [r[0] for r in rows], fontsize=8)
    ax.set_ylabel("CPU per request (us), median of rounds")
    ax.set_title(f"CPU per request by process, at {phase}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def table(docs: list[tuple[str, dict]], phase: str = "saturation") -> str:
    """A markdown table: one row per process group (and the fleet's total, the rate, the
    saturation ratio), one column per file, scope and target."""
    cols = []
    for name, doc in docs:
        for scope, r in doc["results"].items():
            for target, m in r["medians"].items():
                cols.append((f"{name} {scope}: {target}".strip(), m[phase], r))
    out = ["| us per request | " + " | ".join(c[0] for c in cols) + " |",
           "| --- |" + " ---: |" * len(cols)]
    for g in GROUPS:
        out.append(f"| {g} | " + " | ".join(f"{c[1]['groups_us'].get(g, 0.0):.0f}" for c in cols) + " |")
    out.append("| **fleet total** (all but the load generator) | " + " | ".join(
        f"**{c[1]['fleet_us']:.0f}** ({c[1]['fleet_us_range'][0]:.0f}-{c[1]['fleet_us_range'][1]:.0f})"
        for c in cols) + " |")
    out.append("| requests/s | " + " | ".join(f"{c[1]['rps']:.0f}" for c in cols) + " |")
    out.append("| p99 ms | " + " | ".join(f"{c[1]['p99_ms']:.1f}" for c in cols) + " |")
    return "\n".join(out)


def main(argv: list[str]) -> None:
    out, files = Path(argv[0]), argv[1:]
    docs = []
    for f in files:
        path, _, name = f.partition(":")
        docs.append((name, json.loads(Path(path).read_text())))
    plot(docs, out)
    for phase in ("saturation", "half"):
        print(f"\n{phase}:\n" + table(docs, phase))


if __name__ == "__main__":
    main(sys.argv[1:])
