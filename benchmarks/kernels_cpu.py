"""Numba loops vs numpy ufuncs for the local reduction ``dst op= src``, per op and dtype.

    python benchmarks/kernels_cpu.py [--sizes 1M 16M] [--repeat 20] [--markdown FILE]

Prints the median GB/s of each (bytes of dst read + src read + dst written over time) and
which one is faster; ``kernels/cpu.py`` serves each case with the faster one
(``NUMPY_FASTER``). Both are timed interleaved, on the same arrays, after a warm-up call that
also compiles the Numba kernel.
"""
import argparse
import time

import numpy as np

from ringreduce.kernels.cpu import reduce_kernel

DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint32", "float32", "float64",
          "complex64", "complex128"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["1M", "16M"])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--markdown")
    args = ap.parse_args()
    sizes = [int(s[:-1]) << (20 if s.endswith("M") else 10) if s[-1] in "MK" else int(s)
             for s in args.sizes]
    rows = []
    print(f"{'op':>5} {'dtype':>10} {'bytes':>9} {'numba GB/s':>10} {'numpy GB/s':>10} faster")
    for nbytes in sizes:
        for dt in DTYPES:
            dtype = np.dtype(dt)
            for op in ("sum", "prod", "min", "max"):
                if dtype.kind == "c" and op in ("min", "max"):
                    continue
                n = nbytes // dtype.itemsize
                dst = np.ones(n, dtype)
                src = np.ones(n, dtype)
                kn, kp = reduce_kernel(op, dtype, "numba"), reduce_kernel(op, dtype, "numpy")
                kn(dst, src)
                kp(dst, src)
                tn, tp = [], []
                for _ in range(args.repeat):
                    t0 = time.perf_counter(); kn(dst, src); tn.append(time.perf_counter() - t0)
                    t0 = time.perf_counter(); kp(dst, src); tp.append(time.perf_counter() - t0)
                gn = 3 * nbytes / np.median(tn) / 1e9
                gp = 3 * nbytes / np.median(tp) / 1e9
                faster = "numba" if gn >= gp else "numpy"
                rows.append((op, dt, nbytes, gn, gp, faster))
                print(f"{op:>5} {dt:>10} {nbytes:>9} {gn:>10.2f} {gp:>10.2f} {faster}", flush=True)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n| op | dtype | bytes | numba GB/s | numpy GB/s | faster |\n|---|---|---|---|---|---|\n")
            for r in rows:
                f.write(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.2f} | {r[5]} |\n")


if __name__ == "__main__":
    main()
