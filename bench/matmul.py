"""PyTorch comparator for bench/matmul.ts: a square float32 matmul in eager PyTorch.

Times one call at a time (result freed) after a warm-up, in milliseconds.

Variants (matmul is the one bench/run.ts compares against and the default; matmul_add is
informational, used by bench/threads.ts):
  matmul      c = torch.matmul(a, b); del c
  matmul_add  the matmul followed by d = c + a on its result, both freed (an ATen elementwise
              op, OpenMP-parallel when intra-op threads > 1, right after a BLAS call)

Prints progress on stderr and one JSON line (the same shape as BenchReport in common.ts) on
stdout. Run with Debian's python3-torch: /usr/bin/python3 bench/matmul.py --help
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

VARIANTS = ("matmul", "matmul_add")


def time_once(variant, a, b):
    """Milliseconds for one call of `variant`."""
    t0 = time.perf_counter()
    c = torch.matmul(a, b)
    if variant == "matmul_add":
        d = c + a
        del d
    del c
    return (time.perf_counter() - t0) * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1024, help="matrix side (default 1024)")
    p.add_argument("--reps", type=int, default=50,
                   help="timed calls per variant; the median is reported (default 50)")
    p.add_argument("--warmup", type=int, default=5,
                   help="untimed calls per variant first (default 5)")
    p.add_argument("--threads", default="auto",
                   help="torch intra-op threads; auto keeps the default (default auto)")
    p.add_argument("--variants", default="matmul",
                   help="comma-separated subset of %s (default matmul); run matmul_add in its "
                        "own process to keep its OpenMP work away from the plain matmul's "
                        "timings" % ",".join(VARIANTS))
    args = p.parse_args()
    variants = [v.strip() for v in args.variants.split(",")]
    for v in variants:
        if v not in VARIANTS:
            p.error("unknown variant %s" % v)
    if args.threads != "auto":
        torch.set_num_threads(int(args.threads))

    torch.manual_seed(0)
    n = args.size
    a = torch.randn(n, n, dtype=torch.float32)
    b = torch.randn(n, n, dtype=torch.float32)
    for _ in range(args.warmup):
        for v in variants:
            time_once(v, a, b)
    samples = {v: [] for v in variants}
    for _ in range(args.reps):
        for v in variants:
            samples[v].append(time_once(v, a, b))

    blas_threads, blas_config = blas_info()
    report = {
        "bench": "matmul",
        "side": "pytorch",
        "unit": "ms",
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "threads": {
            "intraOp": torch.get_num_threads(),
            "blas": blas_threads,
            "blasConfig": blas_config,
            "env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                   "OMP_WAIT_POLICY")},
        },
        "libraries": loaded_libraries(),
        "params": {"size": n, "reps": args.reps, "warmup": args.warmup, "dtype": "float32"},
        "samples": samples,
        "primary": "matmul",
    }
    for v in variants:
        s = summarize(samples[v])
        print("[matmul pytorch] %s %dx%d: median %.3f ms (min %.3f, max %.3f, n %d; intra-op %d, "
              "OpenBLAS %s)" % (v, n, n, s["median"], s["min"], s["max"], s["n"],
                                torch.get_num_threads(), blas_threads), file=sys.stderr)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
