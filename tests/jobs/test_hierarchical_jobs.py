"""RINGREDUCE_LOCAL_SIZE in real jobs: pretend nodes from the environment, end to end.

tests/collective/test_hierarchical.py covers the layouts in-process by pre-seeding a split;
here the variable itself is set for the whole job, as a user would, and the job runs
``rr.allreduce(x, algorithm="hierarchical")`` on COMM_WORLD against native MPI_Allreduce and
a float64 reference, checking that every rank gets the same bits. One more job starts half
its ranks with another value, which must make every rank refuse instead of splitting
differently.

Each job is a separate ``mpiexec`` (4 or 5 ranks; oversubscribed on a small machine, which
is slow but fine), so this file runs under plain pytest only.
"""
import json
import os
import re
import shutil
import sys

import pytest

from _jobs import ROOT, run_job

# A job takes a few seconds; the limits are for a hang. Hydra's own MPIEXEC_TIMEOUT comes
# first, so that mpiexec ends a hang itself and cleans up its ranks.
JOB_TIMEOUT_S = 150
MPIEXEC_TIMEOUT_S = 120

JOB = """\
import importlib, json, sys
import numpy as np
from mpi4py import MPI
import ringreduce as rr
from ringreduce.transport.comm import get_comm

comm = MPI.COMM_WORLD
p, rank = comm.size, comm.rank
if sys.argv[1] == "refuse":
    try:
        rr.allreduce(np.ones(4), algorithm="hierarchical")
        print(f"RANK {rank} RAN", flush=True)
    except ValueError as exc:
        print(f"RANK {rank} REFUSED: {exc}", flush=True)
    sys.exit(0)

rr.init()  # the node split of RINGREDUCE_LOCAL_SIZE, for rr.local_rank() too
placement = comm.gather((rr.local_rank(), rr.local_size()))
calls = []
for n, dtype in ((1, np.float64), (1009, np.float32), (40_000, np.float64),
                 (100_003, np.float64), (100_003, np.int32)):
    rng = np.random.default_rng([rank, n])
    if dtype == np.int32:
        x = rng.integers(-1000, 1000, n).astype(dtype)
    else:
        x = (rng.standard_normal(n) * 10 ** rng.uniform(-3, 3, n)).astype(dtype)
    native = np.empty_like(x)
    comm.Allreduce(x, native)
    # "auto" when the job sets RINGREDUCE_ALGORITHM=hierarchical, explicit otherwise.
    got = rr.allreduce(x) if sys.argv[1] == "auto" else rr.allreduce(x, algorithm="hierarchical")
    everyone = [np.asarray(a, np.float64) for a in comm.allgather(x)]
    exact, scale = np.sum(everyone, axis=0), np.sum(np.abs(everyone), axis=0)
    tol = {np.float32: 1e-5, np.float64: 1e-12, np.int32: 0}[dtype]
    close = bool(np.all(np.abs(got - exact) <= tol * scale))
    near_native = bool(np.all(np.abs(got - native) <= 2 * tol * scale))
    same = len(set(comm.allgather(got.tobytes()))) == 1
    calls.append({"n": n, "dtype": np.dtype(dtype).name, "close": close,
                  "near_native": near_native, "same_on_all_ranks": same})
hier = importlib.import_module("ringreduce.transport.topology")
st = hier.levels(get_comm())
everyone = comm.gather(calls)
if rank == 0:
    print("HIER-RESULT " + json.dumps({"node_sizes": list(st.node_sizes),
                                       "local_size": st.local_size,
                                       "placement": placement,
                                       "calls": [c for cs in everyone for c in cs]}), flush=True)
"""


def _mpiexec():
    if any(k in os.environ for k in ("PMI_RANK", "PMI_FD", "OMPI_COMM_WORLD_RANK")):
        pytest.skip("starts its own MPI jobs; run it under plain pytest, not mpiexec")
    path = shutil.which("mpiexec")
    if path is None:
        pytest.skip("needs mpiexec on PATH")
    return path


def _run(cmd, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGREDUCE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    env["MPIEXEC_TIMEOUT"] = str(MPIEXEC_TIMEOUT_S)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    rc, out, err = run_job(cmd, env=env, cwd=tmp_path, timeout=JOB_TIMEOUT_S)
    return rc, out + err


@pytest.mark.parametrize("ranks,local_size,nodes,mode", [
    (4, 1, [1, 1, 1, 1], "explicit"),   # every rank its own node
    (4, 2, [2, 2], "explicit"),
    (5, 2, [2, 2, 1], "auto"),          # uneven, and RINGREDUCE_ALGORITHM=hierarchical
    (5, 3, [3, 2], "explicit"),         # uneven
])
def test_local_size_from_the_environment(ranks, local_size, nodes, mode, tmp_path):
    mpiexec = _mpiexec()
    job = tmp_path / "job.py"
    job.write_text(JOB)
    cmd = [mpiexec, "-n", str(ranks), "-genv", "RINGREDUCE_LOCAL_SIZE", str(local_size)]
    if mode == "auto":
        cmd += ["-genv", "RINGREDUCE_ALGORITHM", "hierarchical"]
    cmd += [sys.executable, "-m", "mpi4py", str(job), mode]
    rc, output = _run(cmd, tmp_path)
    assert rc == 0, f"the job failed ({rc}):\n{output[-5000:]}"
    lines = [ln for ln in output.splitlines() if ln.startswith("HIER-RESULT ")]
    assert len(lines) == 1, f"expected one result line from rank 0, got:\n{output[-5000:]}"
    report = json.loads(lines[0].split(" ", 1)[1])
    assert report["local_size"] == local_size
    assert report["node_sizes"] == nodes
    # rr.local_rank() and rr.local_size() of every rank, in rank order, from the same split.
    assert report["placement"] == [[i, size] for size in nodes for i in range(size)]
    assert len(report["calls"]) == 5 * ranks
    bad = [c for c in report["calls"]
           if not (c["close"] and c["near_native"] and c["same_on_all_ranks"])]
    assert not bad, f"wrong or differing results: {bad}"


def test_ranks_with_different_local_sizes_all_refuse(tmp_path):
    """Half the ranks started with RINGREDUCE_LOCAL_SIZE=1, half with 2: splitting by each
    rank's own value would build inconsistent nodes, so every rank raises instead."""
    mpiexec = _mpiexec()
    job = tmp_path / "job.py"
    job.write_text(JOB)
    run = [sys.executable, "-m", "mpi4py", str(job), "refuse"]
    cmd = ([mpiexec, "-n", "2", "-env", "RINGREDUCE_LOCAL_SIZE", "1"] + run + [":"]
           + ["-n", "2", "-env", "RINGREDUCE_LOCAL_SIZE", "2"] + run)
    rc, output = _run(cmd, tmp_path)
    assert rc == 0, f"the job failed ({rc}):\n{output[-5000:]}"
    # Ranks print at once and their lines can merge, so search the whole output.
    refused = re.findall(r"RANK (\d) REFUSED: ranks were started with different ringreduce "
                         r"settings: RINGREDUCE_LOCAL_SIZE is", output)
    assert sorted(refused) == ["0", "1", "2", "3"], output[-5000:]
    assert not re.search(r"RANK \d RAN", output), output[-5000:]
