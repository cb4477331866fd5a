source bench/device/env.sh
date; nvidia-smi; uname -r; nproc; free -g | head -2; df -h /tmp /dev/shm | cat; python3 -V; command -v xz zstd haproxy
python3 -m pip list 2>/dev/null | grep -i -E "^(numpy|scipy|protobuf|grpcio|aiohttp|uvloop|psutil|typing.extensions|onnx|onnxruntime|six|pyyaml|click|requests|urllib3|packaging|attrs|anyio|msgpack|nvidia-[a-z0-9-]*|torch|cupy-cuda13x) "
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
python3 - <<'PY'
import ctypes
for lib in ("libnvidia-ml.so.1","libcuda.so.1","libcudart.so.13","libcublasLt.so.13","libcublas.so.13","libcudnn.so.9","libcufft.so.12","libcurand.so.10","libnvrtc.so.13"):
    try: ctypes.CDLL(lib); print("ok", lib)
    except OSError as e: print("MISSING", lib, e)
PY
rm -rf /tmp/site /tmp/repo /tmp/parts; mkdir -p /tmp/parts; cp -r .big/repo /tmp/repo
t=$(date +%s); unx .big/A1.tar.xz | tar x -C /tmp; echo "A1 extracted in $(( $(date +%s)-t )) s"; du -sh /tmp/site
python3 bench/device/imports.py
timeout 150 python3 bench/device/smoke_ray.py || { echo SMOKE FAILED; tail -n 40 /tmp/ray/session_latest/logs/serve/*.log; }
raylogs c1
