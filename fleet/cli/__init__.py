"""The ``fleet`` command: up, down, status, sim, bench, model, ledger, node, sellers.

One module per command group (``up`` holds up, down and status); this package only gathers them
under ``main``. What several groups share is in ``common``.
"""

from __future__ import annotations

import click

from fleet.cli.bench import bench
from fleet.cli.ledger import ledger
from fleet.cli.model import model
from fleet.cli.node import node
from fleet.cli.sellers import sellers
from fleet.cli.sim import sim
from fleet.cli.up import down, status, up


@click.group()
def main() -> None:
    """Edge bidder fleet on Ray Serve."""


for _command in (up, down, status, node, sim, model, ledger, bench, sellers):
    main.add_command(_command)
