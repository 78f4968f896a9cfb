"""Device-array allreduce of ringreduce next to host MPI_Allreduce, N ranks sharing one GPU.

    mpiexec -n 2 python benchmarks/gpu_allreduce.py                # 1, 16, 256 MiB float32
    mpiexec -n 4 python benchmarks/gpu_allreduce.py --markdown docs/gpu-allreduce.md

    # the script's own logic, without a GPU (timings are meaningless there):
    NUMBA_ENABLE_CUDASIM=1 mpiexec -n 2 python benchmarks/gpu_allreduce.py \
        --sizes-mib 0.001 0.004 --warmup 1 --repeat 2

``benchmarks/gpu.py --allreduce-ranks 2 4`` runs it for each rank count after the kernel table.

1. Checks one device allreduce per algorithm (integer-valued float32, where every summation
   order is exact) against a float64 numpy reference on every rank; a failure is reported
   and the script exits 1, untimed.
2. Times, for each size, three ways to sum a float32 vector of that many bytes over the
   ranks, interleaved so drift hits all alike:
   - ``ringreduce``: ``rr.allreduce`` of a device array into a device array (staged through
     pinned host memory, or passed to a CUDA-aware MPI when there is one);
   - ``MPI host``: ``MPI_Allreduce`` of host arrays of the same bytes: the floor this
     process's MPI sets for moving them, with no device in the way;
   - ``MPI + copies``: copy to the host, ``MPI_Allreduce``, copy back: what a caller does by
     hand without device support, one whole copy each way with no overlap.
   One timed call is: barrier, call (which returns once the result is on the device), stop
   the clock. A call's time is the slowest rank's; the table shows the median of --repeat
   calls after --warmup untimed ones, and busbw = bytes / time * 2 (p - 1) / p (nccl-tests).

All ranks use the GPU Numba makes current by default (device 0), so they share it, as
several ranks per GPU do in a test set-up. Needs numba-cuda, mpi4py and numpy; no network.
Exit codes: 0 checks passed (whatever the timings), 1 a check failed, 2 no CUDA device.
"""
import argparse
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI

import ringreduce as rr
from ringreduce.transport.device import cuda_aware
from ringreduce.kernels import cuda as ck

COMM = MPI.COMM_WORLD
RANK, P = COMM.Get_rank(), COMM.Get_size()


