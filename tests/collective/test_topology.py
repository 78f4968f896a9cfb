"""rr.rank(), rr.size(), rr.local_rank(), rr.local_size(): Horovod's names for where a process
sits. Under mpiexec on one machine every rank is on one node."""
import numpy as np
import pytest
from mpi4py import MPI

import ringreduce as rr

RANK, P = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()


def test_local_rank_before_init_raises_on_every_rank(comm):
    fresh = comm.Dup()  # a communicator no test has called init on
    try:
        assert rr.rank(fresh) == RANK and rr.size(fresh) == P  # these need no init
        for what in ("local_rank", "local_size"):
            with pytest.raises(ValueError, match=rf"rr.{what}\(\) needs rr.init\(\) on this "
                                                 "communicator first"):
                getattr(rr, what)(fresh)
    finally:
        fresh.Free()


def test_after_init_one_node_holds_every_rank(comm):
    rr.init()
    assert (rr.rank(), rr.size()) == (RANK, P)
    assert (rr.local_rank(), rr.local_size()) == (RANK, P)
    rr.init()  # again: nothing changes, nothing is split anew
    assert (rr.local_rank(), rr.local_size()) == (RANK, P)


def test_sub_communicator(comm):
    sub = comm.Split(RANK % 2, RANK)
    rr.init(sub)
    members = [r for r in range(P) if r % 2 == RANK % 2]
    assert rr.rank(sub) == members.index(RANK) and rr.size(sub) == len(members)
    assert (rr.local_rank(sub), rr.local_size(sub)) == (members.index(RANK), len(members))
    assert np.all(rr.allreduce(np.ones(3), comm=sub) == len(members))
