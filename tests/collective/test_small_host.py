"""What rides in the header where every rank shares a host: "auto" calls up to 64 KiB
(``core/choose.py``, AUTO_SMALL_HOST_BYTES), where elsewhere only those below 32 KiB do.
Results against exact sums, the same on every rank; a communicator whose ranks span hosts
(made so here) runs an algorithm instead; ranks whose sizes fall on either side of the bound
all raise and stay usable. Runs at any rank count.
"""
import numpy as np
import pytest
from mpi4py import MPI

import ringreduce as rr
from _comms import fresh_comm
from ringreduce.algorithms import ALGORITHMS
from ringreduce.core.choose import AUTO_SMALL_BYTES, PIGGYBACK_CAP
from ringreduce.transport.comm import Comm, get_comm

P = MPI.COMM_WORLD.Get_size()
RANK = MPI.COMM_WORLD.Get_rank()
SIZES = [AUTO_SMALL_BYTES, 48 << 10, PIGGYBACK_CAP, PIGGYBACK_CAP + 8]


@pytest.fixture
def ran(monkeypatch):
    """Every algorithm still runs, and says so."""
    names = []
    for name in list(ALGORITHMS):
        def recorded(*args, real=ALGORITHMS[name], name=name):
            names.append(name)
            return real(*args)
        monkeypatch.setitem(ALGORITHMS, name, recorded)
    return names


def exact(nbytes, rank):
    return np.arange(nbytes // 8, dtype=np.float64) % 97 + rank


def want(nbytes):
    return sum(exact(nbytes, r) for r in range(P))


def test_the_ranks_of_one_host_agree_that_they_are():
    c = get_comm(fresh_comm())
    assert c.one_host  # one machine runs these tests
    assert Comm(MPI.COMM_WORLD).one_host == (P == 1)  # made otherwise: never assumed


@pytest.mark.parametrize("nbytes", SIZES)
def test_one_host_rides_up_to_the_cap(ran, nbytes):
    comm = fresh_comm()
    got = rr.allreduce(exact(nbytes, RANK), comm=comm)
    np.testing.assert_array_equal(got, want(nbytes))
    assert (ran == []) == (nbytes <= PIGGYBACK_CAP)
    every = MPI.COMM_WORLD.allgather(got.tobytes())
    assert all(b == every[0] for b in every)


@pytest.mark.parametrize("nbytes", SIZES)
def test_ranks_on_several_hosts_ride_only_below_32k(ran, nbytes):
    comm = fresh_comm()
    get_comm(comm).one_host = False  # as if the ranks spanned hosts, on every rank
    got = rr.allreduce(exact(nbytes, RANK), comm=comm)
    np.testing.assert_array_equal(got, want(nbytes))
    assert (ran == []) == (nbytes < AUTO_SMALL_BYTES)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("other", [AUTO_SMALL_BYTES - 8, PIGGYBACK_CAP + 8, 1 << 20])
def test_sizes_either_side_of_the_bound_raise_everywhere(other):
    # rank 0's 48 KiB rides in the header, the others' does not, or rides alone
    comm = fresh_comm()
    nbytes = 48 << 10 if RANK == 0 else other
    with pytest.raises(rr.MismatchError, match="count"):
        rr.allreduce(exact(nbytes, RANK), comm=comm)
    got = rr.allreduce(exact(48 << 10, RANK), comm=comm)
    np.testing.assert_array_equal(got, want(48 << 10))


@pytest.mark.parametrize("nbytes", [8, 1 << 10, 48 << 10])
def test_an_array_sent_again_sends_what_it_holds_now(nbytes):
    # At two ranks the exchange sends from the caller's array where it lies (header.py,
    # JOINED_SEND_BYTES): the same array, rewritten, in place and not, and a new one.
    comm = fresh_comm()
    x = np.empty(nbytes // 8)
    for k in range(1, 5):
        x[...] = exact(nbytes, RANK) * k
        np.testing.assert_array_equal(rr.allreduce(x, comm=comm), want(nbytes) * k)
        out = rr.allreduce(x, comm=comm, out=x)
        assert out is x
        np.testing.assert_array_equal(x, want(nbytes) * k)
        np.testing.assert_array_equal(rr.allreduce(exact(nbytes, RANK) * k, comm=comm),
                                      want(nbytes) * k)
