"""Parameter server and pipeline across ranks: each test starts its own ``mpiexec -n N`` jobs.

What must hold, on ``examples/train_mlp.py`` with the small synthetic set of
tests/jobs/test_training_mpi.py (66 samples, global batch 16: the fifth step of each epoch has
2 samples, so some workers or micro-batches get none):

- ``--mode ps`` ends with the parameters of one data-parallel rank (float64, relative
  difference below 1e-10), with 1 server and 1, 2 or 3 workers (with 3, a worker gets no
  sample of the 2-sample step), 2 servers and 2 workers (shards split a layer), with
  Adam's state kept on the servers, and with ``--staleness 0`` given explicitly;
- ``--mode pipeline`` does the same at 2 and 3 stages, with micro-batch counts that do not
  divide the batch (and so leave a micro-batch of the last step empty);
- a memory budget that one rank exceeds is refused with a clear error, and the same budget
  is met by each stage of a 2-stage pipeline, which trains to one rank's parameters;
- impossible set-ups (no worker left, more stages than layers) end every rank with an error
  instead of a hang.

Each job has a timeout and is killed with its whole process group. Under mpiexec these tests
are skipped: they launch their own.
"""
import json
import os
import sys

import numpy as np
import pytest
from mpi4py import MPI

from _jobs import ROOT, mpirun

SMALL = ["--synthetic", "66", "--features", "12", "--hidden", "16,8", "--batch-size", "16",
         "--epochs", "3", "--no-progress", "--max-steps", "9", "--weight-decay", "1e-3"]

pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.Get_size() > 1,
                                reason="starts its own mpiexec jobs; run under plain pytest")


def train(tmp, n, *args, name="run"):
    """One job; returns (rank 0's saved parameters, rank 0's metrics)."""
    params, metrics = os.path.join(tmp, f"{name}.npz"), os.path.join(tmp, f"{name}.json")
    mpirun(n, [*args, "--save-params", params, "--metrics-out", metrics])
    with np.load(params, allow_pickle=False) as z:
        count = sum(k.startswith("param.") for k in z.files)
        saved = [z[f"param.{i}"] for i in range(count)]
    with open(metrics) as fh:
        return saved, json.load(fh)


def assert_close_to(got, ref, tol=1e-10):
    assert len(got) == len(ref)
    for i, (a, b) in enumerate(zip(got, ref)):
        assert a.shape == b.shape, f"parameter {i}: shape {a.shape}, one rank's {b.shape}"
        rel = np.max(np.abs(a - b)) / np.max(np.abs(b))
        assert rel < tol, f"parameter {i}: relative difference {rel:.3g} from one rank"


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """One data-parallel rank, SGD with Nesterov momentum and Adam: the references."""
    tmp = tmp_path_factory.mktemp("one_rank")
    return {"sgd": train(tmp, 1, *SMALL, "--nesterov", name="sgd"),
            "adam": train(tmp, 1, *SMALL, "--optimizer", "adam", "--lr", "0.01", name="adam")}


def check_against(ref, got, metrics, n):
    ref_params, ref_metrics = ref
    assert metrics["ranks"] == n and metrics["steps"] == 9
    assert_close_to(got, ref_params)
    np.testing.assert_allclose(metrics["loss_curve"], ref_metrics["loss_curve"], rtol=1e-10)
    assert metrics["final_test_accuracy"] == ref_metrics["final_test_accuracy"]
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from mlp import MLP
    start = MLP([12, 16, 8, 10], seed=0).parameters()
    assert not np.allclose(got[0], start[0])  # training moved the parameters


@pytest.mark.parametrize("n,servers,optimizer", [(2, 1, "sgd"), (3, 1, "sgd"), (4, 1, "sgd"),
                                                 (4, 2, "sgd"), (3, 2, "adam")])
