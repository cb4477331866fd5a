export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
SP=$(python3 -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')
NV=$(find "$SP/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH="$NV${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH=/tmp/site:/tmp/repo
unx() { if command -v xz >/dev/null; then xz -T0 -dc "$1"; else python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer, 1<<20)' "$1"; fi; }
raylogs() { tar czf $OUT/raylogs-$1.tgz -C /tmp/ray/session_latest logs 2>/dev/null; ls -la $OUT; }
