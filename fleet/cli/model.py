"""``fleet model ...``: the bid-price model versions under models/."""

from __future__ import annotations

import click

from fleet.config import REPO_ROOT


@click.group()
def model():
    """The bid-price model: train, list."""


@model.command("train")
@click.option("--name", default="ctr", show_default=True)
@click.option("--version", "version", required=True)
@click.option("--rows", default=300_000, show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--rounds", default=300, show_default=True)
@click.option("--market-seed", default=7, show_default=True, help="The market (the sim's --seed).")
def model_train(name, version, rows, seed, rounds, market_seed):
    """Train on the market, evaluate, export three formats, write models/NAME/VERSION/."""
    from fleet.ml.train import train

    train(name, version, rows, seed, rounds, market_seed, log=click.echo)


@model.command("list")
def model_list():
    """Model versions under models/ with their headline metrics."""
    import json

    for manifest in sorted((REPO_ROOT / "models").glob("*/*/manifest.json")):
        m = json.loads(manifest.read_text())
        click.echo(f"{m['name']}/{m['version']:<6} trees {m['metrics']['trees']:4d}  "
                   f"AUC {m['metrics']['test_auc']:.4f} (truth {m['metrics']['test_auc_of_truth']:.4f})  "
                   f"logloss {m['metrics']['test_logloss']:.5f}  created {m['created']}")
