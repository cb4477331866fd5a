# Batching run: one middle piece of the CUDA execution provider (.big/C.0N; 60 MiB each, one per
# call) set aside in /tmp/parts until batching-gpu.sh joins them.
# Usage: bash bench/device/cuda-piece.sh N          (N = 1, then 2)
source bench/device/env.sh
N=${1:?usage: cuda-piece.sh N}
need_setup
stage_piece "$N"
