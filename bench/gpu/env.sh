#!/usr/bin/env bash
# Sourced by bench/gpu/run.sh and bench/gpu/studies.sh on a GPU machine without network: puts the
# carried Deno on PATH with its carried cache (.carry/, made by bench/gpu/prepare.sh), installs the
# carried Fashion-MNIST files where lib/data/fashion_mnist.ts looks for them when the machine has
# none. Source it from the repository root.
if ! command -v deno >/dev/null; then
  xz -dc .carry/deno.xz > /tmp/deno && chmod +x /tmp/deno && export PATH="/tmp:$PATH"
fi
export DENO_DIR="$PWD/.carry/deno_dir" DENO_NO_UPDATE_CHECK=1
fm=/usr/share/datasets/fashion-mnist
if [ -d .carry/fashion-mnist ] && [ ! -e "$fm/train-images-idx3-ubyte" ] &&
  [ ! -e "$fm/train-images-idx3-ubyte.gz" ]; then
  mkdir -p "$fm.tmp"
  for f in .carry/fashion-mnist/*.xz; do xz -dc "$f" > "$fm.tmp/$(basename "$f" .xz)"; done
  rm -rf "$fm" && mv "$fm.tmp" "$fm"
fi
