"""Allreduce benchmark in the style of nccl-tests, with native MPI_Allreduce in the same run.

    mpiexec -n 2 python -m ringreduce.perf.bench -b 8 -e 64M -f 4
    mpiexec -n 4 python -m ringreduce.perf.bench --sizes 1M 16M -a native ring rhd ring:262144

For each size every algorithm is timed in turn, interleaved (native, ring, tree, ... then again),
so drift on a shared machine hits all of them alike. One timed call is: barrier, call, stop the
clock (OSU's method); a call's time is the slowest rank's, and the table shows the median over
``--iters`` calls after ``--warmup`` untimed ones. ``algbw = bytes / time`` and
``busbw = algbw * 2 (p - 1) / p`` (nccl-tests' definitions, GB = 1e9). ``#wrong`` comes from a
separate check pass on integer-valued data, where every summation order is exact: it counts
elements that differ from the exact answer, summed over ranks. ``vs native`` is the median
time over native's median time: below 1 is faster than MPI. ``memcpy`` is one local copy of
the same bytes, timed in the same run: the memory-bandwidth floor on one box. ``auto`` is
timed settled: with it among the algorithms, a size first runs as many untimed rounds as its
race between shm and the ring can take (``core/adapt.py``), as a training loop does in its
first steps; ``--unsettled`` times it from its first call, the race's calls of the loser
among the timed.

An algorithm may carry a segment size: ``ring:262144`` is the ring with 256 KiB segments; a
compression: ``ring+bf16`` sends the float32 data as bfloat16 (``+fp16``: float16, scaled);
and a dtype of its own for the same element count: ``ring@bfloat16`` reduces bfloat16 arrays
beside the others' ``--dtype`` ones (so ``-d float32 -a ring ring@bfloat16`` compares the two
at equal counts). Native MPI has no bfloat16: its column is skipped for ``-d bfloat16``.
"""
import argparse
import json
import sys
import time

import ml_dtypes
import numpy as np
from mpi4py import MPI

from ..algorithms import ALGORITHMS
from ..collectives.allreduce import allreduce
from ..core.adapt import most_calls
from ..core.tables import COMPRESSIONS

UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
         "G": 1 << 30, "GB": 1 << 30}
MPI_OPS = {"sum": MPI.SUM, "min": MPI.MIN, "max": MPI.MAX, "prod": MPI.PROD}


def parse_size(text):
    t = text.strip().upper().replace("I", "")
    num = t.rstrip("KMGB")
    unit = t[len(num):]
    if not num or unit not in UNITS:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected a number with an optional "
                                         "unit B, K, M or G (powers of 1024), e.g. 64K")
    return int(float(num) * UNITS[unit])


def size_list(args):
    if args.sizes:
        return args.sizes
    sizes, s = [], args.minbytes
    while s <= args.maxbytes:
        sizes.append(s)
        s *= args.stepfactor
    return sizes


def parse_dtype(text):
    """numpy's dtype names, and bfloat16 (ml_dtypes)."""
    try:
        return np.dtype(ml_dtypes.bfloat16) if text == "bfloat16" else np.dtype(text)
    except TypeError:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r}") from None


class Spec:
    """``NAME[:SEGMENT][+COMPRESSION][@DTYPE]`` (see the module docstring)."""

    def __init__(self, text):
        self.text = text
        rest, _, dtype = text.partition("@")
        rest, _, comp = rest.partition("+")
        name, _, seg = rest.partition(":")
        if name != "native" and name not in ALGORITHMS and name != "auto":
            raise argparse.ArgumentTypeError(
                f"unknown algorithm {name!r}; expected native, auto or one of "
                f"{', '.join(ALGORITHMS)}")
        if comp and comp not in COMPRESSIONS:
            raise argparse.ArgumentTypeError(f"unknown compression {comp!r} in {text!r}; "
                                             "expected bf16 or fp16")
        self.name, self.seg = name, (parse_size(seg) if seg else None)
        self.compression = comp or None
        self.dtype = parse_dtype(dtype) if dtype else None


def mpi_library():
    """The MPI library and its version, as "MPICH 5.0.2" or "Open MPI 5.0.11"."""
    name, version = MPI.get_vendor()
    return f"{name} {'.'.join(map(str, version))}"


def make_runner(spec, comm, x, out, op):
    if spec.name == "native":
        mpi_op = MPI_OPS.get(op, MPI.SUM)
        return lambda: comm.Allreduce(x, out, op=mpi_op)
    return lambda: allreduce(x, op, algorithm=spec.name, comm=comm, out=out,
                             segment_bytes=spec.seg, compression=spec.compression)


