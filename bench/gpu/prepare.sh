#!/usr/bin/env bash
# Prepares what bench/gpu/run.sh needs on a GPU machine without network, in the git-ignored
# folder .carry/ of the checkout: Deno (xz-compressed) and a Deno cache holding the npm
# dependency (imagescript) and the compiled modules. Run here (with network), then pass
# `carry: [".carry"]` to the device call. Usage: bash bench/gpu/prepare.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .carry
deno_bin="$(readlink -f "$(command -v deno)")"
if [ ! -f .carry/deno.xz ] || [ "$deno_bin" -nt .carry/deno.xz ]; then
  xz -T0 -6 -c "$deno_bin" > .carry/deno.xz.tmp && mv .carry/deno.xz.tmp .carry/deno.xz
fi
export DENO_DIR="$PWD/.carry/deno_dir"
deno cache mod.ts native/setup.ts bench/gpu/compare.ts bench/train_step.ts tests/cuda/cuda_test.ts \
  tests/torch/*_test.ts tests/nn/*_test.ts
du -sh .carry/deno.xz .carry/deno_dir
