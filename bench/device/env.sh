# Sourced by every script here (run from the repo root on the device machine): the unpacked site
# folder and repo on the path, the image's CUDA 13 / cuDNN 9 libraries (its nvidia/*/lib folders)
# on LD_LIBRARY_PATH, and the helpers the scripts share.
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
SP=$(python3 -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')
NV=$(find "$SP/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH="$NV${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH=/tmp/site:/tmp/repo
# The tag in the names of the result files kept under $OUT (the committed ones say h100).
DEVICE_TAG=${DEVICE_TAG:-h100}
# xz -d, or Python's lzma where the image has no xz.
unx() { if command -v xz >/dev/null; then xz -T0 -dc "$1"; else python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer, 1<<20)' "$1"; fi; }
# Ray's logs of this call into $OUT (raylogs-<name>.tgz).
raylogs() { tar czf $OUT/raylogs-$1.tgz -C /tmp/ray/session_latest logs 2>/dev/null; ls -la $OUT; }
# The repo under /tmp/repo, fresh: from .big/repoH.tar.xz (git archive) or the copy in .big/repo.
unpack_repo() {
  rm -rf /tmp/repo; mkdir -p /tmp/repo
  if [ -f .big/repoH.tar.xz ]; then unx .big/repoH.tar.xz | tar x -C /tmp/repo; else cp -r .big/repo/. /tmp/repo/; fi
}
# What setup.sh unpacked is still there (a machine handed back and started again is bare).
need_setup() {
  [ -d /tmp/site/ray ] || { echo "NO /tmp/site: the machine was reset; run setup.sh again"; exit 3; }
  [ "${1:-}" != tools ] || [ -x /tmp/tools/real/wrk ] || { echo "NO /tmp/tools: the machine was reset; run setup.sh capacity again"; exit 3; }
}
# A2 (onnxruntime-gpu, xgboost-cpu, cryptography, uvloop) into the site folder.
unpack_a2() { local t=$(date +%s); unx .big/A2.tar.xz | tar x -C /tmp/site; echo "A2 extracted in $(( $(date +%s)-t )) s"; }
# One piece of the CUDA provider (.big/C.0N, from `split`) set aside in /tmp/parts.
stage_piece() { cp .big/C.0$1 /tmp/parts/ && ls -la /tmp/parts; }
