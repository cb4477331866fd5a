"""infra/terraform/ checked without a cloud account (fast; no Ray, no Redis, no network needed
except for the scanner's first install).

- The HCL itself, parsed with python-hcl2: one variables file per region of regions.yaml with the
  variables the root needs (and none it does not declare); every variable and output described;
  providers pinned and a Terraform version required; a remote state backend; the required tags
  enforced by validation and set; no secret values in code, secret variables sensitive.
- The generated Serve configs (fleet.infra.rayservice) match serve_config.yaml and are committed
  up to date.
- `terraform fmt -check`, and `terraform validate` of each root where its providers can be had
  (a filesystem mirror, or the registry); skipped with the reason otherwise.
- checkov (infra/scan.sh, its own venv) finds nothing unexplained, and does find a planted canary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import hcl2
import pytest
import yaml

from fleet.infra import rayservice

ROOT = Path(__file__).resolve().parent.parent
TF = ROOT / "infra" / "terraform"
ROOTS = [TF / "envs" / "region", TF / "envs" / "global"]
MODULES = sorted(p for p in (TF / "modules").iterdir() if p.is_dir())
REQUIRED_TAGS = ("app", "region", "owner", "cost-center")
REQUIRED_TFVARS = {"region", "tags", "image", "kube_context"}
# Names that hold secret values: never a literal, always a sensitive variable without a default.
SECRET_NAME = re.compile(r"(^|_)(password|passwd|token|secret|secret_key|access_key|api_key|private_key|notice_keys)$",
                         re.IGNORECASE)
_OPTS = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)


def hcl(path: Path) -> dict:
    return hcl2.loads(path.read_text(), serialization_options=_OPTS)


def tf_files(directory: Path | None = None) -> list[Path]:
    """A directory's own .tf files, or with no directory every .tf file under infra/terraform."""
    return sorted(TF.rglob("*.tf")) if directory is None else sorted(directory.glob("*.tf"))


def merged(directory: Path) -> dict[str, list]:
    """All top-level blocks of one Terraform directory (a module or a root), by block type."""
    out: dict[str, list] = {}
    for f in tf_files(directory):
        for kind, items in hcl(f).items():
            out.setdefault(kind, []).extend(items if isinstance(items, list) else [items])
    return out


def named(blocks: list[dict]) -> dict[str, dict]:
    """[{name: body}, ...] -> {name: body} (variables, outputs, modules)."""
    return {k: v for b in blocks for k, v in b.items()}


def resources(directory: Path) -> list[tuple[str, str, dict]]:
    return [(rtype, name, body) for b in merged(directory).get("resource", [])
            for rtype, by_name in b.items() for name, body in by_name.items()]


