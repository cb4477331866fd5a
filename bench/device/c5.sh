source bench/device/env.sh
cp .big/C.03 /tmp/parts/; ls -la /tmp/parts
rm -rf /tmp/repo; cp -r .big/repo /tmp/repo
cat /tmp/parts/C.00 /tmp/parts/C.01 /tmp/parts/C.02 /tmp/parts/C.03 > /tmp/c.xz && sha256sum /tmp/c.xz; echo "expect 41c3c1abb8820fbdbc9fed5a24cf6d86112f0c4aa4fbd6c8c51b91fc6c085d27"
t=$(date +%s); unx /tmp/c.xz > /tmp/site/onnxruntime/capi/libonnxruntime_providers_cuda.so; echo "cuda provider in $(( $(date +%s)-t )) s"
sha256sum /tmp/site/onnxruntime/capi/libonnxruntime_providers_cuda.so; echo "expect 8387867e857499e045caff5d13ac6a5de29571c801562fa2dde0e45f1f31de52"
R=$PWD; cd /tmp/repo && python3 $R/bench/device/gpu_check.py
B=$(python3 -c "from fleet.ml.scorer import cuda_usable; print('auto' if cuda_usable() else 'onnx-cuda')" 2>/dev/null); echo "backend arg: $B"
(for i in 1 2 3 4; do sleep 35; nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv; done) > $OUT/nvsmi.txt 2>&1 &
L=$!
time timeout 420 python3 -m fleet.cli bench batching --backend $B --num-gpus 0.25 --out $OUT/batching-h100-gpu.json; echo "bench rc=$?"; kill $L 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv
raylogs c5
