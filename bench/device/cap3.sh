# call 2b: same bench with --slo-ms 50 (the capacity search limited by throughput, not by the platform's tail),
# preceded by a loopback latency probe; stops once the JSON is written (skips Serve's 4 x 31 s app drains)
source bench/device/env.sh
export PATH=/tmp/tools/bin:$PATH
date; [ -d /tmp/site/ray ] && [ -x /tmp/tools/real/wrk ] || { echo "NO /tmp/site or /tmp/tools: the machine was reset"; exit 3; }
unx .big/A2.tar.xz | tar x -C /tmp/site
R=$PWD; python3 $R/bench/device/lat_probe.py; cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null; grep -m1 "model name" /proc/cpuinfo
cd /tmp/repo && rm -f bench/results/capacity-us-east-cache.json
(while sleep 20; do date +%T; top -b -n1 -w 220 | sed -n 1,22p; done) > $OUT/top.txt 2>&1 & TP=$!
python3 -m fleet.cli bench capacity --compare-cache --step-s 4 --slo-ms 50 > $OUT/bench.log 2>&1 & BP=$!
for i in $(seq 1 320); do [ -s bench/results/capacity-us-east-cache.json ] && break; kill -0 $BP 2>/dev/null || break; sleep 1; done
sleep 1; cat $OUT/bench.log | grep -v -E "^\s*$"
cp bench/results/capacity-us-east-cache.json $OUT/capacity-us-east-cache-h100-slo50.json && echo copied
python3 $R/bench/device/lat_probe.py
kill $TP; tar czf $OUT/raylogs.tgz -C /tmp/ray/session_latest logs 2>/dev/null; ls -la $OUT; date
