"""A process's first collective: from before ``import ringreduce`` to the end of its first
call, against native ``MPI_Allreduce`` (from before ``from mpi4py import MPI``) in the same
jobs.

    python benchmarks/startup.py [-n 2] [--jobs 5] [--sizes 8 64K 4M] [--markdown FILE]

Two spans per job: from the script's first line (numpy's import included), and from the end
of numpy's import: the second is "within so long of import" for the ringreduce variants.
Each job is a fresh ``mpiexec -n N python -c ...`` (nothing warm but the OS's file cache and
Numba's on-disk kernel cache, as for a user's second run), jobs alternate between the variants,
and each figure is the median over jobs of the slowest rank's time. The variants:

- ``native``: ``from mpi4py import MPI`` (MPI_Init included), one ``Allreduce`` of float32;
- ``rr.allreduce``: ``import ringreduce``, one ``rr.allreduce`` of the same array (the library
  imports mpi4py and initialises MPI inside this);
- ``rr.grouped``: ``rr.grouped_allreduce`` of that array cut into 8 tensors;
- ``rr.async``: ``rr.allreduce_async(...).wait()`` (starts the background engine);
- ``rr.bf16``: ``rr.allreduce(x, compression="bf16")`` (served by the half-precision
  kernels' numpy twins: neither Numba nor ml_dtypes loads, ``kernels/cpu.py`` ``HALF``);
- ``import only``: ``import ringreduce`` alone (mpi4py is not imported yet).

A rank's time ends before the allreduce that reports it.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from ringreduce.perf.bench import parse_size  # noqa: E402

PROLOGUE = "import time; t0 = time.perf_counter()\nimport numpy as np\nt1 = time.perf_counter()\n"
EPILOGUE = """
t2 = time.perf_counter()
from mpi4py import MPI
slowest = MPI.COMM_WORLD.allreduce(t2 - t0, op=MPI.MAX)
after_numpy = MPI.COMM_WORLD.allreduce(t2 - t1, op=MPI.MAX)
if MPI.COMM_WORLD.Get_rank() == 0:
    print("RESULT", slowest, after_numpy, flush=True)
"""
BODIES = {
    "native": "from mpi4py import MPI\nx = np.ones(NELEMS, np.float32)\n"
              "y = np.empty_like(x)\nMPI.COMM_WORLD.Allreduce(x, y)\n",
    "rr.allreduce": "import ringreduce as rr\nx = np.ones(NELEMS, np.float32)\n"
                    "rr.allreduce(x)\n",
    "rr.grouped": "import ringreduce as rr\n"
                  "xs = np.array_split(np.ones(NELEMS, np.float32), 8)\nrr.grouped_allreduce(xs)\n",
    "rr.async": "import ringreduce as rr\nx = np.ones(NELEMS, np.float32)\n"
                "rr.allreduce_async(x).wait()\n",
    "rr.bf16": "import ringreduce as rr\nx = np.ones(NELEMS, np.float32)\n"
               "rr.allreduce(x, compression='bf16')\n",
    "import only": "import ringreduce as rr\n",
}


def one_job(n, variant, elems):
    code = PROLOGUE + BODIES[variant].replace("NELEMS", str(elems)) + EPILOGUE
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    out = subprocess.run(["mpiexec", "-n", str(n), sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"{variant} job failed ({out.returncode}):\n{out.stderr[-3000:]}")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT"))
    return tuple(float(v) for v in line.split()[1:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=2, help="ranks per job")
    ap.add_argument("--jobs", type=int, default=5, help="jobs per variant and size")
    ap.add_argument("--sizes", type=parse_size, nargs="+", default=[8, 65536, 4 << 20],
                    help="bytes of float32 per collective")
    ap.add_argument("--variants", nargs="+", default=list(BODIES), choices=list(BODIES))
    ap.add_argument("--markdown", metavar="FILE")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    rows = []
    for nbytes in args.sizes:
        elems = max(1, nbytes // 4)
        times = {v: [] for v in args.variants}
        for _ in range(args.jobs):
            for v in args.variants:  # interleaved: a slow spell hits every variant
                times[v].append(one_job(args.n, v, elems))
        med = {v: statistics.median(a for a, _ in t) for v, t in times.items()}
        after = {v: statistics.median(b for _, b in t) for v, t in times.items()}
        rows.append((nbytes, med, after))
        base = med.get("native")
        print(f"{nbytes} B, {args.n} ranks, median of {args.jobs} jobs "
              "(whole span; after numpy's import):")
        for v in args.variants:
            ratio = f"  {med[v] / base:5.2f}x native" if base else ""
            print(f"  {v:13s} {med[v] * 1e3:8.1f} ms {after[v] * 1e3:8.1f} ms{ratio}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([{"bytes": b, "median_s": m, "after_numpy_s": a} for b, m, a in rows], fh,
                      indent=1)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("| size | " + " | ".join(args.variants) + " |\n")
            fh.write("|---|" + "---:|" * len(args.variants) + "\n")
            for nbytes, med, after in rows:
                fh.write(f"| {nbytes} B | " + " | ".join(
                    f"{med[v] * 1e3:.0f} ms ({after[v] * 1e3:.0f})" for v in args.variants)
                    + " |\n")


if __name__ == "__main__":
    main()
