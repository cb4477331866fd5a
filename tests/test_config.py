"""regions.yaml and serve_config.yaml: valid, consistent with each other, and strict."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from fleet.config import REPO_ROOT, RegionAppArgs, RegionsFile


def test_serve_config_has_one_app_per_region_with_matching_prefixes(regions):
    cfg = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    control = [a for a in cfg["applications"] if a["name"] == "control"]
    assert len(control) == 1 and control[0]["route_prefix"] == "/control"
    assert control[0]["import_path"] == "fleet.serve.control_app:build_app"
    apps = {a["name"]: a for a in cfg["applications"] if a["name"] != "control"}
    assert set(apps) == set(regions.regions)
    assert len(regions.regions) >= 3
    for name, app in apps.items():
        assert app["route_prefix"] == regions.regions[name].route_prefix
        assert app["import_path"] == "fleet.serve.region_app:build_app"
        assert RegionAppArgs.model_validate(app["args"]).region == name


def test_latency_matrix_is_square_and_symmetric(regions):
    names = set(regions.regions)
    for a in names:
        assert set(regions.latency_ms[a]) == names
        for b in names:
            assert regions.latency_ms[a][b] == regions.latency_ms[b][a]


def _raw():
    return yaml.safe_load((REPO_ROOT / "regions.yaml").read_text())


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["latency_ms"].pop("eu-west"),
        lambda d: d["regions"]["us-east"].update(budget_share=0.9),
        lambda d: d["regions"]["us-east"].update(route_prefix="us-east"),
        lambda d: d["tiers"]["remnant"]["budgets"].update(pricing=0.9),
        lambda d: d["tiers"]["remnant"]["budgets"].update(bogus=0.01),
        lambda d: d["regions"]["us-east"].update(max_tmax_ms=0),
        lambda d: d["regions"]["us-east"].update(typo_field=1),
    ],
)
def test_bad_regions_file_is_refused(breakage):
    data = _raw()
    breakage(data)
    with pytest.raises(ValidationError):
        RegionsFile.model_validate(data)


def test_tier_selection(regions):
    assert regions.tier_for(True, 0.0) == "premium"
    assert regions.tier_for(False, 6.0) == "premium"
    assert regions.tier_for(False, 1.5) == "standard"
    assert regions.tier_for(False, 0.2) == "remnant"
