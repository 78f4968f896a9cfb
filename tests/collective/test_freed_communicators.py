"""Communicators the user makes and frees, as a job that splits its world again and again
does. MPI may give a new communicator the handle of a freed one, on some ranks and not on
others; what the library keeps per communicator (its duplicates, the engine's channel, the
node split) must then start afresh on every rank alike. When it followed the handle, the
ranks that got the old handle back used the freed communicator's duplicate while the others
made a new one (a collective), and the job hung (Open MPI, 3 ranks).

Runs at any rank count: plain ``pytest`` is 1 rank, ``mpiexec -n N python -m pytest`` is N.
"""
import numpy as np
import pytest
from mpi4py import MPI

import ringreduce as rr
from ringreduce.engine.engine import ENGINE
from ringreduce.transport.comm import comm_state, control_comm, get_comm

P = MPI.COMM_WORLD.Get_size()
RANK = MPI.COMM_WORLD.Get_rank()


def _everyone_fresh(comm, sub):
    """Whether the library holds nothing for ``sub`` on any rank (asked over ``comm``, so a
    rank that wrongly found something fails the test on every rank instead of hanging)."""
    return all(comm.allgather(comm_state(sub) == {}))


@pytest.mark.parametrize("perturb", ["same", "rank 0 differs"])
def test_a_new_communicator_in_a_freed_ones_place_starts_afresh(comm, perturb):
    for round_ in range(3):
        old = comm.Split(RANK % 2, RANK)
        members = [r for r in range(P) if r % 2 == RANK % 2]
        got = rr.allreduce(np.full(5, RANK + round_, np.int64), comm=old, algorithm="ring")
        assert np.array_equal(got, np.full(5, sum(members) + round_ * len(members)))
        rr.allreduce_async(np.ones(3), comm=old, name="a").wait(timeout=60)
        rr.init(old)
        handle = old.handle
        old.Free()
        # Rank 0 makes a communicator of its own in between: its next handle then differs
        # from the freed one while the other ranks may get the freed one's back.
        spare = MPI.COMM_SELF.Dup() if perturb != "same" and RANK == 0 else None
        new = comm.Split(RANK % 2, RANK)
        reused = comm.allgather(new.handle == handle)
        assert _everyone_fresh(comm, new), f"handle reused per rank: {reused}"
        got = rr.allreduce(np.full(7, 1.0), comm=new, algorithm="ring")
        assert np.array_equal(got, np.full(7, float(len(members))))
        h = rr.allreduce_async(np.full(4, 2.0), comm=new, name="a")
        assert np.array_equal(h.wait(timeout=60), np.full(4, 2.0 * len(members)))
        with pytest.raises(ValueError, match="rr.init"):
            rr.local_rank(new)  # the freed communicator's init does not carry over
        rr.init(new)
        assert 0 <= rr.local_rank(new) < len(members)
        new.Free()
        if spare is not None:
            spare.Free()


def test_a_freed_communicator_is_refused_on_the_rank_that_passes_it(comm):
    sub = comm.Split(0, RANK)
    rr.allreduce(np.ones(2), comm=sub)
    rr.allreduce_async(np.ones(2), comm=sub).wait(timeout=60)
    ch = comm_state(sub)["engine"]
    assert ENGINE.channels.get(id(ch)) is ch
    sub.Free()
    assert sub == MPI.COMM_NULL
    assert id(ch) not in ENGINE.channels  # the engine no longer polls the freed one's channel
    with pytest.raises(ValueError, match="COMM_NULL"):
        rr.allreduce(np.ones(2), comm=sub)
    with pytest.raises(ValueError, match="COMM_NULL"):
        rr.allreduce_async(np.ones(2), comm=sub)
    # A rank left out of a split gets COMM_NULL: it alone is refused, the others reduce.
    part = comm.Split(MPI.UNDEFINED if RANK == P - 1 and P > 1 else 0, RANK)
    if part == MPI.COMM_NULL:
        with pytest.raises(ValueError, match="COMM_NULL"):
            rr.allreduce(np.ones(2), comm=part)
    else:
        assert np.array_equal(rr.allreduce(np.ones(2), comm=part), np.full(2, part.Get_size()))
        part.Free()
    assert np.array_equal(rr.allreduce(np.ones(2)), np.full(2, P))


@pytest.mark.mpi(min_size=2)
def test_freeing_with_an_allreduce_in_flight_fails_it_instead_of_waiting(comm):
    """Rank 0 submits on a communicator the others never submit on, then every rank frees
    it: rank 0's handle ends with an error that says why, it does not wait for ever."""
    sub = comm.Split(0, RANK)
    rr.init(sub)  # every rank's channel exists before one rank submits alone
    h = rr.allreduce_async(np.ones(3), comm=sub, name="alone") if RANK == 0 else None
    sub.Free()
    if h is not None:
        with pytest.raises(rr.RingReduceError, match="freed while this allreduce was in flight"):
            h.wait(timeout=10)
    assert np.array_equal(rr.allreduce_async(np.ones(2), name="after").wait(timeout=60),
                          np.full(2, P))


def test_what_the_library_made_for_a_communicator_is_freed_with_it(comm):
    # Its duplicates, the shared-memory window and node, the hierarchical levels (rr.init's
    # split) go with the user's Free on every rank; the engine's channel stays (its thread
    # may be inside it) and the engine goes on. Before, none of it went, and a loop of
    # Split, one 1 MiB allreduce and Free ran out of MPICH's communicator ids after 511
    # rounds (tests/jobs/test_many_communicators.py runs that loop).
    sub = comm.Split(0, RANK)
    x = np.ones(1 << 18, np.float32)
    for alg in ("auto", "ring", "shm", "hierarchical", "direct"):
        assert np.array_equal(rr.allreduce(x, algorithm=alg, comm=sub), np.full(x.size, P))
    rr.init(sub)
    c = get_comm(sub)
    comms, wins = [c.mpi, control_comm(sub)], []
    levels = c.state.levels
    comms += [levels.node.mpi] + ([levels.leaders.mpi] if levels.leaders else [])
    if c.state.shm is not None:
        comms.append(c.state.shm.node)
        if c.state.shm.window is not None:
            wins.append(c.state.shm.window.win)
    assert P == 1 or wins, "shm ran, so its window exists"
    h = rr.allreduce_async(x, comm=sub, name="kept")
    assert np.array_equal(h.wait(timeout=60), np.full(x.size, P))
    channel = comm_state(sub)["engine"]
    sub.Free()
    freed = all(m == MPI.COMM_NULL for m in comms) and all(w == MPI.WIN_NULL for w in wins)
    assert all(comm.allgather(freed))
    assert channel.data.mpi != MPI.COMM_NULL
    assert np.array_equal(rr.allreduce(np.ones(3), comm=comm), np.full(3, P))
    h = rr.allreduce_async(np.ones(3), comm=comm, name="after")
    assert np.array_equal(h.wait(timeout=60), np.full(3, P))
