# call 1: extract A1 + HEAD repo + tools; check the tools and the pure-Ray/fleet imports
source bench/device/env.sh
date; nproc; python3 -V; uname -r; grep PRETTY /etc/os-release; ldd --version | head -1
rm -rf /tmp/site /tmp/repo /tmp/tools; mkdir -p /tmp/repo
t=$(date +%s)
unx .big/A1.tar.xz | tar x -C /tmp
unx .big/repoH.tar.xz | tar x -C /tmp/repo
unx .big/tools.tar.xz | tar x -C /tmp
echo "extracted in $(( $(date +%s)-t )) s"; du -sh /tmp/site /tmp/repo
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
cd /tmp/repo && python3 - <<'PY'
import importlib
for m in ["fleet.cli", "fleet.bench.cli", "fleet.bench.capacity", "fleet.runtime.local", "ray.serve", "httpx", "redis", "msgspec"]:
    try: importlib.import_module(m); print("ok", m)
    except BaseException as e: print("FAIL", m, type(e).__name__, e)
PY
date
