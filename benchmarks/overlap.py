"""Does allreduce_async overlap the caller's compute? Same work, sequential vs overlapped.

    OPENBLAS_NUM_THREADS=1 mpiexec -n 2 python benchmarks/overlap.py [--mib 16] [--matmul 384]

Compute is a loop of float64 matrix products (numpy releases the GIL); communication is an
``allreduce_async`` of ``--mib`` MiB of float32 plus ``wait()``. The loop length is calibrated
on rank 0 so compute alone takes about as long as communication alone, the case where overlap
matters most. Reports, as medians over ``--iters`` (slowest rank):
compute alone, communication alone, sequential (compute, then communicate) and overlapped
(submit, compute, wait), and ``overlapped / max(compute, communication)``: 1.0 is perfect
overlap, ``(compute + comm) / max`` is none.
"""
import argparse
import time

import numpy as np
from mpi4py import MPI

import ringreduce as rr
from ringreduce.perf.bench import time_interleaved


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=float, default=16)
    ap.add_argument("--matmul", type=int, default=384, help="matrix size of the compute loop")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--markdown")
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    rank, p = comm.Get_rank(), comm.Get_size()
    rr.init()
    x = np.ones(int(args.mib * (1 << 20)) // 4, np.float32)
    a = np.random.default_rng(rank).standard_normal((args.matmul, args.matmul))

    def compute(reps):
        b = a
        for _ in range(reps):
            b = a @ b
            b /= np.abs(b).max()
        return b

    def communicate():
        rr.allreduce_async(x, name="overlap").wait()

    for _ in range(3):
        communicate()
    # calibrate: reps so that compute alone ~ communication alone
    t0 = time.perf_counter()
    for _ in range(3):
        communicate()
    t_comm = (time.perf_counter() - t0) / 3
    t0 = time.perf_counter()
    compute(5)
    per = (time.perf_counter() - t0) / 5
    reps = comm.bcast(max(1, int(round(t_comm / per))))

    def overlapped():
        h = rr.allreduce_async(x, name="overlap")
        compute(reps)
        h.wait()

    runs = {"compute alone": lambda: compute(reps), "communication alone": communicate,
            "sequential": lambda: (compute(reps), communicate()), "overlapped": overlapped}
    med = time_interleaved(comm, runs, args.iters, warmup=0)
    if rank == 0:
        longer = max(med["compute alone"], med["communication alone"])
        title = (f"{p} ranks, allreduce_async of {args.mib:g} MiB float32, compute = {reps} "
                 f"products of {args.matmul}x{args.matmul} float64, median of {args.iters}")
        print(title)
        for k, t in med.items():
            print(f"{k:22} {t * 1e3:9.2f} ms  {t / longer:5.2f} x max(compute, comm)")
        if args.markdown:
            with open(args.markdown, "a") as f:
                f.write(f"\n{title}\n\n| run | time (ms) | / max(compute, communication) |\n"
                        "|---|---:|---:|\n" + "".join(
                            f"| {k} | {t * 1e3:.2f} | {t / longer:.2f} |\n" for k, t in med.items()))


if __name__ == "__main__":
    main()
