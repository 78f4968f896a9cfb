"""Data-parallel training across ranks: each test starts its own ``mpiexec -n N`` jobs.

What must hold, checked on ``examples/train_mlp.py`` with a small synthetic set (66 samples,
global batch 16: five steps per epoch, the last one of 2 samples, so at 3 and 4 ranks some
ranks hold no sample at all in that step):

- N ranks with global batch B end with the parameters of 1 rank with batch B (float64,
  relative difference below 1e-10), N = 2, 3, 4, overlap on and off, with accumulation;
- stopping and resuming is bitwise identical to running straight, at 1 and 2 ranks, from a
  checkpoint taken mid-epoch and from one taken at an epoch boundary, step by step;
- every rank holds bitwise-identical parameters after every step (``--check-sync`` compares
  a digest of all parameters across ranks after each step and fails the run otherwise);
- a NaN or Inf in one rank's gradient: every rank skips that step (or stops) alike.

Each job has a timeout and is killed with its whole process group, so a hang fails the test
instead of stalling the suite. Under mpiexec these tests are skipped: they launch their own.
"""
import json
import os
import re
import sys

import numpy as np
import pytest
from mpi4py import MPI

from _jobs import ROOT, mpirun

SMALL = ["--synthetic", "66", "--features", "12", "--hidden", "16,8", "--batch-size", "16",
         "--epochs", "3", "--no-progress"]

pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.Get_size() > 1,
                                reason="starts its own mpiexec jobs; run under plain pytest")


def train(tmp, n, *extra, name="run"):
    """One training job; returns (rank 0's params, every rank's params, metrics)."""
    params = os.path.join(tmp, f"{name}_{{rank}}.npz")
    metrics = os.path.join(tmp, f"{name}.json")
    mpirun(n, [*SMALL, "--save-params", params, "--metrics-out", metrics, *extra])
    per_rank = []
    for r in range(n):
        with np.load(params.replace("{rank}", str(r)), allow_pickle=False) as z:
            count = sum(k.startswith("param.") for k in z.files)
            per_rank.append([z[f"param.{i}"] for i in range(count)])
    with open(metrics) as fh:
        return per_rank[0], per_rank, json.load(fh)


def assert_all_ranks_equal(per_rank):
    for r, params in enumerate(per_rank[1:], start=1):
        for i, (a, b) in enumerate(zip(params, per_rank[0])):
            assert np.array_equal(a, b), f"rank {r} parameter {i} differs from rank 0's"


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one_rank")
    return train(tmp, 1, "--max-steps", "9", "--weight-decay", "1e-3", "--nesterov")


@pytest.mark.parametrize("n,extra", [
    (2, []),
    (3, []),
    (4, []),
    # Every parameter in its own bucket, all started after backward, and each rank's slice
    # in two micro-batches accumulated under no_sync: still the same global gradient.
    (2, ["--no-overlap", "--bucket-mb", "0.0001", "--grad-accum", "2"]),
    (3, ["--bucket-mb", "0.0005", "--grad-accum", "3"]),
])
def test_n_ranks_match_one_rank(tmp_path, one_rank, n, extra):
    ref, _, ref_metrics = one_rank
    got, per_rank, metrics = train(tmp_path, n, "--max-steps", "9", "--weight-decay", "1e-3",
                                   "--nesterov", "--check-sync", *extra)
    assert metrics["ranks"] == n and metrics["steps"] == 9
    assert metrics["sync_checks"] == 9  # identical on every rank after every step
    assert_all_ranks_equal(per_rank)
    for i, (a, b) in enumerate(zip(got, ref)):
        rel = np.max(np.abs(a - b)) / np.max(np.abs(b))
        assert rel < 1e-10, f"parameter {i}: relative difference {rel:.3g} from one rank"
    # The loss is the global mean, whatever the split; and training moved the parameters.
    np.testing.assert_allclose(metrics["loss_curve"], ref_metrics["loss_curve"], rtol=1e-10)
    assert not np.allclose(ref[0], train_start_params()[0])


def train_start_params():
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from mlp import MLP
    return MLP([12, 16, 8, 10], seed=0).parameters()


@pytest.mark.parametrize("n,optimizer", [(1, "sgd"), (2, "sgd"), (2, "adam")])
def test_resume_is_bitwise_identical(tmp_path, n, optimizer):
    # One run of 10 steps straight, against a chain of three: stop mid-epoch after step 3,
    # resume from there and stop at the epoch boundary after step 5, resume from that to 10.
    # --check-sync records a digest of all parameters after every step, so every step of the
    # chain is compared with the same step of the straight run, bit for bit.
    opt = ["--optimizer", optimizer, "--check-sync"]
    opt += ["--lr", "0.01"] if optimizer == "adam" else []
    straight, _, m_straight = train(tmp_path, n, "--max-steps", "10", *opt, name="straight")
    assert m_straight["steps_per_epoch"] == 5 and len(m_straight["param_digests"]) == 10
    ckpt = ["--checkpoint-dir", str(tmp_path / "ckpt")]
    digests = []
    for stop, resume in ((3, []), (5, ["--resume"]), (10, ["--resume"])):
        resumed, per_rank, m = train(tmp_path, n, "--max-steps", str(stop), *ckpt, *resume,
                                     *opt, name=f"to{stop}")
        assert m["steps"] == stop
        digests += m["param_digests"]
        assert digests == m_straight["param_digests"][:stop], f"differs by step {stop}"
        assert m["loss_curve"] == m_straight["loss_curve"][:stop]
    assert_all_ranks_equal(per_rank)
    for i, (a, b) in enumerate(zip(resumed, straight)):
        assert np.array_equal(a, b), f"parameter {i} differs after resuming"
    assert m["test_accuracy_curve"] == m_straight["test_accuracy_curve"]