def check(cuda, n):
    """Failures of one device allreduce per algorithm, as text (empty: all passed)."""
    failures = []
    ranks = [((np.arange(n) * 7 + r * 13) % 17).astype(np.float32) for r in range(P)]
    expected = np.sum(np.stack(ranks).astype(np.float64), axis=0).astype(np.float32)
    for alg in ("auto", "ring", "tree", "rhd", "doubling"):
        got = rr.allreduce(cuda.to_device(ranks[RANK]), "sum", algorithm=alg,
                           segment_bytes=max(4, n // 7 * 4)).copy_to_host()
        if not np.array_equal(got, expected):
            bad = np.flatnonzero(got != expected)
            failures.append(f"rank {RANK}: {alg}: {bad.size} of {n} elements wrong, first at "
                            f"{bad[0]}: {got[bad[0]]} != {expected[bad[0]]}")
    return failures


def size_text(nbytes):
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift:
            return f"{nbytes / (1 << shift):g} {unit}"
    return f"{nbytes} B"


def time_calls(calls, warmup, repeat):
    """Median seconds per call of each named call, the slowest rank's time per call."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times = {name: np.empty(repeat) for name in calls}
    for i in range(repeat):
        for name, fn in calls.items():
            COMM.Barrier()
            t0 = time.perf_counter()
            fn()
            times[name][i] = time.perf_counter() - t0
    medians = {}
    for name, t in times.items():
        COMM.Allreduce(MPI.IN_PLACE, t, op=MPI.MAX)
        medians[name] = statistics.median(t)
    return medians


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mib", type=float, nargs="+", default=[1, 16, 256],
                        help="vector sizes in MiB of float32 (default 1 16 256)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--algorithm", default="auto", help="ringreduce's algorithm")
    parser.add_argument("--segment-bytes", type=int, help="ringreduce's segment size "
                        "(default RINGREDUCE_SEGMENT_BYTES, 1 MiB)")
    parser.add_argument("--check-n", type=int, default=1001, help="elements per check")
    parser.add_argument("--markdown", help="append the table to this file (rank 0)")
    parser.add_argument("--blocks", type=int, default=0,
                        help="force the kernels' grid (default 0: from the device)")
    parser.add_argument("--threads", type=int, default=0,
                        help="force the block size (default 0: 256)")
    args = parser.parse_args()

    if not ck.cuda_available():
        if RANK == 0:
            print(f"benchmarks/gpu_allreduce.py: {ck.unavailable_reason()}", file=sys.stderr)
        return 2
    ck.set_launch_config(args.blocks or None, args.threads or None)
    from numba import config, cuda

    simulator = bool(config.ENABLE_CUDASIM)
    name = getattr(cuda.get_current_device(), "name", "CUDA simulator")
    name = name.decode() if isinstance(name, bytes) else name
    aware = cuda_aware()

    failures = check(cuda, args.check_n)
    everyone = COMM.allgather(failures)
    if any(everyone):
        if RANK == 0:
            for f in (f for fs in everyone for f in fs):
                print(f"  FAIL {f}", file=sys.stderr)
            print("checks FAILED; no timings", file=sys.stderr)
        return 1

    header = (f"{P} ranks on one {name}{' (simulator: timings are meaningless)' if simulator else ''}; "
              f"{MPI.Get_library_version().splitlines()[0].strip()}; transport: "
              f"{'CUDA-aware MPI' if aware else 'staged through pinned host memory'}; "
              f"algorithm {args.algorithm}, segment {args.segment_bytes or 'default'}; "
              f"median of {args.repeat} after {args.warmup} warm-up calls")
    columns = ["size", "ringreduce (ms)", "busbw (GB/s)", "MPI host (ms)", "busbw (GB/s)",
               "ringreduce / MPI host", "MPI + copies (ms)"]
    lines = ["", header, "", "| " + " | ".join(columns) + " |",
             "|" + "---:|" * len(columns)]
    if RANK == 0:
        print("\n".join(lines), flush=True)
    rng = np.random.default_rng(RANK)
    for mib in args.sizes_mib:
        n = max(1, int(mib * 2**20) // 4)
        x_host = rng.standard_normal(n).astype(np.float32)
        out_host = np.empty_like(x_host)
        x_dev = cuda.to_device(x_host)
        out_dev = cuda.device_array(n, np.float32)
        staging = cuda.pinned_array(n, np.float32)
        staged_out = cuda.pinned_array(n, np.float32)

        def by_hand():
            x_dev.copy_to_host(staging)
            COMM.Allreduce(staging, staged_out, op=MPI.SUM)
            out_dev.copy_to_device(staged_out)
            cuda.synchronize()

        med = time_calls({
            "ringreduce": lambda: rr.allreduce(x_dev, "sum", algorithm=args.algorithm,
                                               out=out_dev, segment_bytes=args.segment_bytes),
            "host": lambda: COMM.Allreduce(x_host, out_host, op=MPI.SUM),
            "copies": by_hand,
        }, args.warmup, args.repeat)
        nbytes = n * 4

        def busbw(t):
            return nbytes / t / 1e9 * 2 * (P - 1) / P if t > 0 else 0.0

        row = (f"| {size_text(nbytes)} | {med['ringreduce'] * 1e3:.2f} | "
               f"{busbw(med['ringreduce']):.2f} | {med['host'] * 1e3:.2f} | "
               f"{busbw(med['host']):.2f} | {med['ringreduce'] / med['host']:.2f} | "
               f"{med['copies'] * 1e3:.2f} |")
        lines.append(row)
        if RANK == 0:
            print(row, flush=True)
    if RANK == 0 and args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        print(f"appended to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
