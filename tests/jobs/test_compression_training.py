"""examples/train_mlp.py with compressed gradients (float32 sent as bf16 or fp16, with and
without error feedback) trains the bundled digits to the same >= 97% test accuracy as
uncompressed float32, at 2 ranks, every rank ending with bitwise-identical parameters."""
import json
import os

import numpy as np
import pytest
from mpi4py import MPI

from _jobs import mpirun

pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.Get_size() > 1,
                                reason="starts its own mpiexec jobs; run under plain pytest")


@pytest.mark.parametrize("extra", [["--compression", "bf16", "--error-feedback"],
                                   ["--compression", "fp16"]])
def test_compressed_training_reaches_the_accuracy(tmp_path, extra):
    metrics = tmp_path / "m.json"
    params = str(tmp_path / "p_{rank}.npz")
    mpirun(2, ["--epochs", "8", "--dtype", "float32", "--no-progress", "--metrics-out",
               str(metrics), "--save-params", params, *extra])
    with open(metrics) as fh:
        acc = json.load(fh)["final_test_accuracy"]
    assert acc >= 0.97, acc
    ranks = [np.load(params.replace("{rank}", str(r))) for r in range(2)]
    for k in ranks[0].files:
        assert np.array_equal(ranks[0][k], ranks[1][k]), k


def test_compression_needs_float32(tmp_path):
    rc, out, err = mpirun(2, ["--epochs", "1", "--dtype", "float64", "--no-progress",
                              "--compression", "bf16"], expect_ok=False)
    assert rc != 0 and "compression='bf16' takes float32 data, got float64" in out + err
