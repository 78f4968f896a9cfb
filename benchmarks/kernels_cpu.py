"""Numba loops vs numpy ufuncs for the local reduction ``dst op= src``, per op and dtype; then
the half-precision kernels (bfloat16, float16) against float32 and numpy/ml_dtypes.

    python benchmarks/kernels_cpu.py [--sizes 1M 16M] [--repeat 20] [--runs 3] [--markdown FILE]
    python benchmarks/kernels_cpu.py --half-only --runs 5     # the half-precision table only

First table: the median GB/s of each (bytes of dst read + src read + dst written over time)
and which one is faster; ``kernels/cpu.py`` serves numpy's ufunc (no JIT at a process's first
call) but where Numba's loop is reliably faster or numpy's bits depend on memory layout
(``NUMBA_SERVES``). Both are timed
interleaved, on the same arrays, after a warm-up call that also compiles the Numba kernel.

Second table ("Half-precision kernels" in docs/benchmarks.md): ratios, each the median over
``--runs`` rounds of per-round medians, every variant of a round timed interleaved on the same
arrays of random normal values, each timed call with its arrays in cache:

- time / float32's, same elements: the half ``sum`` kernel's time over the float32 Numba sum
  of as many elements (what a collective on half data saves or pays per element);
- GB/s / float32's, same bytes: its bandwidth over float32's on arrays of as many bytes;
- speed-up over astype: ``(dst.astype(float32) + src.astype(float32)).astype(dtype)`` written
  back into dst, the numpy/ml_dtypes way of getting the same bits, over the kernel;
- speed-up over the ufunc: ``np.add(dst, src, out=dst)`` on the half dtype (numpy's float16
  loop, ml_dtypes' bfloat16 one) over the kernel;
- compress / decompress: float32 to the half type and back, ``astype`` over the kernel;
- numpy twins / Numba: the time of ``kernels/half_np.py``'s numpy twin of the sum, compress
  and decompress kernels (the same bits, no Numba; what serves a process's first
  half-precision calls) over the Numba kernel's.
"""
import argparse
import time

import numpy as np

from ringreduce.kernels.cpu import compress_kernel, decompress_kernel, reduce_kernel
from ringreduce.kernels.loops import nb_sum
from ringreduce.kernels.half import BFLOAT16

DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint32", "float32", "float64",
          "complex64", "complex128", "float16", BFLOAT16]
HALVES = {"bfloat16": BFLOAT16, "float16": np.dtype(np.float16)}


def parse_size(s):
    return int(s[:-1]) << (20 if s.endswith("M") else 10) if s[-1] in "MK" else int(s)


def interleaved(cases, repeat):
    """Median seconds of each zero-argument callable, timed in turn ``repeat`` times. Each
    timed call follows an untimed one of the same callable, so that every case is timed with
    its own arrays in cache, whatever the case before it evicted (an astype path's
    temporaries evict a 1 MiB case's arrays, which would time its next call from memory)."""
    times = {name: [] for name in cases}
    for _ in range(repeat):
        for name, f in cases.items():
            f()
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def numba_vs_numpy(sizes, repeat):
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
                t = interleaved({"numba": lambda: kn(dst, src), "numpy": lambda: kp(dst, src)},
                                repeat)
                gn, gp = 3 * nbytes / t["numba"] / 1e9, 3 * nbytes / t["numpy"] / 1e9
                faster = "numba" if gn >= gp else "numpy"
                rows.append((op, dtype.name, nbytes, gn, gp, faster))
                print(f"{op:>5} {dtype.name:>10} {nbytes:>9} {gn:>10.2f} {gp:>10.2f} {faster}",
                      flush=True)
    return rows


