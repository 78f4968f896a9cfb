"""The asynchronous parameter server with a staleness bound (``--mode ps --staleness K``),
across ranks; each test starts its own ``mpiexec`` jobs, so they are skipped under mpiexec.

With K = 1 and 2, at 3 ranks (1 server) and 4 ranks (2 servers), on the bundled digits, the
job ends with exit 0, the staleness the metrics report never exceeds K, the bytes per step
equal the formula, and the test accuracy is close to the synchronous run's (asynchronous
training does not equal one rank, so the check is a margin, not equality). Bad values of
``--staleness`` stop every rank with a clear message, and a non-finite gradient, which only a
server sees, ends the whole job instead of leaving the workers waiting. The synchronous
``--staleness 0`` against one rank is in tests/jobs/test_ps_pipeline_mpi.py, next to the other
such checks; the protocol itself, simulated in one process, in tests/unit/test_ps_async.py.
"""
import json
import os

import pytest
from mpi4py import MPI

from _jobs import mpirun


across_ranks = pytest.mark.skipif(MPI.COMM_WORLD.Get_size() > 1,
                                  reason="starts its own mpiexec jobs; run under plain pytest")

# The bundled digits (1437 training images), global batch 64: 23 steps per epoch.
DIGITS = ["--epochs", "3", "--no-progress", "--mode", "ps"]


def run_ps(tmp, n, servers, staleness):
    path = os.path.join(tmp, f"ps_{n}_{servers}_{staleness}.json")
    mpirun(n, [*DIGITS, "--servers", str(servers), "--staleness", str(staleness),
               "--metrics-out", path])
    with open(path) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def synchronous(tmp_path_factory):
    """The synchronous parameter server on the same data: the accuracy to compare with."""
    return run_ps(tmp_path_factory.mktemp("sync"), 3, 1, 0)


@across_ranks
@pytest.mark.parametrize("n,servers", [(3, 1), (4, 2)])
@pytest.mark.parametrize("staleness", [1, 2])
def test_asynchronous_server_keeps_the_bound_and_trains(tmp_path, synchronous, n, servers,
                                                         staleness):
    m = run_ps(tmp_path, n, servers, staleness)  # exit 0 within the timeout: no hang
    assert m["staleness_bound"] == staleness and synchronous["staleness_bound"] == 0
    assert synchronous["staleness_observed"] == {"max": 0, "mean": 0.0}
    seen = m["staleness_observed"]
    assert 0 <= seen["max"] <= staleness and 0 <= seen["mean"] <= seen["max"]
    assert m["steps"] == synchronous["steps"] == 69 and m["workers"] == n - servers
    # Stale gradients cost some accuracy, but on digits in 3 epochs little: the margin is
    # wide, it only catches training that went wrong (the synchronous run reaches about 0.95).
    assert m["final_test_accuracy"] >= synchronous["final_test_accuracy"] - 0.1
    assert m["loss_curve"][-1] < 0.5 * m["loss_curve"][0]
    # The bytes counted equal the formula, the servers' 8-byte versions included.
    for r, rank in enumerate(m["per_rank"]):
        assert rank["bytes_sent_per_step"] == m["formula_bytes_sent_per_step"][r]
    n_bytes = 9610 * 8  # [64, 128, 10] in float64
    assert m["per_rank"][0]["bytes_received_per_step"] == n_bytes + 8 * servers


@across_ranks
@pytest.mark.parametrize("n,args,message", [
    (3, ["--mode", "ps", "--staleness", "-1"], "--staleness must be >= 0 (0: synchronous), got -1"),
    (2, ["--staleness", "2", "--mode", "dp"], "--staleness is for --mode ps only, got --mode dp"),
])
def test_bad_staleness_fails_on_every_rank(n, args, message):
    rc, out, err = mpirun(n, [*DIGITS[:3], *args], expect_ok=False)
    assert rc != 0 and err.count(message) == n


@across_ranks
@pytest.mark.parametrize("staleness", [0, 1])
def test_a_non_finite_gradient_ends_the_job(staleness):
    # Only a server sees the gradient; the workers waiting for its reply must not hang.
    rc, out, err = mpirun(3, ["--epochs", "1", "--no-progress", "--mode", "ps", "--lr", "1e300",
                              "--staleness", str(staleness)], expect_ok=False)
    assert rc != 0 and "rank 2: error: parameter server 0: step" in err
    assert "gradient holds NaN or Inf" in err
