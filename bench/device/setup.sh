# Call 1 of either run, on a fresh machine: what the machine is; Ray, Serve and the fleet's deps
# (.big/A1.tar.xz) unpacked into /tmp/site and the repo into /tmp/repo; the imports that need
# nothing more checked. Then
#   batching: the CUDA libraries the image has, /tmp/parts for the CUDA provider's pieces, and a
#             Ray Serve smoke test with a `num_gpus: 0.25` replica (Ray's logs: raylogs-setup.tgz)
#   capacity: wrk and redis-server from .big/tools.tar.xz (with the libraries the image lacks),
#             each tried once
# Usage: bash bench/device/setup.sh batching|capacity
source bench/device/env.sh
RUN=${1:-}
case "$RUN" in batching|capacity) ;; *) echo "usage: setup.sh batching|capacity"; exit 2 ;; esac
date; nproc; python3 -V; uname -r; grep PRETTY /etc/os-release; ldd --version | head -1
free -g | head -2; df -h /tmp /dev/shm | cat
rm -rf /tmp/site /tmp/repo /tmp/parts /tmp/tools
t=$(date +%s)
unx .big/A1.tar.xz | tar x -C /tmp
unpack_repo
[ "$RUN" = capacity ] && unx .big/tools.tar.xz | tar x -C /tmp
echo "extracted in $(( $(date +%s)-t )) s"; du -sh /tmp/site /tmp/repo
R=$PWD

if [ "$RUN" = batching ]; then
  nvidia-smi; command -v xz zstd haproxy
  python3 -m pip list 2>/dev/null | grep -i -E "^(numpy|scipy|protobuf|grpcio|aiohttp|uvloop|psutil|typing.extensions|onnx|onnxruntime|six|pyyaml|click|requests|urllib3|packaging|attrs|anyio|msgpack|nvidia-[a-z0-9-]*|torch|cupy-cuda13x) "
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  python3 - <<'PY'
import ctypes
for lib in ("libnvidia-ml.so.1","libcuda.so.1","libcudart.so.13","libcublasLt.so.13","libcublas.so.13","libcudnn.so.9","libcufft.so.12","libcurand.so.10","libnvrtc.so.13"):
    try: ctypes.CDLL(lib); print("ok", lib)
    except OSError as e: print("MISSING", lib, e)
PY
  mkdir -p /tmp/parts
  (cd /tmp/repo && python3 $R/bench/device/check_imports.py base)
  timeout 150 python3 bench/device/smoke_serve_gpu.py || { echo SMOKE FAILED; tail -n 40 /tmp/ray/session_latest/logs/serve/*.log; }
  raylogs setup
else
  mkdir -p /tmp/tools/lib
  for f in /tmp/tools/libs/*; do n=$(basename $f)
    if ldconfig -p | awk '{print $1}' | grep -qx "$n"; then echo "system has $n"; else echo "CARRIED $n"; cp $f /tmp/tools/lib/; fi
  done
  export PATH=/tmp/tools/bin:$PATH
  for b in wrk redis-server; do echo "== ldd $b, system libs only:"; ldd /tmp/tools/real/$b | grep "not found"
    echo "== ldd $b with the carried ones:"; LD_LIBRARY_PATH=/tmp/tools/lib ldd /tmp/tools/real/$b; done
  python3 -c 'import shutil; print("which", shutil.which("wrk"), shutil.which("redis-server"))'
  wrk --version | head -1; redis-server --version
  redis-server --port 6399 --bind 127.0.0.1 --save "" --loglevel warning & RP=$!; sleep 0.5
  python3 -c "import redis; r=redis.Redis(port=6399); print('redis ping', r.ping(), r.info()['redis_version'])"; kill $RP
  python3 -m http.server 8999 --bind 127.0.0.1 >/dev/null 2>&1 & HP=$!; sleep 0.7
  wrk -t1 -c2 -d1s http://127.0.0.1:8999/ | tail -4; kill $HP
  (cd /tmp/repo && python3 $R/bench/device/check_imports.py base)
fi
date
