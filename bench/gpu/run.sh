#!/usr/bin/env bash
# The CUDA issue's check on a GPU machine, in one call: unpack the carried Deno, build the shim
# against the machine's CUDA PyTorch, run the CUDA test subset, run the benchmark against the
# PyTorch comparator, then the CPU-side test files of lib/torch and lib/nn against this libtorch
# (a compatibility check of the newer libtorch). Logs go to $OUT (default /tmp/gpu-out).
# Prepare with `bash bench/gpu/prepare.sh` on a machine with network; see bench/gpu/README.md.
# Usage: [ROUNDS=N] bash bench/gpu/run.sh   (from the repository root; N alternating rounds, default 2)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
rounds="${ROUNDS:-2}"
step() { echo "=== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/summary.txt"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/summary.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$OUT/summary.txt"

step "deno"
source bench/gpu/env.sh
deno --version | head -1 | tee -a "$OUT/summary.txt"

step "setup (build against the CUDA PyTorch)"
deno run -A native/setup.ts --force --no-install 2>&1 | tee "$OUT/setup.log" | tail -3
tail -1 "$OUT/setup.log" >> "$OUT/summary.txt"

step "CUDA test subset"
deno test -A --cached-only tests/cuda/ 2>&1 | tee "$OUT/tests.log" | tail -15
grep -E "^(ok|FAILED) \|" "$OUT/tests.log" | sed 's/\x1b\[[0-9;]*m//g' >> "$OUT/summary.txt"

step "benchmark: ours vs the PyTorch comparator"
deno run -A --cached-only bench/gpu/compare.ts --rounds "$rounds" --out "$OUT/gpu.json" \
  2> "$OUT/bench.log" > "$OUT/bench.json"
tail -12 "$OUT/bench.log" | tee -a "$OUT/summary.txt"
cat "$OUT/bench.json" >> "$OUT/summary.txt"

step "compatibility: tests/torch and tests/nn on this libtorch (CPU paths)"
timeout 100 deno test -A --cached-only tests/torch/ tests/nn/ > "$OUT/compat.log" 2>&1
grep -E "^(ok|FAILED) \||=> " "$OUT/compat.log" | sed 's/\x1b\[[0-9;]*m//g' | tail -30 >> "$OUT/summary.txt"
step "done"
