# Batching run, last call: the last piece of the CUDA provider, all the pieces joined and checked
# against their checksums, the provider put into onnxruntime; the scorer on CUDA checked against
# the CPU one (check_gpu_scorer.py), then served batching on the GPU as a GPU region deploys it
# (backend auto, num_gpus 0.25):
#   $OUT/batching-$DEVICE_TAG-gpu.json, $OUT/nvsmi.txt (the GPU's processes every 35 s),
#   Ray's logs in $OUT/raylogs-batching-gpu.tgz
# Usage: bash bench/device/batching-gpu.sh [LAST]   (after batching-cpu.sh and cuda-piece.sh for
# every middle piece; LAST is the last piece's number, 3 for the pieces packed as in the README)
source bench/device/env.sh
LAST=${1:-3}
need_setup
stage_piece "$LAST"
unpack_repo
cat $(ls /tmp/parts/C.* | sort) > /tmp/c.xz && sha256sum /tmp/c.xz; echo "expect 41c3c1abb8820fbdbc9fed5a24cf6d86112f0c4aa4fbd6c8c51b91fc6c085d27 (the provider packed for the committed figures)"
t=$(date +%s); unx /tmp/c.xz > /tmp/site/onnxruntime/capi/libonnxruntime_providers_cuda.so; echo "cuda provider in $(( $(date +%s)-t )) s"
sha256sum /tmp/site/onnxruntime/capi/libonnxruntime_providers_cuda.so; echo "expect 8387867e857499e045caff5d13ac6a5de29571c801562fa2dde0e45f1f31de52"
R=$PWD; cd /tmp/repo && python3 $R/bench/device/check_gpu_scorer.py
B=$(python3 -c "from fleet.ml.scorer import cuda_usable; print('auto' if cuda_usable() else 'onnx-cuda')" 2>/dev/null); echo "backend arg: $B"
(for i in 1 2 3 4; do sleep 35; nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv; done) > $OUT/nvsmi.txt 2>&1 &
L=$!
time timeout 420 python3 -m fleet.cli bench batching --backend $B --num-gpus 0.25 --out $OUT/batching-$DEVICE_TAG-gpu.json; echo "bench rc=$?"; kill $L 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv
raylogs batching-gpu
