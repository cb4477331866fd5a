# Capacity run, call 2 (one per SLO): A2 into the site folder, the capacity path's imports
# checked, a loopback latency probe (the platform's own tail) before and after, then
#   fleet bench capacity --compare-cache --step-s 4 [--slo-ms SLO_MS]
# stopped once its JSON is written (Serve's app drains after it take minutes and measure nothing).
# Writes $OUT/capacity-us-east-cache-$DEVICE_TAG.json (default SLO, 15 ms) or
# ...-$DEVICE_TAG-slo<SLO_MS>.json, $OUT/bench.log, $OUT/top.txt (top every 20 s), $OUT/raylogs.tgz.
# Usage: bash bench/device/capacity-cache.sh [SLO_MS]      (after setup.sh capacity)
source bench/device/env.sh
export PATH=/tmp/tools/bin:$PATH
SLO=${1:-}
date; need_setup tools
unpack_a2
R=$PWD; (cd /tmp/repo && python3 $R/bench/device/check_imports.py capacity)
env | grep -E "^(RAY_ADDRESS|REDIS_URL)=" ; uptime
python3 $R/bench/device/loopback_latency.py; cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null; grep -m1 "model name" /proc/cpuinfo
cd /tmp/repo && rm -f bench/results/capacity-us-east-cache.json
(while sleep 20; do date +%T; top -b -n1 -w 220 | sed -n 1,25p; done) > $OUT/top.txt 2>&1 & TP=$!
python3 -m fleet.cli bench capacity --compare-cache --step-s 4 ${SLO:+--slo-ms $SLO} > $OUT/bench.log 2>&1 & BP=$!
for i in $(seq 1 500); do [ -s bench/results/capacity-us-east-cache.json ] && break; kill -0 $BP 2>/dev/null || break; sleep 1; done
sleep 1; grep -v -E "^\s*$" $OUT/bench.log
cp bench/results/capacity-us-east-cache.json $OUT/capacity-us-east-cache-$DEVICE_TAG${SLO:+-slo$SLO}.json && echo copied
python3 $R/bench/device/loopback_latency.py
kill $TP; tar czf $OUT/raylogs.tgz -C /tmp/ray/session_latest logs 2>/dev/null; ls -la $OUT; date