def half_round(name, nbytes, repeat, rng):
    """One round of the half-precision comparison: {column: ratio}."""
    dtype = HALVES[name]
    n = nbytes // 2
    a = rng.standard_normal(n).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    f32 = np.float32
    wide_a, wide_b = a.astype(f32), b.astype(f32)        # float32, as many elements
    byte_a, byte_b = wide_a[:n // 2].copy(), wide_b[:n // 2].copy()  # float32, as many bytes
    kernel, twin = reduce_kernel("sum", dtype, "numba"), reduce_kernel("sum", dtype, "numpy")
    compress, decompress = compress_kernel(dtype, "numba"), decompress_kernel(dtype, "numba")
    twin_compress, twin_decompress = compress_kernel(dtype, "numpy"), decompress_kernel(dtype,
                                                                                        "numpy")
    wire, back = np.empty(n, dtype), np.empty(n, f32)

    def astype_sum():
        a[...] = (a.astype(f32) + b.astype(f32)).astype(dtype)

    def astype_compress():
        wire[...] = wide_a.astype(dtype)

    def astype_decompress():
        back[...] = wire.astype(f32)

    with np.errstate(all="ignore"):
        t = interleaved({
            "half": lambda: kernel(a, b), "f32 elements": lambda: nb_sum(wide_a, wide_b),
            "f32 bytes": lambda: nb_sum(byte_a, byte_b), "astype": astype_sum,
            "ufunc": lambda: np.add(a, b, out=a), "twin": lambda: twin(a, b),
            "compress": lambda: compress(wire, wide_a), "astype compress": astype_compress,
            "decompress": lambda: decompress(back, wire), "astype decompress": astype_decompress,
            "twin compress": lambda: twin_compress(wire, wide_a),
            "twin decompress": lambda: twin_decompress(back, wire),
        }, repeat)
    return {"time / float32's, same elements": t["half"] / t["f32 elements"],
            "GB/s / float32's, same bytes": t["f32 bytes"] / t["half"],
            "speed-up over astype": t["astype"] / t["half"],
            "speed-up over the ufunc": t["ufunc"] / t["half"],
            "compress, speed-up over astype": t["astype compress"] / t["compress"],
            "decompress, speed-up over astype": t["astype decompress"] / t["decompress"],
            "numpy twins / Numba: sum": t["twin"] / t["half"],
            "compress": t["twin compress"] / t["compress"],
            "decompress": t["twin decompress"] / t["decompress"]}


def half_table(sizes, repeat, runs):
    rng = np.random.default_rng(0)
    rows = []
    for nbytes in sizes:
        for name in HALVES:
            rounds = [half_round(name, nbytes, repeat, rng) for _ in range(runs)]
            ratios = {key: float(np.median([r[key] for r in rounds])) for key in rounds[0]}
            rows.append((name, nbytes, ratios))
            print(name, nbytes, "  ".join(f"{k}: {v:.2f}" for k, v in ratios.items()),
                  flush=True)
    return rows


def size_name(nbytes):
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


def write_markdown(path, rows, half_rows):
    with open(path, "a") as f:
        if rows:
            f.write("\n| op | dtype | bytes | numba GB/s | numpy GB/s | faster |\n"
                    "|---|---|---|---|---|---|\n")
            for r in rows:
                f.write(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.2f} | {r[5]} |\n")
        if half_rows:
            keys = list(half_rows[0][2])
            f.write("\n| dtype | size | " + " | ".join(keys) + " |\n|---|---|"
                    + "---:|" * len(keys) + "\n")
            for name, nbytes, ratios in half_rows:
                f.write(f"| {name} | {size_name(nbytes)} | "
                        + " | ".join(f"{ratios[k]:.2f}" for k in keys) + " |\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["1M", "16M"])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3, help="rounds of the half-precision table")
    ap.add_argument("--half-only", action="store_true")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes]
    rows = [] if args.half_only else numba_vs_numpy(sizes, args.repeat)
    half_rows = half_table(sizes, args.repeat, args.runs)
    if args.markdown:
        write_markdown(args.markdown, rows, half_rows)


if __name__ == "__main__":
    main()
