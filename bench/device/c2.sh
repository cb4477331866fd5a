source bench/device/env.sh
cp .big/C.00 /tmp/parts/; ls -la /tmp/parts; [ -d /tmp/site/ray ] || echo "NO /tmp/site: machine was reset"
rm -rf /tmp/repo; cp -r .big/repo /tmp/repo
t=$(date +%s); unx .big/A2.tar.xz | tar x -C /tmp/site; echo "A2 extracted in $(( $(date +%s)-t )) s"
python3 bench/device/imports.py
cd /tmp/repo && time timeout 420 python3 -m fleet.cli bench batching --out $OUT/batching-h100-cpu.json; echo "bench rc=$?"
raylogs c2
