"""Shared set-up of the whole suite: tests/unit (pure, no MPI traffic), tests/collective (every
rank runs them together, in the same order: plain pytest is 1 rank, ``mpiexec -n N python
-m pytest`` is N) and tests/jobs (tests that start their own mpiexec jobs or processes).

Numba decides between the CUDA simulator and the real driver when it is first imported, from
NUMBA_ENABLE_CUDASIM, and conftest.py is loaded before any test module imports numba. So the
simulator is switched on here, for this process and the processes it starts, unless the
variable is already set: ``NUMBA_ENABLE_CUDASIM=0 python tests/run.py`` runs the device
cases of the collective tests on a real GPU. Job tests that need one mode or the other set
the variable in their children's environment themselves.
"""
import os
import sys

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
# The helpers at tests/ top level (_jobs.py, _memory.py, _cuda_sim_checks.py, ...) and the
# example model (examples/mlp.py), importable from every folder of the suite.
for path in (HERE, os.path.join(os.path.dirname(HERE), "examples")):
    if path not in sys.path:
        sys.path.insert(0, path)

import pytest  # noqa: E402
from mpi4py import MPI  # noqa: E402


@pytest.fixture
def comm():
    return MPI.COMM_WORLD


def pytest_report_header(config):
    c = MPI.COMM_WORLD
    return (f"MPI ranks: {c.Get_size()} (this is rank {c.Get_rank()}); "
            f"{MPI.Get_library_version().splitlines()[0]}; "
            f"NUMBA_ENABLE_CUDASIM={os.environ.get('NUMBA_ENABLE_CUDASIM')}")


def pytest_configure(config):
    # Under mpiexec every rank runs the suite; only rank 0 prints the progress dots, the
    # others print their failures and their summary line.
    if MPI.COMM_WORLD.Get_rank() > 0:
        config.option.verbose = min(config.option.verbose, -1)
