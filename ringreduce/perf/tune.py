"""``python -m ringreduce.tune``: measure where "auto" should switch algorithms on this
machine, at this rank count and MPI library, and write it to a tuning file.

    mpiexec -n 8 python -m ringreduce.tune --out tuning.json
    export RINGREDUCE_TUNING_FILE=$PWD/tuning.json     # every rank must read the same file

The built-in rule (``core/choose.py``) was measured on one 2-core machine; a cluster's
nodes and network move its crossovers. For every size from 32 KiB (smaller payloads ride in
the header pass, which is not tuned) to ``--max-bytes``, doubling, this times rhd, the ring
and, when every rank shares one node, shm, interleaved as ``ringreduce.perf.bench`` times
them (median of ``--iters`` calls, each the slowest rank's time), and derives the three
thresholds of a :class:`~ringreduce.core.choose.Rule` (:func:`thresholds`). Rank 0 writes
them as one entry, keyed by (MPI library, rank count, one node), into the file, keeping the
file's entries for other keys, so one file can hold a rule per rank count. "auto" then runs
the tuned rule wherever an entry matches (host memory; device arrays keep the built-in
rule), and the built-in one elsewhere. Tune once per rank count you run, with
``--max-bytes`` at least your largest fused bucket (beyond the largest size measured, the
choice made there continues).
"""
import argparse
import json
import os
import sys

import numpy as np
from mpi4py import MPI

from ..algorithms.shm import on_one_node
from ..collectives.allreduce import allreduce
from ..config import TUNING_KEYS, load_tuning, tuning_entries
from ..core.choose import AUTO_SMALL_BYTES, Rule
from ..transport.comm import get_comm, mpi_library
from .bench import parse_size, time_interleaved


def thresholds(times, one_node):
    """The :class:`Rule` measured ``times`` give: ``{size: {algorithm: seconds}}`` for
    sizes that double from one to the next. shm serves the longest run of consecutive sizes
    where it was the fastest of all (one node only; none: ``shm_min == shm_max``); the ring
    from the smallest size from which it was at least as fast as rhd at every larger size.
    A bound that falls after the largest size is the size one doubling beyond it."""
    sizes = sorted(times)
    beyond = 2 * sizes[-1]
    shm_min = shm_max = 0
    if one_node:
        run, longest = [], []
        for n in sizes:
            t = times[n]
            if t["shm"] < min(t["rhd"], t["ring"]):
                run.append(n)
                if len(run) > len(longest):
                    longest = list(run)
            else:
                run = []
        if longest:
            shm_min = longest[0]
            after = [n for n in sizes if n > longest[-1]]
            shm_max = after[0] if after else beyond
    ring = beyond
    for n in reversed(sizes):
        if times[n]["ring"] > times[n]["rhd"]:
            break
        ring = n
    return Rule(shm_min, shm_max, ring)


def measure(comm, sizes, iters, one_node):
    """``{size: {algorithm: seconds}}`` (collective)."""
    algs = ("rhd", "ring") + (("shm",) if one_node else ())
    out = {}
    rng = np.random.default_rng(comm.Get_rank())
    for n in (sizes[-1], sizes[0]):  # windows and scratch buffers made before any timing
        x = np.ones(n // 4, np.float32)
        for a in algs:
            allreduce(x, algorithm=a, comm=comm, out=x)
    for n in sizes:
        x = rng.standard_normal(n // 4).astype(np.float32)
        y = np.empty_like(x)
        runs = {a: (lambda a=a: allreduce(x, algorithm=a, comm=comm, out=y)) for a in algs}
        k = iters or (30 if n <= 4 << 20 else 8)
        out[n] = time_interleaved(comm, runs, k, max(2, k // 10))
    return out


def write(path, entry):
    """Put ``entry`` into the tuning file at ``path`` (made if missing), replacing the entry
    of the same (library, ranks, one_node)."""
    entries = []
    if os.path.exists(path):
        data = load_tuning(path)
        tuning_entries(data, path)  # a file that is not a tuning file is refused, not replaced
        key = [entry[k] for k in TUNING_KEYS[:3]]
        entries = [e for e in data["entries"] if [e[k] for k in TUNING_KEYS[:3]] != key]
    entries.append(entry)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump({"ringreduce_tuning": 1, "entries": entries}, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m ringreduce.tune",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="ringreduce-tuning.json",
                    help="tuning file to write or update (default: ringreduce-tuning.json)")
    ap.add_argument("--max-bytes", type=parse_size, default=parse_size("64M"),
                    help="largest size to measure (default 64M)")
    ap.add_argument("--iters", type=int, default=0,
                    help="timed calls per size and algorithm (default 30, 8 above 4 MiB)")
    args = ap.parse_args(argv)
    comm = MPI.COMM_WORLD
    p, rank = comm.Get_size(), comm.Get_rank()
    if p < 2:
        print("python -m ringreduce.tune: run it under mpiexec with the rank count to tune "
              "for (at least 2)", file=sys.stderr)
        return 2
    if args.max_bytes < AUTO_SMALL_BYTES:
        ap.error(f"--max-bytes must be at least {AUTO_SMALL_BYTES} (32K)")
    one_node = on_one_node(get_comm(comm))
    sizes = []
    n = AUTO_SMALL_BYTES
    while n <= args.max_bytes:
        sizes.append(n)
        n *= 2
    times = measure(comm, sizes, args.iters, one_node)
    rule = thresholds(times, one_node)
    if rank == 0:
        entry = dict(zip(TUNING_KEYS, (mpi_library(), p, one_node) + tuple(rule)))
        entry["measured_us"] = {str(n): {a: round(t * 1e6, 2) for a, t in ts.items()}
                                for n, ts in times.items()}
        write(args.out, entry)
        print(f"# ringreduce.tune: {p} ranks, {mpi_library()}, "
              f"{'one node' if one_node else 'several nodes'}")
        algs = list(times[sizes[0]])
        print(f"{'bytes':>10} " + " ".join(f"{a + ' (us)':>11}" for a in algs))
        for n in sizes:
            print(f"{n:>10} " + " ".join(f"{times[n][a] * 1e6:>11.1f}" for a in algs))
        shm = (f"shm from {rule.shm_min} to {rule.shm_max} bytes (exclusive)"
               if rule.shm_max > rule.shm_min else "no shm")
        print(f"# auto: {shm}; rhd below {rule.ring} bytes, the ring from there")
        print(f"# written to {args.out}; use it with: export RINGREDUCE_TUNING_FILE="
              f"{os.path.abspath(args.out)}")
    return 0
