"""A job that makes and frees communicators again and again (a split per evaluation, per
epoch, per group of workers): what the library made for each must go with it. Before it did,
such a loop with one 1 MiB allreduce per communicator ran out of MPICH's communicator ids
after 511 rounds ("Too many communicators"), 2045 with 8-byte ones; this runs 700 rounds of
the larger kind, at 2 ranks, as one ``mpiexec`` job of its own (under plain pytest only).
"""
import os
import shutil

import pytest

from _jobs import mpirun

ROUNDS = 700

JOB = """\
import sys
import numpy as np
from mpi4py import MPI
import ringreduce as rr

world = MPI.COMM_WORLD
x = np.ones(1 << 18, np.float32)  # 1 MiB: shm's window and node split, the ring's scratch
for i in range(int(sys.argv[1])):
    sub = world.Split(0, world.rank)
    got = rr.allreduce(x, comm=sub)
    assert np.array_equal(got, np.full(x.size, world.size)), i
    sub.Free()
print(f"RANK {world.rank} DONE", flush=True)
"""


def test_a_loop_of_split_allreduce_free_does_not_run_out_of_communicators(tmp_path):
    if any(k in os.environ for k in ("PMI_RANK", "PMI_FD", "OMPI_COMM_WORLD_RANK")):
        pytest.skip("starts its own MPI job; run it under plain pytest, not mpiexec")
    if shutil.which("mpiexec") is None:
        pytest.skip("needs mpiexec on PATH")
    job = tmp_path / "loop.py"
    job.write_text(JOB)
    rc, out, err = mpirun(2, [str(ROUNDS)], script=job, expect_ok=False)
    assert rc == 0, f"the loop failed ({rc}):\n{out[-3000:]}\n{err[-3000:]}"
    assert sorted(ln for ln in out.splitlines() if ln.endswith("DONE")) == [
        "RANK 0 DONE", "RANK 1 DONE"]
