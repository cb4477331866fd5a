# call 2: extract A2, check imports, run the capacity bench with the cache comparison
source bench/device/env.sh
export PATH=/tmp/tools/bin:$PATH
date; [ -d /tmp/site/ray ] && [ -x /tmp/tools/real/wrk ] || { echo "NO /tmp/site or /tmp/tools: the machine was reset"; exit 3; }
t=$(date +%s); unx .big/A2.tar.xz | tar x -C /tmp/site; echo "A2 extracted in $(( $(date +%s)-t )) s"
R=$PWD; cd /tmp/repo && python3 $R/bench/device/cap_imports.py
env | grep -E "^(RAY_ADDRESS|REDIS_URL)=" ; uptime
(while sleep 20; do date +%T; top -b -n1 -w 220 | sed -n 1,25p; done) > $OUT/top.txt 2>&1 & TP=$!
time timeout 500 python3 -m fleet.cli bench capacity --compare-cache --step-s 4; echo "bench rc=$?"
kill $TP
cp bench/results/capacity-us-east-cache.json $OUT/capacity-us-east-cache-h100.json && echo copied
tar czf $OUT/raylogs.tgz -C /tmp/ray/session_latest logs 2>/dev/null; ls -la $OUT; date
