#!/usr/bin/env bash
# Static security scan of infra/terraform with checkov (tests/test_infra.py runs it; so can you).
#
# checkov's dependency tree would fight the project's pins (ray and friends), so it lives in its
# own virtual environment, .venv-scan, installed from infra/requirements-scan.lock (hashes
# included) and reinstalled whenever that lock changes. Skips, each with its reason, are in
# infra/terraform/.checkov.yaml. Exit status: checkov's, non-zero on any failed check not skipped
# there (open-source checkov carries no severities, so every finding counts, not only high and
# critical ones). Extra arguments go to checkov (e.g. `-o json`).
#
# Environment: FLEET_SCAN_VENV (default .venv-scan), UV (a uv binary; default: the one
# fleet/bootstrap.py installs, else uv on PATH, else python3 -m venv + pip).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${FLEET_SCAN_VENV:-$root/.venv-scan}"
lock="$root/infra/requirements-scan.lock"
want="$(sha256sum "$lock" | cut -d' ' -f1)"

if [ ! -x "$venv/bin/checkov" ] || [ "$(cat "$venv/.lock-sha256" 2>/dev/null)" != "$want" ]; then
  uv="${UV:-}"
  for c in "$root/.venv/tools/bin/uv" "$root/.venv/bin/uv" "$(command -v uv || true)"; do
    if [ -z "$uv" ] && [ -n "$c" ] && [ -x "$c" ]; then uv="$c"; fi
  done
  echo "scan: installing checkov into $venv from infra/requirements-scan.lock" >&2
  rm -rf "$venv"
  if [ -n "$uv" ]; then
    "$uv" venv -q --python "$(command -v python3)" "$venv"
    "$uv" pip sync -q --python "$venv/bin/python" --require-hashes "$lock"
  else
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --require-hashes --no-deps -r "$lock"
  fi
  echo "$want" > "$venv/.lock-sha256"
fi

cd "$root/infra/terraform"
# --skip-download: no Prisma Cloud/Bridgecrew platform calls (no API key; works offline).
exec "$venv/bin/checkov" --config-file .checkov.yaml --skip-download "$@"
