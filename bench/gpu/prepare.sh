#!/usr/bin/env bash
# Prepares what bench/gpu/run.sh needs on a GPU machine without network, in the git-ignored
# folder .carry/ of the checkout: Deno (xz-compressed) and its cache directory (module analysis
# only: imagescript, imported lazily for JPEG alone, never lands in it, so the GPU machine decodes
# no JPEG; nothing run there needs one); with --data also Fashion-MNIST (the four IDX
# files, xz-compressed: 26 MB) for bench/gpu/studies.sh. Run here (with network, after `deno task
# setup`, which installs Fashion-MNIST), then pass `carry: [".carry"]` to the device call; the
# checkout plus .carry/ must stay under the device's 64 MiB limit (about 58 MiB with --data).
# Usage: bash bench/gpu/prepare.sh [--data]
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .carry
deno_bin="$(readlink -f "$(command -v deno)")"
if [ ! -f .carry/deno.xz ] || [ "$deno_bin" -nt .carry/deno.xz ]; then
  xz -T0 -6 -c "$deno_bin" > .carry/deno.xz.tmp && mv .carry/deno.xz.tmp .carry/deno.xz
fi
export DENO_DIR="$PWD/.carry/deno_dir"
deno cache mod.ts native/setup.ts bench/gpu/compare.ts bench/train_step.ts tests/cuda/cuda_test.ts \
  tests/torch/*_test.ts tests/nn/*_test.ts scripts/*.ts
# the transpiled-module and V8 code caches (~9 MB) are rebuilt on the machine: not carried
rm -rf .carry/deno_dir/gen .carry/deno_dir/v8_code_cache_v2*
if [ "${1:-}" = "--data" ]; then
  mkdir -p .carry/fashion-mnist
  for f in /usr/share/datasets/fashion-mnist/*-ubyte.gz; do
    dst=".carry/fashion-mnist/$(basename "$f" .gz).xz"
    [ -f "$dst" ] || { zcat "$f" | xz -9e -T0 > "$dst.tmp" && mv "$dst.tmp" "$dst"; }
  done
fi
du -sh .carry/*