def walk(obj, path=()):
    """Every (key path, value) of a parsed document."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk(v, path + (str(k),))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from walk(v, path + (str(i),))
    yield path, obj


def is_literal(value) -> bool:
    return isinstance(value, str) and value != "" and "${" not in value


@pytest.fixture(scope="module")
def regions_yaml() -> dict:
    return yaml.safe_load((ROOT / "regions.yaml").read_text())


@pytest.fixture(scope="module")
def serve_config() -> dict:
    return yaml.safe_load((ROOT / "serve_config.yaml").read_text())


# --- the HCL ----------------------------------------------------------------------------------


def test_every_terraform_file_parses():
    files = tf_files() + sorted(TF.rglob("*.tfvars")) + sorted(TF.rglob("*.hcl*"))
    assert len(files) > 20
    for f in files:
        assert isinstance(hcl(f), dict), f


def test_every_region_has_a_variables_file_with_what_the_root_needs(regions_yaml):
    tfvars = {p.stem: hcl(p) for p in (TF / "regions").glob("*.tfvars")}
    assert set(tfvars) == set(regions_yaml["regions"]), "one regions/<region>.tfvars per region of regions.yaml"
    declared = named(merged(TF / "envs" / "region")["variable"])
    needed = {name for name, body in declared.items() if "default" not in body}
    assert needed <= REQUIRED_TFVARS, "a root variable without a default must be in REQUIRED_TFVARS"
    control_regions = []
    for region, values in tfvars.items():
        assert REQUIRED_TFVARS <= set(values), f"{region}.tfvars lacks {REQUIRED_TFVARS - set(values)}"
        assert set(values) <= set(declared), f"{region}.tfvars sets undeclared {set(values) - set(declared)}"
        assert values["region"] == region
        assert all(str(values["tags"].get(t, "")).strip() for t in REQUIRED_TAGS), region
        assert values["tags"]["region"] == region
        assert re.search(r"(:[\w.-]+|@sha256:[0-9a-f]{64})$", values["image"]) and not values["image"].endswith(":latest")
        if values.get("control_enabled"):
            control_regions.append(region)
        else:
            assert re.match(r"^https?://[^/]+/control$", values.get("control_url", "")), \
                f"{region}: a region without control needs control_url"
    assert len(control_regions) == 1, f"control must live in exactly one region, got {control_regions}"


def test_global_stack_names_every_region(regions_yaml):
    values = hcl(TF / "envs" / "global" / "terraform.tfvars")
    assert set(values["regions"]) == set(regions_yaml["regions"])
    assert all(r["aws_region"] for r in values["regions"].values())
    assert all(str(values["tags"].get(t, "")).strip() for t in REQUIRED_TAGS)
    declared = named(merged(TF / "envs" / "global")["variable"])
    assert set(values) <= set(declared)


@pytest.mark.parametrize("directory", ROOTS + MODULES, ids=lambda p: str(p.relative_to(TF)))
def test_variables_and_outputs_are_described(directory):
    blocks = merged(directory)
    assert blocks.get("variable"), "expected variables"
    for kind in ("variable", "output"):
        for name, body in named(blocks.get(kind, [])).items():
            assert str(body.get("description", "")).strip(), f"{directory.name}: {kind} {name} has no description"
    for name, body in named(blocks.get("variable", [])).items():
        assert "type" in body, f"{directory.name}: variable {name} has no type"


@pytest.mark.parametrize("directory", ROOTS + MODULES, ids=lambda p: str(p.relative_to(TF)))
def test_terraform_and_providers_are_pinned(directory):
    terraform = merged(directory).get("terraform", [])
    assert len(terraform) == 1, f"{directory.name}: one terraform block (versions.tf)"
    t = terraform[0]
    assert re.match(r"^>= ?1\.\d+(\.\d+)?, ?< ?2\.0\.0$", t.get("required_version", "")), "required_version"
    providers = {k: v for b in t.get("required_providers", []) for k, v in b.items()}
    for name, spec in providers.items():
        assert spec.get("source", "").startswith("hashicorp/"), name
        assert re.match(r"^(~> ?\d+\.\d+(\.\d+)?|\d+\.\d+\.\d+)$", spec.get("version", "")), \
            f"{directory.name}: provider {name} must be pinned exactly or with ~> (got {spec.get('version')!r})"
    used = {rtype.split("_")[0] for rtype, _, _ in resources(directory)} - {"terraform"}
    used |= {d.split("_")[0] for b in merged(directory).get("data", []) for d in b} - {"terraform"}
    assert used <= set(providers), f"{directory.name}: providers used but not required: {used - set(providers)}"


def test_provider_versions_agree_across_directories():
    seen: dict[str, set] = {}
    for d in ROOTS + MODULES:
        for t in merged(d).get("terraform", []):
            for b in t.get("required_providers", []):
                for name, spec in b.items():
                    seen.setdefault(name, set()).add(spec["version"])
    assert all(len(v) == 1 for v in seen.values()), seen
    assert {"kubernetes", "helm", "aws"} <= set(seen)


def test_roots_have_a_remote_backend_and_modules_have_none():
    for d in ROOTS:
        backends = merged(d)["terraform"][0].get("backend", [])
        assert backends and "s3" in backends[0], f"{d.name}: an s3 backend"
        s3 = backends[0]["s3"]
        assert s3.get("encrypt") is True and s3.get("use_lockfile") is True, "encrypted, locked state"
        assert "bucket" not in s3 and "key" not in s3, "bucket and key come from -backend-config"
    for d in MODULES:
        blocks = merged(d)
        assert not blocks["terraform"][0].get("backend"), f"module {d.name} declares a backend"
        assert "provider" not in blocks, f"module {d.name} configures a provider (the root does)"


def test_required_tags_are_enforced_and_applied():
    for d in ROOTS + [TF / "modules" / n for n in ("region", "control", "global")]:
        tags = named(merged(d)["variable"]).get("tags")
        assert tags is not None, f"{d.name}: a tags variable"
        conditions = " ".join(v["condition"] for v in tags.get("validation", []))
        assert all(f'"{t}"' in conditions for t in REQUIRED_TAGS), f"{d.name}: tags validation names every required tag"
    # Every Kubernetes object is labelled; every taggable AWS resource is tagged (and the provider
    # adds default_tags).
    for d in MODULES:
        for rtype, name, body in resources(d):
            if rtype.startswith("kubernetes_") and rtype != "kubernetes_manifest":
                labels = body["metadata"][0].get("labels", "")
                assert "var.tags" in str(labels) or "var.labels" in str(labels), f"{rtype}.{name} unlabelled"
            if rtype == "kubernetes_manifest":
                assert "var.labels" in str(body["manifest"]["metadata"]["labels"])
            if rtype == "aws_route53_health_check":
                assert "var.tags" in str(body.get("tags")), f"{rtype}.{name} untagged"
    provider = merged(TF / "envs" / "global")["provider"][0]["aws"]
    assert "var.tags" in str(provider["default_tags"][0]["tags"])


def test_no_secret_values_in_code_and_secret_variables_are_sensitive():
    files = tf_files() + sorted(TF.rglob("*.tfvars")) + sorted(TF.rglob("*.hcl*"))
    for f in files:
        for path, value in walk(hcl(f)):
            if path and SECRET_NAME.search(path[-1]) and is_literal(value):
                pytest.fail(f"{f.relative_to(TF)}: {'.'.join(path)} holds a literal value (use a sensitive variable or a Secret)")
        text = f.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY|\b(?!sha256:)\w+:[0-9a-fA-F]{32,}\b", text), f
    secret_vars = 0
    for d in ROOTS + MODULES:
        for name, body in named(merged(d).get("variable", [])).items():
            if SECRET_NAME.search(name):
                secret_vars += 1
                assert body.get("sensitive") is True, f"{d.name}: variable {name} must be sensitive"
                assert body.get("default") is None, f"{d.name}: variable {name} must have no default value"
    assert secret_vars >= 6
    # The Secrets are built from those variables only.
    for d in (TF / "modules" / "region", TF / "modules" / "control"):
        for rtype, name, body in resources(d):
            if rtype == "kubernetes_secret_v1":
                assert all(str(v).startswith("${var.") for v in body["data"].values()), f"{d.name}: {name}"


def test_pods_run_unprivileged():
    """checkov has no policies for a kubernetes_manifest's pod templates or a StatefulSet's
    containers, so the settings that matter are asserted here."""
    locals_ = {k: v for b in merged(TF / "modules" / "rayservice")["locals"] for k, v in b.items()}
    assert locals_["container_security"] == {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                                             "capabilities": {"drop": ["ALL"]}}
    assert locals_["pod_security"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for _rtype, _name, body in resources(TF / "modules" / "redis"):
        if _rtype != "kubernetes_stateful_set_v1":
            continue
        pod = body["spec"][0]["template"][0]["spec"][0]
        assert pod["automount_service_account_token"] is False
        c = pod["container"][0]
        sc = c["security_context"][0]
        assert sc["allow_privilege_escalation"] is False and sc["read_only_root_filesystem"] is True
        assert sc["capabilities"][0]["drop"] == ["ALL"]
        assert {"--appendonly", "yes"} <= set(c["args"]) and "noeviction" in c["args"], "AOF on, no eviction"
        assert c["resources"][0]["limits"] and c["resources"][0]["requests"]


# --- generated Serve configs ---------------------------------------------------------------------


def _app_view(app: dict) -> dict:
    return {"name": app["name"], "route_prefix": app["route_prefix"], "import_path": app["import_path"],
            "args": app.get("args"),
            "deployments": [(d["name"], d.get("user_config")) for d in app.get("deployments", [])]}


def test_generated_serve_configs_match_serve_config(serve_config, regions_yaml):
    by_region = rayservice.region_apps(serve_config)
    assert set(by_region) == set(regions_yaml["regions"])
    for region in regions_yaml["regions"]:
        doc = yaml.safe_load((TF / "generated" / f"{region}.serve.yaml").read_text())
        assert [_app_view(a) for a in doc["applications"]] == [_app_view(by_region[region])], region
        assert doc["applications"][0]["route_prefix"] == regions_yaml["regions"][region]["route_prefix"]
        assert doc["http_options"] == {"host": "0.0.0.0", "port": 8000}
        assert doc["proxy_location"] == serve_config.get("proxy_location", "EveryNode")
    doc = yaml.safe_load((TF / "generated" / "control.serve.yaml").read_text())
    assert [_app_view(a) for a in doc["applications"]] == [_app_view(rayservice.control_app(serve_config))]


def test_generated_regions_file_is_regions_yaml_plus_the_control_url(regions_yaml):
    text = (TF / "generated" / "regions.yaml").read_text()
    url = "https://control.example.com:8000/control"
    doc = yaml.safe_load(text.replace(rayservice.CONTROL_URL_PLACEHOLDER, url))
    assert doc["defaults"]["control"]["url"] == url
    doc["defaults"]["control"].pop("url")
    if not doc["defaults"]["control"]:
        doc["defaults"].pop("control")
    assert doc == regions_yaml
    assert list(doc["tiers"]) == list(regions_yaml["tiers"]), "tier order (richest first) is kept"


def test_generated_files_are_up_to_date():
    stale = rayservice.write_all(check=True)
    assert not stale, f"run `python -m fleet.infra.rayservice --all` (stale: {stale})"
    assert sorted(p.name for p in (TF / "generated").iterdir()) == sorted(rayservice.targets())


def test_generator_entry_point():
    out = subprocess.run([sys.executable, "-m", "fleet.infra.rayservice", "--region", "us-east"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out == (TF / "generated" / "us-east.serve.yaml").read_text()
    bad = subprocess.run([sys.executable, "-m", "fleet.infra.rayservice", "--region", "mars"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "not in" in bad.stderr
    with pytest.raises(rayservice.ConfigError):
        rayservice.render()


def test_terraform_uses_the_generated_files():
    module_calls = named(merged(TF / "envs" / "region")["module"])
    assert "${var.region}.serve.yaml" in module_calls["region"]["serve_config_yaml"]
    assert "regions.yaml" in module_calls["region"]["regions_yaml_template"]
    assert "control.serve.yaml" in module_calls["control"]["serve_config_yaml"]
    region_main = (TF / "modules" / "region" / "main.tf").read_text()
    assert 'replace(var.regions_yaml_template, "$${control_url}"' in region_main
    assert rayservice.CONTROL_URL_PLACEHOLDER == "${control_url}"


# --- terraform's own checks ---------------------------------------------------------------------


def _terraform() -> str | None:
    return shutil.which("terraform")


def test_terraform_fmt():
    tf = _terraform()
    if tf is None:
        pytest.skip("terraform is not on PATH (the HCL checks above ran without it)")
    r = subprocess.run([tf, "fmt", "-check", "-recursive", "-diff", str(TF)], capture_output=True, text=True)
    assert r.returncode == 0, f"terraform fmt -recursive infra/terraform:\n{r.stdout}{r.stderr}"


RENDER_VARS = """
name = "us-east"
namespace = "fleet-us-east"
labels = { app = "edge-fleet", region = "us-east", owner = "o", "cost-center" = "c" }
image = "registry.example.com/edge-fleet:0.1.0"
app_dir = "/app"
ray_version = "2.60.0"
serve_config_yaml = "applications: []"
secret_name = "fleet-secrets"
secret_env = ["REDIS_PASSWORD", "FLEET_NOTICE_KEYS", "FLEET_CONTROL_TOKEN"]
env = { REDIS_URL = "redis://:$(REDIS_PASSWORD)@fleet-redis:6379/0", RAY_SERVE_ENABLE_HA_PROXY = "1" }
config_files = { "regions.yaml" = "defaults: {}" }
head = { cpu = "4", memory = "16Gi" }
worker_groups = [
  { name = "cpu", replicas = 2, min_replicas = 2, max_replicas = 2, cpu = "8", memory = "16Gi" },
  { name = "gpu", replicas = 0, min_replicas = 0, max_replicas = 2, cpu = "8", memory = "32Gi", gpus = 1,
    node_selector = { "nvidia.com/gpu.present" = "true" }, tolerations = [{ key = "nvidia.com/gpu" }] },
]
ingress_name = "us-east-ingress"
ingress_source_ranges = ["0.0.0.0/0"]
"""


def test_rayservice_pod_templates_render(tmp_path):
    """The RayService module's pod templates, evaluated by terraform itself with no provider (its
    locals only): runs offline, where `validate` of the Kubernetes roots cannot."""
    tf = _terraform()
    if tf is None:
        pytest.skip("terraform is not on PATH")
    src = (TF / "modules" / "rayservice" / "main.tf").read_text()
    locals_block = src[src.index("locals {"):src.index('resource "kubernetes_config_map_v1"')]
    shutil.copy(TF / "modules" / "rayservice" / "variables.tf", tmp_path)
    (tmp_path / "locals.tf").write_text(locals_block + '\noutput "head" {\n  value = local.head_template\n}\n'
                                        'output "workers" {\n  value = local.worker_groups\n}\n')
    (tmp_path / "terraform.tfvars").write_text(RENDER_VARS)
    env = dict(os.environ, TF_CLI_CONFIG_FILE=os.devnull, TF_IN_AUTOMATION="1", CHECKPOINT_DISABLE="1")
    for args in (["init", "-input=false", "-no-color"], ["apply", "-auto-approve", "-input=false", "-no-color"]):
        r = subprocess.run([tf, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"terraform {args[0]}:\n{r.stdout}{r.stderr}"
    out = json.loads(subprocess.run([tf, "output", "-json"], cwd=tmp_path, env=env, capture_output=True,
                                    text=True, check=True).stdout)
    head = out["head"]["value"]["spec"]["containers"][0]
    names = [e["name"] for e in head["env"]]
    assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL"), "$(REDIS_PASSWORD) needs it defined first"
    assert all("valueFrom" in e for e in head["env"] if e["name"].startswith(("FLEET_", "REDIS_PASSWORD")))
    assert {"name": "serve", "containerPort": 8000} in head["ports"]
    # every node starts with the fleet's environment, then KubeRay's own command (tests/test_pod_start.py)
    for tpl in (out["head"]["value"], *(g["template"] for g in out["workers"]["value"])):
        assert tpl["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
        c = tpl["spec"]["containers"][0]
        assert c["command"] == ["/bin/bash", "-c", "--"] and "python -m fleet.runtime.pod --dir /tmp/fleet" in c["args"][0]
        assert "ulimit -n ${RAY_START_ULIMIT_OPEN_FILES:-65536};" in c["args"][0]
        assert c["args"][0].endswith('exec /bin/bash -c "$KUBERAY_GEN_RAY_START_CMD"')
    assert head["volumeMounts"] == [{"name": "files", "mountPath": "/app/regions.yaml", "subPath": "regions.yaml",
                                     "readOnly": True}, {"name": "fleet-run", "mountPath": "/tmp/fleet"}]
    assert {"name": "fleet-run", "emptyDir": {}} in out["head"]["value"]["spec"]["volumes"]
    cpu, gpu = out["workers"]["value"]
    assert "nvidia.com/gpu" not in cpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu["template"]["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                       "effect": "NoSchedule"}]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] == 2


def _registry_reachable() -> bool:
    try:
        socket.create_connection(("registry.terraform.io", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: p.name)
def test_terraform_validate(root, tmp_path):
    tf = _terraform()
    if tf is None:
        pytest.skip("terraform is not on PATH")
    # The providers the root and its modules (and theirs) need, as registry sources.
    used_sources, todo, seen = set(), [root], set()
    while todo:
        d = todo.pop().resolve()
        if d in seen:
            continue
        seen.add(d)
        blocks = merged(d)
        used_sources |= {v["source"] for t in blocks["terraform"] for b in t.get("required_providers", [])
                         for v in b.values()}
        todo += [d / m["source"] for m in named(blocks.get("module", [])).values()]
    mirror = Path(os.environ.get("TF_PLUGIN_MIRROR", "/opt/tf-plugins"))
    env = dict(os.environ, TF_IN_AUTOMATION="1", CHECKPOINT_DISABLE="1")
    if all((mirror / "registry.terraform.io" / s).is_dir() for s in used_sources):
        cfg = tmp_path / "cli.tfrc"
        cfg.write_text(f'provider_installation {{\n  filesystem_mirror {{\n    path = "{mirror}"\n  }}\n}}\n')
        env["TF_CLI_CONFIG_FILE"] = str(cfg)
    elif not _registry_reachable():
        missing = sorted(s for s in used_sources if not (mirror / "registry.terraform.io" / s).is_dir())
        pytest.skip(f"providers {missing} are neither in a local mirror ({mirror}) nor downloadable "
                    "(registry.terraform.io unreachable); CI with network validates this root")
    else:
        env.pop("TF_CLI_CONFIG_FILE", None)
    copy = tmp_path / "terraform"
    shutil.copytree(TF, copy, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*"))
    workdir = copy / root.relative_to(TF)
    for args in (["init", "-backend=false", "-input=false", "-no-color"], ["validate", "-no-color"]):
        r = subprocess.run([tf, *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"terraform {args[0]} in {root.relative_to(TF)}:\n{r.stdout}{r.stderr}"


# --- the security scan --------------------------------------------------------------------------

CANARY = """
provider "aws" {
  region     = "us-east-1"
  access_key = "AKIAIOSFODNN7EXAMPLE"
  secret_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
}

