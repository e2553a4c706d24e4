#!/usr/bin/env bash
# Runs shipped studies (studies/*.json) on a GPU machine without network, in one call that ends
# before a deadline: unpack the carried Deno and Fashion-MNIST (bench/gpu/env.sh), build the shim
# against the machine's CUDA PyTorch, then run each study with scripts/ablate.ts in
# runs/gpu/<study>, one after another, every run of a study at once (JOBS), taking over the
# identical runs of studies already in runs/gpu (ablate --reuse). Each study gets the
# time left before the deadline; a study cut by it stops cleanly (its trainings checkpoint every
# 500 iterations), and running the same command again on the same machine resumes it. At the end the
# results (reports, JSON, logs, loss curves; no checkpoints) are packed into $OUT/studies.tar.gz and
# the seed-0 teachers into $OUT/teachers.tar.gz.
#
# Prepare with `bash bench/gpu/prepare.sh --data` on a machine with network (see README.md here).
# Usage (from the repository root):
#   [DEADLINE=S] [JOBS=N] [WORKERS=N] [THREADS=N] [PRECISION=fp32|bf16] [DEVICE=cuda|cpu] \
#   [EVAL_DEVICE=cpu|cuda] [EVAL_THREADS=N] [ONLY=RUN,...] [SEEDS=K,...] [EXTRA="PATH=VALUE ..."] \
#   bash bench/gpu/studies.sh STUDY[:EPOCHS] ...
# e.g. `DEADLINE=540 bash bench/gpu/studies.sh main:8 table3`: the main comparison at 8 epochs,
# then Table 3 at its preset's budget, in the time left. EXTRA adds `--set` overrides to every study
# (the local dry run of this script uses it to shrink everything); ONLY and SEEDS pass --only /
# --seeds to every study. Training runs on DEVICE (cuda) in fp32 by default, the CPU runs'
# numerics; the evaluations on EVAL_DEVICE (cpu by default: the CPU runs' protocol, on the
# machine's many cores). The loader, not the GPU, limits these tiny models: README.md here has the
# measured rates for planning a deadline.
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
OUT="${OUT:-/tmp/gpu-out}"
DEADLINE="${DEADLINE:-540}"
JOBS="${JOBS:-9}"
WORKERS="${WORKERS:-2}"
THREADS="${THREADS:-1}"
PRECISION="${PRECISION:-fp32}"
DEVICE="${DEVICE:-cuda}"
EVAL_DEVICE="${EVAL_DEVICE:-cpu}"
EVAL_THREADS="${EVAL_THREADS:-2}"
PACK_S=40 # kept for packing the results
mkdir -p "$OUT" runs/gpu
step() { echo "=== $(date -u +%H:%M:%S) +$(($(date +%s) - start))s $*" | tee -a "$OUT/summary.txt"; }
left() { echo $((DEADLINE - PACK_S - ($(date +%s) - start))); }

step "machine"
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader |
    tee -a "$OUT/summary.txt"
fi
nproc | sed 's/^/cores: /' | tee -a "$OUT/summary.txt"
source bench/gpu/env.sh
deno --version | head -1 | tee -a "$OUT/summary.txt"

step "setup (build the shim unless up to date)"
deno run -A native/setup.ts --no-install > "$OUT/setup.log" 2>&1
tail -1 "$OUT/setup.log" | tee -a "$OUT/summary.txt"

for spec in "$@"; do
  study="${spec%%:*}"
  file="studies/$study.json"
  sets=(--set "train.device=$DEVICE" --set "train.precision=$PRECISION"
    --set "train.workers=$WORKERS" --set "train.threads=$THREADS" --set "train.save-every=500")
  [ "$spec" != "$study" ] && sets+=(--set "train.epochs=${spec#*:}")
  for e in $(deno eval "console.log(Object.keys(JSON.parse(Deno.readTextFileSync('$file')).base.evals ?? {}).join(' '))"); do
    sets+=(--set "evals.$e.device=$EVAL_DEVICE" --set "evals.$e.threads=$EVAL_THREADS")
  done
  for x in ${EXTRA:-}; do sets+=(--set "$x"); done
  [ -n "${ONLY:-}" ] && sets+=(--only "$ONLY")
  [ -n "${SEEDS:-}" ] && sets+=(--seeds "$SEEDS")
  # runs another study here already finished (same training configuration and seed) are taken
  # over rather than trained again: Table 3's "both" = Fig. 5's M = 4 = Table 2's DenseDINO 6x48
  reuse=()
  for d in runs/gpu/*/; do
    d="${d%/}"
    [ "$d" != "runs/gpu/$study" ] && [ -f "$d/study.json" ] && reuse+=(--reuse "$d")
  done
  t=$(left)
  if [ "$t" -lt 30 ]; then
    step "$spec: not started ($t s left before the deadline)"
    continue
  fi
  step "$spec: ablate ${sets[*]} (up to $t s)"
  timeout -k 30 "$t" deno run -A scripts/ablate.ts "$file" --out "runs/gpu/$study" --jobs "$JOBS" \
    --heartbeat 60 "${sets[@]}" "${reuse[@]}" > "runs/gpu/$study.log" 2>&1
  rc=$?
  tail -4 "runs/gpu/$study.log" | tee -a "$OUT/summary.txt"
  step "$spec: exit $rc"
  [ -f "runs/gpu/$study/report.md" ] && cat "runs/gpu/$study/report.md" >> "$OUT/summary.txt"
done

step "pack"
tar czf "$OUT/studies.tar.gz" --exclude='*.safetensors' -C runs gpu
teachers=$(cd runs && find gpu/main -path '*/seed0/train/teacher_backbone.safetensors' 2>/dev/null)
[ -n "$teachers" ] && (cd runs && tar czf "$OUT/teachers.tar.gz" $teachers)
ls -la "$OUT" | tee -a "$OUT/summary.txt"
step "done"