@pytest.mark.parametrize("n,inject", [(2, "2:1"), (3, "0:0:inf"), (4, "4:3")])
def test_nonfinite_gradient_is_skipped_on_every_rank(tmp_path, n, inject):
    step = int(inject.split(":")[0])
    params = str(tmp_path / "p_{rank}.npz")
    metrics = str(tmp_path / "m.json")
    _, _, err = mpirun(n, [*SMALL, "--max-steps", "6", "--inject-nonfinite", inject,
                           "--check-sync", "--save-params", params, "--metrics-out", metrics])
    warned = re.findall(rf"rank (\d+): step {step}: the reduced gradient holds NaN or Inf", err)
    assert sorted(map(int, warned)) == list(range(n)), err  # every rank, once each
    with open(metrics) as fh:
        m = json.load(fh)
    assert m["skipped_steps"] == [step] and m["sync_checks"] == 6
    assert all(np.isfinite(v) for v in m["loss_curve"])
    for r in range(n):
        with np.load(params.replace("{rank}", str(r)), allow_pickle=False) as z:
            assert all(np.isfinite(z[k]).all() for k in z.files if k.startswith("param."))


def test_nonfinite_gradient_can_stop_every_rank(tmp_path):
    code, _, err = mpirun(2, [*SMALL, "--max-steps", "6", "--inject-nonfinite", "1:0",
                              "--nonfinite", "error"], expect_ok=False)
    assert code != 0
    assert "step 1: the reduced gradient holds NaN or Inf" in err and "stopping" in err


def test_resume_refuses_a_checkpoint_that_does_not_fit(tmp_path):
    ckpt = tmp_path / "ckpt"
    mpirun(2, [*SMALL, "--max-steps", "2", "--checkpoint-dir", str(ckpt)])
    code, _, err = mpirun(1, [*SMALL, "--checkpoint-dir", str(ckpt), "--resume"],
                          expect_ok=False)
    assert code != 0 and "written with world_size=2, this run has world_size=1" in err
    code, _, err = mpirun(2, [*SMALL, "--hidden", "16,9", "--checkpoint-dir", str(ckpt),
                              "--resume"], expect_ok=False)
    assert code != 0 and "entry 'param.2' is float64(16, 8), this run expects float64(16, 9)" \
        in err
    path = ckpt / "ckpt.npz"
    path.write_bytes(path.read_bytes()[:-100])
    code, _, err = mpirun(2, [*SMALL, "--checkpoint-dir", str(ckpt), "--resume"],
                          expect_ok=False)
    assert code != 0 and "ckpt.npz is truncated or corrupt" in err
    code, _, err = mpirun(2, [*SMALL, "--checkpoint-dir", str(tmp_path / "none"), "--resume"],
                          expect_ok=False)
    assert code != 0 and "ckpt.npz does not exist" in err