resource "kubernetes_pod_v1" "canary" {
  metadata {
    name = "canary"
  }
  spec {
    container {
      name  = "c"
      image = "busybox"
      security_context {
        privileged = true
      }
    }
  }
}
"""


def test_checkov_skips_carry_reasons():
    cfg = yaml.safe_load((TF / ".checkov.yaml").read_text())
    assert set(cfg["framework"]) >= {"terraform", "secrets"}
    skipped = cfg.get("skip-check") or []
    lines = (TF / ".checkov.yaml").read_text().splitlines()
    for check in skipped:
        line = next(ln for ln in lines if re.match(rf"^\s*-\s*{re.escape(check)}\b", ln))
        assert re.search(r"#\s*\S.{10,}", line), f"skip of {check} needs a reason comment on its line"


@pytest.mark.timeout(900)  # the first run installs checkov into .venv-scan
def test_checkov_finds_nothing_unexplained(tmp_path):
    """infra/scan.sh over infra/terraform, plus a canary directory with planted findings (so a
    scanner that silently scans nothing cannot pass)."""
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "main.tf").write_text(CANARY)
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(ROOT / "infra" / "scan.sh"), "-d", str(TF), "-d", str(canary),
                        "-o", "json", "--output-file-path", str(out)],
                       capture_output=True, text=True, timeout=900)
    results = out / "results_json.json"
    assert results.exists(), f"checkov did not run (rc {r.returncode}):\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    reports = json.loads(results.read_text())
    reports = reports if isinstance(reports, list) else [reports]
    failed = [c for rep in reports for c in rep["results"]["failed_checks"]]
    ours = [f"{c['check_id']} {c['resource']} {c['file_abs_path']}:{c['file_line_range']}"
            for c in failed if not c["file_abs_path"].startswith(str(canary))]
    assert not ours, "checkov findings in infra/terraform (fix, or skip in .checkov.yaml with a reason):\n" + "\n".join(ours)
    planted = {c["check_id"] for c in failed if c["file_abs_path"].startswith(str(canary))}
    assert {"CKV_SECRET_2", "CKV_AWS_41", "CKV_K8S_16"} <= planted, planted
    tf_report = next(rep for rep in reports if rep["check_type"] == "terraform")
    assert tf_report["summary"]["parsing_errors"] == 0
    passed_ours = [c for c in tf_report["results"]["passed_checks"] if not c["file_abs_path"].startswith(str(canary))]
    assert passed_ours, "the scan covered none of infra/terraform's resources"
    assert r.returncode != 0  # because of the canary
