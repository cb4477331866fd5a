# Batching run, call 2: A2 (onnxruntime-gpu, xgboost-cpu, ...) into the site folder, the first
# piece of the CUDA provider set aside, the repo refreshed, the batching path's imports checked,
# then served batching on the CPU (ORT CPU, one thread):
#   $OUT/batching-$DEVICE_TAG-cpu.json, Ray's logs in $OUT/raylogs-batching-cpu.tgz
# Usage: bash bench/device/batching-cpu.sh            (after setup.sh batching)
source bench/device/env.sh
need_setup
stage_piece 0
unpack_repo
unpack_a2
R=$PWD; (cd /tmp/repo && python3 $R/bench/device/check_imports.py batching)
cd /tmp/repo && time timeout 420 python3 -m fleet.cli bench batching --out $OUT/batching-$DEVICE_TAG-cpu.json; echo "bench rc=$?"
raylogs batching-cpu
