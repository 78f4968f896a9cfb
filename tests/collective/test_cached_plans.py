"""Host calls too large to ride in the header take the cached path too (``allreduce._cached``):
from a call's second time on, no ``_Call`` is made, and the result must be what the general
body gives: the exact sum on every rank, into a new array, in place or into a plain ``out``,
of any shape, and a mismatch must still raise on every rank and leave the library usable.
Runs at any rank count."""
import numpy as np
import pytest
from mpi4py import MPI

import ringreduce as rr
from _comms import fresh_comm
from ringreduce.collectives import allreduce as ar_mod
from ringreduce.core.choose import PIGGYBACK_CAP
from ringreduce.errors import MismatchError

P = MPI.COMM_WORLD.Get_size()
RANK = MPI.COMM_WORLD.Get_rank()
# Elements of float64: past the header's cap, an odd count past 1 MiB, a prime.
COUNTS = [PIGGYBACK_CAP // 8 + 1, (1 << 17) + 3, 100_003]


def exact(n, rank):
    return np.arange(n, dtype=np.float64) % 89 + rank


@pytest.fixture
def made(monkeypatch):
    """How many _Call objects the calls make."""
    count = [0]
    real = ar_mod._Call

    def counted(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(ar_mod, "_Call", counted)
    return count


@pytest.mark.parametrize("algorithm", ["auto", "ring", "shm", "rhd"])
@pytest.mark.parametrize("shape", ["1-D", "2-D"])
@pytest.mark.parametrize("where", ["new", "in place", "out"])
@pytest.mark.parametrize("n", COUNTS)
def test_repeated_calls_give_the_sum_and_make_no_call_object(made, n, where, shape, algorithm):
    comm = fresh_comm()
    want = sum(exact(n, r) for r in range(P))
    dims = (n,) if shape == "1-D" else (1, n)
    if shape == "2-D" and n % 2 == 0:
        dims = (2, n // 2)
    for call in range(3):
        x = exact(n, RANK).reshape(dims)
        out = None if where == "new" else x if where == "in place" else np.empty(dims)
        got = rr.allreduce(x, algorithm=algorithm, comm=comm, out=out)
        assert got.shape == dims and (out is None or got is out)
        np.testing.assert_array_equal(got.reshape(-1), want)
        if where == "out":
            np.testing.assert_array_equal(x.reshape(-1), exact(n, RANK))
        every = comm.allgather(got.tobytes())
        assert all(b == every[0] for b in every)
        if call == 0:
            planned = made[0]  # 1, or 0 where an earlier test planned the same call
            assert planned <= 1
        assert made[0] == planned, f"call {call} made a _Call"


def test_empty_arrays_on_the_cached_path(made):
    comm = fresh_comm()
    for _ in range(3):
        got = rr.allreduce(np.empty((0, 3)), comm=comm)
        assert got.shape == (0, 3)
    assert made[0] <= 1


def test_a_mismatch_on_a_cached_plan_raises_everywhere_and_the_next_call_works():
    comm = fresh_comm()
    n = COUNTS[1]
    for _ in range(2):  # both sizes planned and cached on every rank
        rr.allreduce(exact(n, RANK), comm=comm)
        rr.allreduce(exact(n + 1, RANK), comm=comm)
    if P > 1:
        mine = n + (RANK == P - 1)
        with pytest.raises(MismatchError, match="shape"):
            rr.allreduce(exact(mine, RANK), comm=comm)
    got = rr.allreduce(exact(n, RANK), comm=comm)
    np.testing.assert_array_equal(got, sum(exact(n, r) for r in range(P)))