# broadcast_parameters and GradSync on their own, at 3 ranks. ``python -m mpi4py`` aborts the
# whole job on an uncaught exception, so a failed assert on one rank cannot hang the others.
LIBRARY_CHECK = r"""
import os

import numpy as np
from mpi4py import MPI
from ringreduce.training import GradSync, broadcast_parameters

comm = MPI.COMM_WORLD
r, p = comm.Get_rank(), comm.Get_size()

a = [np.full((3, 4), float(r)), np.arange(5, dtype=np.float32) * (r + 1)]
broadcast_parameters(a, root=1)
assert np.all(a[0] == 1.0) and np.array_equal(a[1], np.arange(5, dtype=np.float32) * 2), a

b = [np.zeros(4 if r != 2 else 5)]
try:
    broadcast_parameters(b)
except ValueError as e:
    assert "ranks [2]" in str(e), e
    if r == 2:
        assert "rank 2 holds [float64(5,)], root 0 holds [float64(4,)]" in str(e), e
else:
    raise AssertionError("a shape mismatch was not reported")

# A root that differs between ranks, or that one rank gets wrong, raises on every rank.
for roots in ([0, 0, 1], [0, 3, 0], [0, "1", 0]):
    try:
        broadcast_parameters([np.zeros(2)], root=roots[r])
    except ValueError as e:
        assert "ranks passed different roots" in str(e), e
    else:
        raise AssertionError(f"roots {roots} were not refused")
try:
    broadcast_parameters([np.zeros(2)], root=p)
except ValueError as e:
    assert f"root must be in [0, {p}) (an int), got {p}" in str(e), e
else:
    raise AssertionError("a root out of range was not refused")

# GradSync's constructor is collective: differing parameters or caps, or one rank's bad
# argument, raise on every rank instead of leaving buckets unmatched.
cases = [
    (lambda: GradSync([np.zeros(2), np.zeros(4 if r == 2 else 3)]),
     "parameter 1 is float64(3,) on rank 0 and float64(4,) on rank 2"),
    (lambda: GradSync([np.zeros(2)] * (3 if r == 1 else 2)),
     "rank 0 has 2 and rank 1 has 3"),
    (lambda: GradSync([np.zeros(2)], bucket_cap_bytes=64 if r else 128),
     "different bucket_cap_bytes: rank 0 128, rank 1 64"),
    (lambda: GradSync([np.zeros(2)], bucket_cap_bytes=0 if r == 1 else 64),
     "bucket_cap_bytes must be an int >= 1, got 0" if r == 1
     else "GradSync rejected the input on another rank (rank 1"),
]
for make, message in cases:
    try:
        make()
    except ValueError as e:
        assert message in str(e), (message, str(e))
    else:
        raise AssertionError(f"not refused: {message}")

params = [np.zeros((7, 3)), np.zeros(3), np.zeros((3, 2)), np.zeros(2)]
for overlap in (True, False):
    sync = GradSync(params, bucket_cap_bytes=80, overlap=overlap)
    assert sync.num_buckets == 3
    rng = np.random.default_rng([r, overlap])
    for step in range(3):
        local = [rng.standard_normal(q.shape) for q in params]
        extra = [rng.standard_normal(q.shape) for q in params]
        sync.zero_grad()
        with sync.no_sync():  # a first micro-batch, accumulated without communication
            for i in reversed(range(4)):
                sync.grads[i][...] += extra[i]
                sync.mark_ready(i)
        for i in reversed(range(4)):
            sync.grads[i][...] += local[i]
            sync.mark_ready(i)
        assert sync.wait()
        for i in range(4):
            ref = np.empty_like(local[i])
            comm.Allreduce(local[i] + extra[i], ref)
            np.testing.assert_allclose(sync.grads[i], ref, rtol=1e-12)
            everyone = comm.allgather(sync.grads[i].copy())
            assert all(np.array_equal(g, everyone[0]) for g in everyone)
    sync.grads[1][0] = np.nan if r == p - 1 else 0.0
    assert sync.wait() is False  # one rank's NaN: every rank sees it
with open(os.path.join(os.environ["TRAINING_CHECK_DIR"], f"ok.{r}"), "w") as fh:
    fh.write("ok")
"""


def test_broadcast_and_gradsync_across_ranks(tmp_path, monkeypatch):
    # Each rank leaves a file when all its checks passed (mpiexec may interleave the ranks'
    # output streams mid-line, so printed lines are no reliable signal).
    monkeypatch.setenv("TRAINING_CHECK_DIR", str(tmp_path))
    mpirun(3, ["-m", "mpi4py", "-c", LIBRARY_CHECK], script=None)
    assert sorted(os.listdir(tmp_path)) == ["ok.0", "ok.1", "ok.2"]


def test_bundled_digits_and_user_data(tmp_path):
    metrics = str(tmp_path / "digits.json")
    mpirun(2, ["--epochs", "1", "--max-steps", "3", "--no-progress", "--metrics-out", metrics])
    with open(metrics) as fh:
        m = json.load(fh)
    # 1797 images, a fixed fifth held out; 1438 / 64 -> 23 steps per epoch.
    assert m["data"] == "digits(8x8)" and m["model"] == [64, 128, 10]
    assert m["steps_per_epoch"] == 23 and m["steps"] == 3

    rng = np.random.default_rng(0)
    data = tmp_path / "mine.npz"
    np.savez(data, x_train=rng.standard_normal((40, 2, 3)), y_train=rng.integers(0, 3, 40),
             x_test=rng.standard_normal((8, 2, 3)), y_test=rng.integers(0, 3, 8))
    metrics = str(tmp_path / "mine.json")
    mpirun(2, ["--data", str(data), "--hidden", "5", "--batch-size", "8", "--epochs", "2",
               "--no-progress", "--metrics-out", metrics])
    with open(metrics) as fh:
        m = json.load(fh)
    assert m["model"] == [6, 5, 3] and m["steps"] == 10 and len(m["test_accuracy_curve"]) == 2

    bad = tmp_path / "bad.npz"
    np.savez(bad, inputs=np.zeros((4, 2)))
    code, _, err = mpirun(2, ["--data", str(bad), "--no-progress"], expect_ok=False)
    assert code != 0 and "expected arrays x_train, y_train, x_test, y_test or x, y; found " \
        "['inputs']" in err