def count_wrong(spec, comm, n, dtype, op):
    """Elements that differ from the exact answer, summed over ranks (integer-valued data)."""
    rank, p = comm.Get_rank(), comm.Get_size()
    i = np.arange(n)
    x = ((i * 7 + rank * 13) % 17).astype(dtype)
    if op == "prod":
        x = (1 + (i + rank) % 2).astype(dtype)
    ranks = [((i * 7 + r * 13) % 17) if op != "prod" else (1 + (i + r) % 2) for r in range(p)]
    ref = {"sum": np.sum, "min": np.min, "max": np.max, "prod": np.prod}[op](
        np.stack(ranks).astype(np.float64), axis=0) if n else np.zeros(0)
    out = np.empty_like(x)
    make_runner(spec, comm, x, out, op)()
    wrong = np.array([np.count_nonzero(out.astype(np.float64) != ref)], np.int64)
    comm.Allreduce(MPI.IN_PLACE, wrong, op=MPI.SUM)
    return int(wrong[0])


def time_interleaved(comm, runs, iters, warmup):
    """Median seconds of each callable in ``runs`` (a dict), timed in turn so drift hits all
    alike: ``warmup`` untimed rounds, then ``iters`` rounds of barrier, call, stop the clock.
    Each round runs them in a new random order, the same on every rank (a fixed seed): in a
    fixed order, or one rotated each round, the call that followed native MPI's was 5-10%
    slower at 1-4 MiB, whichever it was. A call lasts as long as its slowest rank.
    Collective: every rank passes the same keys."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times = {k: np.empty(iters) for k in runs}
    keys = list(runs)
    order = np.random.default_rng(0)
    for it in range(iters):
        for i in order.permutation(len(keys)):
            k = keys[i]
            comm.Barrier()
            t0 = time.perf_counter()
            runs[k]()
            times[k][it] = time.perf_counter() - t0
    med = {}
    for k, t in times.items():
        comm.Allreduce(MPI.IN_PLACE, t, op=MPI.MAX)
        med[k] = float(np.median(t))
    return med


def time_size(algs, comm, nbytes, dtype, op, iters, warmup, settle=True):
    """Median seconds of each algorithm at ``nbytes``. With ``settle`` and an "auto" among
    them, at least as many untimed rounds as its race can take (``core/adapt.py``), so the
    timed calls are those of the settled choice, as in a training loop past its first few
    dozen steps, and the race ran between the same other calls as the timed ones (a race of
    back-to-back calls kept shm at 16 MiB, which then took 2.5x as long per byte between
    the others'); without, the race's calls of both candidates are among the timed ones."""
    n = nbytes // dtype.itemsize
    rng = np.random.default_rng(comm.Get_rank())
    data = rng.standard_normal(n)
    # One output buffer per dtype for all: with one each, the same algorithm ran 5-17%
    # slower into one buffer than into another (placement in memory), which read as a
    # difference between algorithms.
    bufs = {}
    for d in {dtype} | {s.dtype for s in algs if s.dtype is not None}:
        bufs[d] = (data.astype(d), np.empty(n, d))
    runners = {s.text: make_runner(s, comm, *bufs[s.dtype or dtype], op) for s in algs}
    if settle and any(s.name == "auto" for s in algs):
        warmup = max(warmup, most_calls())
    return n, time_interleaved(comm, runners, iters, warmup)


def time_memcpy(nbytes, iters):
    src = np.ones(max(nbytes, 1), np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    t = []
    for _ in range(iters):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        t.append(time.perf_counter() - t0)
    return float(np.median(t))


def main(argv=None, prog="python -m ringreduce.perf.bench"):
    ap = argparse.ArgumentParser(prog=prog,
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("-b", "--minbytes", type=parse_size, default=8)
    ap.add_argument("-e", "--maxbytes", type=parse_size, default=64 << 20)
    ap.add_argument("-f", "--stepfactor", type=int, default=8)
    ap.add_argument("--sizes", type=parse_size, nargs="+", help="explicit sizes (overrides -b/-e/-f)")
    ap.add_argument("-d", "--dtype", type=parse_dtype, default=np.dtype("float32"),
                    help="numpy dtype name, or bfloat16")
    ap.add_argument("-o", "--op", default="sum", choices=sorted(MPI_OPS))
    ap.add_argument("-a", "--algorithms", type=Spec, nargs="+",
                    default=[Spec(a) for a in ("native", "auto", "ring", "tree", "rhd", "doubling")],
                    help="native, auto, ring, tree, rhd, doubling; NAME:SEGMENT sets a segment size")
    ap.add_argument("-n", "--iters", type=int, default=None,
                    help="timed calls per size (default: 200 up to 64 KiB, 50 to 4 MiB, then 10)")
    ap.add_argument("-w", "--warmup", type=int, default=None,
                    help="untimed calls per size (default: a tenth of --iters, at least 2)")
    ap.add_argument("--unsettled", action="store_true",
                    help="time auto from its first call, its race's calls among the timed")
    ap.add_argument("-c", "--check", type=int, default=1, help="1: run the #wrong check pass")
    ap.add_argument("--memcpy", action="store_true", help="add a local memcpy column")
    ap.add_argument("--json", help="write the results as JSON to this file (rank 0)")
    ap.add_argument("--markdown", help="append the table as markdown to this file (rank 0)")
    args = ap.parse_args(argv)
    dtype = args.dtype
    comm = MPI.COMM_WORLD
    rank, p = comm.Get_rank(), comm.Get_size()
    algs = args.algorithms
    if dtype == ml_dtypes.bfloat16:  # MPI has no bfloat16 reduction
        algs = [s for s in algs if s.name != "native"]
    specs = [s.text for s in algs]
    has_native = "native" in specs

    # Two header lines, as nccl-tests prints: the algorithm over its group of columns.
    lead = f"{'size(B)':>11} {'count':>10} {'type':>8} {'redop':>5}"
    top, head = " " * len(lead), lead
    for spec in specs:
        cols = f" | {'time(us)':>9} {'algbw':>6} {'busbw':>6} {'#wrong':>6}"
        if has_native and spec != "native":
            cols += f" {'/native':>7}"
        top += " | " + spec.center(len(cols) - 3)
        head += cols
    if args.memcpy:
        top += " | " + "memcpy".center(9)
        head += f" | {'time(us)':>9}"
    rows = []
    if rank == 0:
        print(f"# {prog}: {p} ranks, {mpi_library()}, "
              f"dtype {dtype}, op {args.op}")
        print(top)
        print(head, flush=True)
    for nbytes in size_list(args):
        nbytes -= nbytes % dtype.itemsize
        iters = args.iters or (200 if nbytes <= 64 << 10 else 50 if nbytes <= 4 << 20 else 10)
        warmup = args.warmup if args.warmup is not None else max(2, iters // 10)
        n, med = time_size(algs, comm, nbytes, dtype, args.op, iters, warmup,
                           not args.unsettled)
        wrong = {s.text: (count_wrong(s, comm, n, s.dtype or dtype, args.op)
                          if args.check else -1) for s in algs}
        mc = time_memcpy(nbytes, iters) if args.memcpy else None
        row = {"bytes": nbytes, "count": n, "type": str(dtype), "op": args.op, "ranks": p,
               "results": {}}
        line = f"{nbytes:>11} {n:>10} {str(dtype):>8} {args.op:>5}"
        for spec in specs:
            t = med[spec]
            algbw = nbytes / t / 1e9 if t > 0 else 0.0
            busbw = algbw * 2 * (p - 1) / p
            line += f" | {t * 1e6:>9.1f} {algbw:>6.2f} {busbw:>6.2f} {wrong[spec]:>6}"
            res = {"time_us": t * 1e6, "algbw": algbw, "busbw": busbw, "wrong": wrong[spec]}
            if has_native and spec != "native":
                ratio = t / med["native"]
                line += f" {ratio:>7.2f}"
                res["vs_native"] = ratio
            row["results"][spec] = res
        if mc is not None:
            line += f" | {mc * 1e6:>9.1f}"
            row["memcpy_us"] = mc * 1e6
        rows.append(row)
        if rank == 0:
            print(line, flush=True)
    if rank == 0 and args.json:
        with open(args.json, "w") as f:
            json.dump({"ranks": p, "mpi": mpi_library(), "dtype": str(dtype), "op": args.op,
                       "rows": rows}, f, indent=1)
    if rank == 0 and args.markdown:
        with open(args.markdown, "a") as f:
            f.write(markdown_table(rows, specs, p, dtype, args.op, has_native, args.memcpy))
    return 0


def markdown_table(rows, specs, p, dtype, op, has_native, memcpy):
    cols = ["size (B)", "count"]
    for spec in specs:
        cols += [f"{spec} time (us)", f"{spec} busbw (GB/s)"]
        if has_native and spec != "native":
            cols.append(f"{spec} / native")
    cols.append("#wrong (all)")
    if memcpy:
        cols.append("memcpy (us)")
    out = [f"\n{p} ranks, {mpi_library()}, {dtype}, {op}\n", "| " + " | ".join(cols) + " |",
           "|" + "---|" * len(cols)]
    for r in rows:
        cells = [str(r["bytes"]), str(r["count"])]
        for spec in specs:
            res = r["results"][spec]
            cells += [f"{res['time_us']:.1f}", f"{res['busbw']:.2f}"]
            if has_native and spec != "native":
                cells.append(f"{res['vs_native']:.2f}")
        cells.append(str(sum(max(0, res["wrong"]) for res in r["results"].values())))
        if memcpy:
            cells.append(f"{r['memcpy_us']:.1f}")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