def test_parameter_server_matches_one_rank(tmp_path, one_rank, n, servers, optimizer):
    opt = ["--nesterov"] if optimizer == "sgd" else ["--optimizer", "adam", "--lr", "0.01"]
    got, m = train(tmp_path, n, *SMALL, *opt, "--mode", "ps", "--servers", str(servers))
    check_against(one_rank[optimizer], got, m, n)
    assert m["servers"] == servers and m["workers"] == n - servers
    roles = [r["role"].split()[0] for r in m["per_rank"]]
    assert roles == ["worker"] * (n - servers) + ["server"] * servers
    # Every timed step has a full batch of 16 except the fifth of each epoch (2 samples),
    # which changes nothing here: a worker pushes and pulls all parameters whatever its slice.
    n_bytes = 434 * 8
    for r, rank in enumerate(m["per_rank"]):
        assert rank["bytes_sent_per_step"] == m["formula_bytes_sent_per_step"][r]
    assert m["per_rank"][0]["bytes_sent_per_step"] == n_bytes
    assert m["per_rank"][0]["bytes_received_per_step"] == n_bytes


def test_parameter_server_with_staleness_0_matches_one_rank(tmp_path, one_rank):
    # --staleness 0 named explicitly is the synchronous server
    # (tests/jobs/test_ps_async_jobs.py has the asynchronous one).
    got, m = train(tmp_path, 3, *SMALL, "--nesterov", "--mode", "ps", "--staleness", "0")
    check_against(one_rank["sgd"], got, m, 3)
    assert m["staleness_bound"] == 0 and m["staleness_observed"] == {"max": 0, "mean": 0.0}


@pytest.mark.parametrize("n,micro", [(2, 4), (3, 3), (3, 1)])
def test_pipeline_matches_one_rank(tmp_path, one_rank, n, micro):
    got, m = train(tmp_path, n, *SMALL, "--nesterov", "--mode", "pipeline",
                   "--micro-batches", str(micro))
    check_against(one_rank["sgd"], got, m, n)
    assert m["micro_batches"] == micro and len(m["stages"]) == n
    # Only activations and their gradients cross: stage 0 of [12, 16, 8, 10] in 3 stages
    # sends 16 values per sample forward; stage 1 sends 8 forward and 16 back.
    if n == 3:
        assert m["stages"] == [[0, 1], [1, 2], [2, 3]]
        samples = (16 * 7 + 2) / 8  # timed steps 1..8: seven full batches and one of 2
        sent = [r["bytes_sent_per_step"] for r in m["per_rank"]]
        assert sent == [samples * 16 * 8, samples * (8 + 16) * 8, samples * 8 * 8]


BIG = ["--synthetic", "66", "--features", "12", "--hidden", "128,128,128", "--batch-size", "16",
       "--epochs", "1", "--no-progress", "--max-steps", "3"]


def test_memory_budget_refuses_one_rank_and_fits_a_pipeline(tmp_path):
    # 36 thousand float64 parameters, with gradients and momentum about 0.85 MiB on one rank;
    # 2 stages hold about half each.
    budget = ["--memory-budget-mb", "0.6"]
    rc, out, err = mpirun(1, [*BIG, *budget], expect_ok=False)
    assert rc != 0
    assert "data parallel on 1 rank(s): each rank needs an estimated 0.8" in err
    assert "over the memory budget of 0.60 MiB" in err
    got, m = train(tmp_path, 2, *BIG, *budget, "--mode", "pipeline", name="pipe")
    ref, _ = train(tmp_path, 1, *BIG, name="one")
    assert_close_to(got, ref)
    rc, out, err = mpirun(2, [*BIG, "--memory-budget-mb", "0.3", "--mode", "pipeline"],
                          expect_ok=False)
    assert rc != 0 and "pipeline of 2 stage(s): stage" in err and "0.30 MiB" in err


@pytest.mark.parametrize("n,args,message", [
    (2, ["--mode", "ps", "--servers", "2"], "needs 1 <= servers <= ranks - 1"),
    (4, ["--mode", "pipeline"], "a pipeline of 4 stages needs at least 4 layers"),
    (2, ["--mode", "ps", "--check-sync"], "does not take --check-sync"),
    (3, ["--mode", "ps", "--memory-budget-mb", "0.01"],
     "parameter server with 1 server(s): server 0 needs an estimated 0.02 MiB"),
])
def test_impossible_setups_fail_on_every_rank(n, args, message):
    rc, out, err = mpirun(n, [*SMALL, *args], expect_ok=False)
    assert rc != 0 and message in err
