"""Shared fixtures. The suite runs under plain pytest (1 rank) and under mpiexec (2-5 ranks);
collective tests run identically on every rank, in the same order."""
import numpy as np
import pytest
from mpi4py import MPI


@pytest.fixture
def comm():
    return MPI.COMM_WORLD


def pytest_report_header(config):
    c = MPI.COMM_WORLD
    return f"MPI ranks: {c.Get_size()} (this is rank {c.Get_rank()}); {MPI.Get_library_version().splitlines()[0]}"


def pytest_configure(config):
    # Under mpiexec every rank runs the suite; only rank 0 prints the progress dots, the
    # others print their failures and their summary line.
    if MPI.COMM_WORLD.Get_rank() > 0:
        config.option.verbose = min(config.option.verbose, -1)


def gather_all(comm, arr):
    """Every rank's array, on every rank (small test data only)."""
    return comm.allgather(np.array(arr))
