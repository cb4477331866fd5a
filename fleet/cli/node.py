"""``fleet node ...``: the nodes of a local cluster of several (``fleet up --nodes N``)."""

from __future__ import annotations

import json
import os

import click

from fleet.cli.common import export_fleet_env
from fleet.runtime import local, nodes, placement


@click.group()
def node() -> None:
    """The nodes of a local cluster started with `fleet up --nodes N`."""


def _nodes_state() -> tuple[local.State, list[nodes.NodeRecord]]:
    state = local.State.load()
    if state is None or not state.nodes:
        raise click.ClickException("no local cluster of several nodes is up (`fleet up --nodes N`)")
    return state, nodes.from_state(state.nodes)


def placement_by_node(state: local.State, layout: list[nodes.NodeRecord]) -> dict[str, dict]:
    """Each node of the layout with its live Ray node and the fleet's actors running there
    (Serve replicas, cache shards, ledger consumers, control), read from the cluster itself."""
    os.environ.update(local.ray_env())
    import ray
    from ray.util.state import list_actors

    ray.init(address=state.gcs_address, log_to_driver=False, logging_level="ERROR", ignore_reinit_error=True)
    try:
        by_port = {n.node_manager_port: n.name for n in layout if not n.head}
        name_of: dict[str, str] = {}
        for n in ray.nodes():
            if not n["Alive"]:
                continue
            if placement.HEAD_RESOURCE in n["Resources"]:
                name_of[n["NodeID"]] = "head"
            elif n["NodeManagerPort"] in by_port:
                name_of[n["NodeID"]] = by_port[n["NodeManagerPort"]]
        out = {n.name: {"regions": n.regions, "alive": n.name in name_of.values(), "actors": []} for n in layout}
        for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000, detail=True, raise_on_missing_output=False):
            where = name_of.get(a.node_id)
            if where is not None and a.name:
                out[where]["actors"].append(a.name)
        for v in out.values():
            v["actors"].sort()
        return out
    finally:
        ray.shutdown()


@node.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable, with every actor's node.")
def node_list(as_json):
    """Each node: its regions, whether it is up, and the fleet's processes placed on it."""
    state, layout = _nodes_state()
    where = placement_by_node(state, layout)
    if as_json:
        click.echo(json.dumps(where, indent=2))
        return
    for name, info in where.items():
        click.echo(f"{name:<9} {'up' if info['alive'] else 'DOWN':<5} regions {', '.join(info['regions']) or '-'}")
        for actor in info["actors"]:
            click.echo(f"    {actor}")


@node.command("kill")
@click.argument("name")
def node_kill(name):
    """Lose a worker node at once (SIGKILL its raylet and everything under it): a machine failure."""
    state, layout = _nodes_state()
    target = next((n for n in layout if n.name == name), None)
    if target is None:
        raise click.ClickException(f"no node {name!r}: {', '.join(n.name for n in layout)}")
    try:
        killed = nodes.kill(target)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    state.nodes = nodes.to_state(layout)
    state.save()
    click.echo(f"{name}: {killed} processes killed; regions {', '.join(target.regions)} lost until `fleet node start {name}`")


@node.command("start")
@click.argument("name")
def node_start(name):
    """Start a worker node again (same name and regions); the region's processes come back to it."""
    state, layout = _nodes_state()
    target = next((n for n in layout if n.name == name and not n.head), None)
    if target is None:
        raise click.ClickException(f"no worker node {name!r}")
    if nodes.alive(target):
        raise click.ClickException(f"{name} is running")
    export_fleet_env(state)
    nodes.start_worker(target, state.gcs_address, local.venv_bin("ray"), {**os.environ, **local.ray_env()})
    state.nodes = nodes.to_state(layout)
    state.save()
    click.echo(f"{name}: up (raylet pid {target.pids[0]}), regions {', '.join(target.regions)}")
