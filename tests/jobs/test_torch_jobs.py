"""examples/train_torch.py as users run it, each test its own mpiexec jobs:

- ``dist.init_process_group("ringreduce")`` under mpiexec with no MASTER_ADDR, rank or world
  size set (the example sets nothing);
- DDP on the ringreduce backend at 2 ranks and DistributedOptimizer at 3 reach the parameters
  of one rank (float64, equal slices of a global batch of 48: relative difference < 1e-9);
- stopping at a checkpoint and resuming equals running straight, bit for bit;
- a batch that does not divide by the ranks is refused with a message.
"""
import os

import pytest
from mpi4py import MPI

from _jobs import ROOT, mpirun

torch = pytest.importorskip("torch", reason="torch is not installed (pip install "
                            "'ringreduce[torch]' runs the torch tests)")

TRAIN_TORCH = os.path.join(ROOT, "examples", "train_torch.py")
STEPS = ["--max-steps", "12", "--batch-size", "48", "--no-progress"]

pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.Get_size() > 1,
                                reason="starts its own mpiexec jobs; run under plain pytest")


def train(tmp, n, *extra, name="run"):
    """One job of the example; returns rank 0's final parameters."""
    path = os.path.join(tmp, f"{name}.pt")
    mpirun(n, [*STEPS, "--save-params", path, *extra], script=TRAIN_TORCH, timeout=240)
    return torch.load(path, weights_only=True)


def close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-12, msg=k)


def test_n_ranks_train_to_one_ranks_parameters_and_resume_is_exact(tmp_path):
    one = train(tmp_path, 1, name="one")
    ddp2 = train(tmp_path, 2, name="ddp2")
    close(ddp2, one)
    close(train(tmp_path, 3, "--optimizer-wrapper", name="hvd3"), one)
    # Stop after 5 steps with a checkpoint, resume to 12: the 2-rank run's bits exactly.
    ckpt = str(tmp_path / "ckpt")
    mpirun(2, ["--max-steps", "5", "--batch-size", "48", "--no-progress",
               "--checkpoint-dir", ckpt], script=TRAIN_TORCH, timeout=240)
    resumed = train(tmp_path, 2, "--checkpoint-dir", ckpt, "--resume", name="resumed")
    for k in ddp2:
        assert torch.equal(ddp2[k], resumed[k]), k


def test_example_says_what_is_wrong(tmp_path):
    rc, out, err = mpirun(2, ["--batch-size", "47", "--max-steps", "1"], script=TRAIN_TORCH,
                          expect_ok=False, timeout=240)
    assert rc != 0 and "must divide by the 2 ranks" in err
