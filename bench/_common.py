"""Shared helpers for the PyTorch comparators (the Python twin of bench/common.ts)."""

import ctypes
import re


def summarize(xs):
    """Median, min, max, mean and count of a list of numbers."""
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return {"n": 0, "median": float("nan"), "min": float("nan"), "max": float("nan"),
                "mean": float("nan")}
    m = n // 2
    med = s[m] if n % 2 == 1 else (s[m - 1] + s[m]) / 2
    return {"n": n, "median": med, "min": s[0], "max": s[-1], "mean": sum(s) / n}


def blas_info():
    """(openblas_get_num_threads(), openblas_get_config()) of the OpenBLAS torch loaded, or
    (None, None) when OpenBLAS is not in use. Call after `import torch`."""
    for name in ("libopenblas.so.0", "libopenblas.so", "libopenblas.dylib"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.openblas_get_num_threads.restype = ctypes.c_int
        lib.openblas_get_config.restype = ctypes.c_char_p
        return lib.openblas_get_num_threads(), lib.openblas_get_config().decode()
    return None, None


_LIB_RE = re.compile(r"/lib(torch_cpu|c10|openblas|blas|gomp|mkl)[^/]*\.so")


def loaded_libraries():
    """libtorch / BLAS / OpenMP shared objects mapped into this process (Linux only)."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = set()
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and _LIB_RE.search(parts[5]):
            out.add(parts[5])
    return sorted(out)


def reset_peak_rss():
    """Resets this process's peak RSS (VmHWM) to its current RSS (Linux: /proc/self/clear_refs
    "5"). Returns False where that is not possible (the peak then counts from process start)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib():
    """This process's peak RSS (VmHWM from /proc/self/status) in MiB, or None (not Linux)."""
    return _status_mib("VmHWM")


def rss_mib():
    """This process's current RSS (VmRSS from /proc/self/status) in MiB, or None (not Linux)."""
    return _status_mib("VmRSS")


def _status_mib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None
