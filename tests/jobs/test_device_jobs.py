"""Device arrays in processes of their own, where this process cannot show it: Numba picks the
CUDA simulator or the real driver when it is first imported (NUMBA_ENABLE_CUDASIM), and
tests/conftest.py has already picked the simulator here unless told otherwise.

- On a machine with a GPU, the device cases of the collective tests (the ``memory`` fixture's
  "device", tests/collective/) run on it, at 1 and 2 ranks; everywhere they run in the
  simulator as part of the collective runs.
- Without numba-cuda the host path works and device arrays are refused politely; importing
  ringreduce and host calls never load numba-cuda.
- benchmarks/gpu.py, what a GPU machine runs, works under the simulator.

Every job has a timeout and is killed with its whole process group, so a hang fails the
test instead of stalling the suite. Under mpiexec these tests skip: they start their own jobs.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest
from mpi4py import MPI

from _jobs import ROOT, run_job

pytestmark = [
    pytest.mark.skipif(MPI.COMM_WORLD.Get_size() > 1,
                       reason="starts its own mpiexec jobs; run under plain pytest"),
    pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs mpiexec on PATH"),
]


def child_env(simulator, **extra):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    for name in ("NUMBA_ENABLE_CUDASIM", "RINGREDUCE_CUDA_AWARE"):
        env.pop(name, None)
    env["NUMBA_ENABLE_CUDASIM"] = "1" if simulator else "0"
    env.update(extra)
    return env


def run(cmd, env, timeout=120):
    """``_jobs.run_job`` in the checkout: (returncode, stdout + stderr)."""
    rc, out, err = run_job(cmd, env=env, timeout=timeout)
    return rc, out + err


def real_gpu_present():
    """Asked in a child process, so this process never initialises the CUDA driver."""
    probe = ("import numba, sys\n"
             "from numba import cuda\n"
             "sys.exit(0 if cuda.is_available() and not numba.config.ENABLE_CUDASIM else 1)\n")
    try:
        done = subprocess.run([sys.executable, "-c", probe], env=child_env(False),
                              capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


HAVE_GPU = real_gpu_present()


@pytest.mark.gpu
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not HAVE_GPU, reason="needs a CUDA GPU; the collective runs test the same "
                                         "cases in the CUDA simulator without one")
@pytest.mark.parametrize("ranks", [1, 2])
def test_collective_device_cases_on_the_gpu(ranks):
    # Ranks share the GPU. The first run compiles every kernel on every rank: allow for it.
    cmd = ["mpiexec", "-n", str(ranks), sys.executable, "-m", "pytest", "-q", "--with-mpi",
           "-p", "no:cacheprovider", "tests/collective", "-k", "device or same_choices"]
    rc, out = run(cmd, child_env(False), timeout=900)
    assert rc == 0, out[-8000:]
    assert re.search(r"\d+ passed", out) and " failed" not in out, out[-4000:]


NO_NUMBA_CUDA = """
import sys
sys.modules["numba.cuda"] = None  # what "from numba import cuda" sees without numba-cuda
import numpy as np
import ringreduce as rr

class FakeDeviceArray:
    # Enough of the interface to be taken for a device array.
    __cuda_array_interface__ = {"shape": (3,), "typestr": "<f4", "data": (0, False),
                                "version": 3, "strides": None}

assert np.array_equal(rr.allreduce(np.arange(3.0)), np.arange(3.0))
for call in (lambda: rr.allreduce(FakeDeviceArray()),
             lambda: rr.grouped_allreduce([FakeDeviceArray()])):
    try:
        call()
    except RuntimeError as error:
        assert "numba-cuda is not installed" in str(error), str(error)
    else:
        raise AssertionError("a device array without numba-cuda raised nothing")
print("refused politely")
"""


def test_without_numba_cuda_the_host_path_works_and_device_arrays_are_refused():
    rc, out = run([sys.executable, "-c", NO_NUMBA_CUDA], child_env(False))
    assert rc == 0 and "refused politely" in out, out[-4000:]


def test_importing_and_host_allreduce_do_not_load_numba_cuda():
    # numba-cuda takes seconds to import: the host path must never pay for it.
    code = ("import sys, numpy as np, ringreduce as rr\n"
            "rr.allreduce(np.ones(3)); rr.grouped_allreduce([np.ones(2), np.ones(3)])\n"
            "assert 'numba.cuda' not in sys.modules, 'numba.cuda was imported'\n"
            "print('host only')\n")
    rc, out = run([sys.executable, "-c", code], child_env(False))
    assert rc == 0 and "host only" in out, out[-4000:]


def test_gpu_benchmark_script_runs_under_the_simulator():
    """benchmarks/gpu.py is what a GPU machine runs, often once and offline: its checks, its
    tables and its allreduce jobs at 2 and 4 ranks must work before it gets there."""
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), "--size-mib", "0.01",
           "--check-n", "300", "--blocks", "2", "--threads", "32", "--warmup", "1",
           "--repeat", "2", "--allreduce-ranks", "2", "4", "--allreduce-sizes-mib", "0.001",
           "0.004", "--allreduce-repeat", "2", "--seed", "1"]
    rc, out = run(cmd, child_env(True), timeout=240)
    assert rc == 0, out[-8000:]
    checks = re.search(r"all (\d+) checks passed", out)
    assert checks and int(checks.group(1)) > 50, out[-4000:]
    assert "| reduce sum |" in out and "| sgd momentum |" in out, out[-4000:]
    for ranks in (2, 4):
        assert f"{ranks} ranks on one CUDA simulator" in out, out[-4000:]
    assert out.count("| 4.09375 KiB |") == 2, out[-4000:]
