"""PyTorch comparator for bench/op_overhead.ts: per-op overhead of eager PyTorch.

A loop of tiny ops -- `c = a + b; del c` on two 4-element float32 tensors -- timed per op in
microseconds. The loop runs inside a function (local-variable lookups), which is the fastest
ordinary way to write it in Python.

Variants (the first is the one bench/run.ts compares against; the other is informational):
  add      c = a + b; del c
  add_fn   c = torch.add(a, b); del c

Prints progress on stderr and one JSON line (the same shape as BenchReport in common.ts) on
stdout. Run with Debian's python3-torch: /usr/bin/python3 bench/op_overhead.py --help
"""

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
from _common import blas_info, loaded_libraries, summarize  # noqa: E402

VARIANTS = ("add", "add_fn")


def time_add(a, b, ops):
    """Microseconds per `c = a + b; del c` over `ops` iterations."""
    t0 = time.perf_counter()
    for _ in range(ops):
        c = a + b
        del c
    return (time.perf_counter() - t0) * 1e6 / ops


def time_add_fn(a, b, ops):
    """Microseconds per `c = torch.add(a, b); del c` over `ops` iterations."""
    add = torch.add
    t0 = time.perf_counter()
    for _ in range(ops):
        c = add(a, b)
        del c
    return (time.perf_counter() - t0) * 1e6 / ops


TIMERS = {"add": time_add, "add_fn": time_add_fn}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", type=int, default=200000, help="adds per timed loop (default 200000)")
    p.add_argument("--reps", type=int, default=5,
                   help="timed loops per variant; the median is reported (default 5)")
    p.add_argument("--warmup", type=int, default=20000,
                   help="untimed adds per variant before timing (default 20000)")
    p.add_argument("--threads", default="auto",
                   help="torch intra-op threads; auto keeps the default (default auto)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated subset of %s (default all)" % ",".join(VARIANTS))
    args = p.parse_args()
    variants = [v.strip() for v in args.variants.split(",")]
    for v in variants:
        if v not in TIMERS:
            p.error("unknown variant %s" % v)
    if args.threads != "auto":
        torch.set_num_threads(int(args.threads))

    a = torch.full([4], 1.0, dtype=torch.float32)
    b = torch.full([4], 2.0, dtype=torch.float32)
    for v in variants:
        TIMERS[v](a, b, args.warmup)
    samples = {v: [] for v in variants}
    for r in range(args.reps):
        for v in variants:
            samples[v].append(TIMERS[v](a, b, args.ops))
        print("[op_overhead pytorch] rep %d/%d: %s" % (
            r + 1, args.reps, ", ".join("%s %.3f us" % (v, samples[v][r]) for v in variants)),
            file=sys.stderr)

    blas_threads, blas_config = blas_info()
    report = {
        "bench": "op_overhead",
        "side": "pytorch",
        "unit": "us",
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "threads": {
            "intraOp": torch.get_num_threads(),
            "blas": blas_threads,
            "blasConfig": blas_config,
            "env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                   "OMP_WAIT_POLICY")},
        },
        "libraries": loaded_libraries(),
        "params": {"ops": args.ops, "reps": args.reps, "warmup": args.warmup, "numel": 4,
                   "dtype": "float32"},
        "samples": samples,
        "primary": "add",
    }
    for v in variants:
        print("[op_overhead pytorch] %s: median %.3f us/op" % (v, summarize(samples[v])["median"]),
              file=sys.stderr)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
