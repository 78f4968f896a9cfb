""""auto"'s race between shm and the ring on one node (core/adapt.py, collectives/run.py):
every rank runs the same candidate in every call, the sum of the ranks' timings decides, so
all keep the same winner even where one rank alone would have chosen the other, and results
are right throughout. Made-up timings (the race's clock replaced), never real ones.

Runs at any rank count: on one rank nothing is raced.
"""
import hashlib
import importlib

import numpy as np
import pytest
from mpi4py import MPI

import ringreduce as rr
from _comms import fresh_comm
from ringreduce.algorithms import ALGORITHMS
from ringreduce.config import get_config
from ringreduce.core import adapt
from ringreduce.memory.host import HOST
from ringreduce.transport.comm import get_comm

run_mod = importlib.import_module("ringreduce.collectives.run")

P = MPI.COMM_WORLD.Get_size()
RANK = MPI.COMM_WORLD.Get_rank()
RACE_CALLS = (adapt.WARMUP + adapt.SAMPLES) * len(adapt.CANDIDATES)

pytestmark = pytest.mark.skipif(not get_config().adapt, reason="RINGREDUCE_ADAPT=0")


@pytest.fixture
def timed(monkeypatch):
    """Each algorithm runs for real, then the race's clock moves on by ``cost[name]``
    (seconds per byte, set by the test) times the call's bytes; ``ran`` lists the names."""
    now, ran, cost = [0.0], [], {}
    for name in adapt.CANDIDATES:
        real = ALGORITHMS[name]

        def timed_run(comm, x, out, reduce, seg, real=real, name=name):
            real(comm, x, out, reduce, seg)
            ran.append(name)
            now[0] += cost.get(name, 1e-9) * x.nbytes
        monkeypatch.setitem(ALGORITHMS, name, timed_run)
    monkeypatch.setattr(run_mod, "_clock", lambda: now[0])
    return ran, cost


def inputs(n, rank, call):
    # Integer-valued: every order of summation is exact, so results are checked for
    # equality, and cheap to make at the race's top size (32 MiB) on 5 ranks.
    return np.arange(n, dtype=np.float64) % 97 + (rank + call)


def check(got, n, call):
    want = P * (np.arange(n, dtype=np.float64) % 97 + call) + P * (P - 1) // 2
    np.testing.assert_array_equal(got, want)
    every = MPI.COMM_WORLD.allgather(hashlib.sha256(got.tobytes()).digest())
    assert all(b == every[0] for b in every)


@pytest.mark.parametrize("nbytes", [adapt.RACE_MIN_BYTES, 3 << 20, adapt.RACE_MAX_BYTES - 8])
def test_the_sum_over_ranks_decides_for_every_rank(timed, nbytes):
    # Rank 0 alone would keep shm (half the ring's time); the others see shm ten times
    # slower, so the sum says ring, and every rank must keep it.
    ran, cost = timed
    cost.update({"shm": 1e-9, "ring": 2e-9} if RANK == 0 else {"shm": 1e-8, "ring": 1e-9})
    comm = fresh_comm()
    n = nbytes // 8
    for call in range(RACE_CALLS + 5):
        check(rr.allreduce(inputs(n, RANK, call), comm=comm), n, call)
    if P == 1:
        assert ran == [] and not any(get_comm(comm).state.races.values())
        return
    assert ran[:RACE_CALLS] == list(adapt.CANDIDATES) * (adapt.WARMUP + adapt.SAMPLES)
    assert ran[RACE_CALLS:] == ["ring"] * 5
    assert MPI.COMM_WORLD.allgather(ran) == [ran] * P
    race = get_comm(comm).state.races[(HOST, adapt.size_class(nbytes), np.dtype(np.float64))]
    assert race.candidates[race.winner] == "ring"


def test_a_close_race_runs_all_its_rounds_on_every_rank(timed):
    # Within CLOSE on every rank: every rank races all the rounds, in step, and then all
    # keep the faster; a far race (above) stops after its first.
    ran, cost = timed
    cost.update({"shm": 1.05e-9, "ring": 1e-9})
    comm = fresh_comm()
    n = (1 << 20) // 8
    total = adapt.most_calls()
    for call in range(total + 3):
        check(rr.allreduce(inputs(n, RANK, call), comm=comm), n, call)
    if P == 1:
        return
    assert ran[:total] == list(adapt.CANDIDATES) * (adapt.WARMUP + adapt.SAMPLES * adapt.ROUNDS)
    assert ran[total:] == ["ring"] * 3
    assert MPI.COMM_WORLD.allgather(ran) == [ran] * P


def test_a_winner_that_slows_down_is_raced_again_on_every_rank(timed):
    # shm wins; then its calls take a hundred times as long on rank 0 only: at the next
    # watch the ranks' sum says so, every rank races again, and all keep the ring.
    ran, cost = timed
    cost.update({"shm": 1e-9, "ring": 5e-9})
    comm = fresh_comm()
    n = (1 << 20) // 8
    for call in range(RACE_CALLS + adapt.WATCH_CALLS + RACE_CALLS + 3):
        if call == RACE_CALLS and RANK == 0:
            cost["shm"] = 1e-7
        check(rr.allreduce(inputs(n, RANK, call), comm=comm), n, call)
    if P == 1:
        return
    assert ran[RACE_CALLS:RACE_CALLS + adapt.WATCH_CALLS] == ["shm"] * adapt.WATCH_CALLS
    again = ran[RACE_CALLS + adapt.WATCH_CALLS:]
    assert again == list(adapt.CANDIDATES) * (adapt.WARMUP + adapt.SAMPLES) + ["ring"] * 3
    assert MPI.COMM_WORLD.allgather(ran) == [ran] * P


def test_sizes_of_one_class_share_a_race_and_others_do_not(timed):
    # Sizes of one class feed one race (times are per byte); a class below the range is
    # not raced, and its calls leave the race where it was.
    ran, cost = timed
    cost.update({"shm": 1e-9, "ring": 5e-9})
    comm = fresh_comm()
    sizes = [(1 << 20) + 8 * (k % 3) for k in range(RACE_CALLS)]
    for call, nbytes in enumerate(sizes):
        check(rr.allreduce(inputs(nbytes // 8, RANK, call), comm=comm), nbytes // 8, call)
        rr.allreduce(np.ones(1000), comm=comm)  # 8 KB: rides in the header, no race
    if P == 1:
        return
    assert len(ran) == RACE_CALLS
    races = {k: r for k, r in get_comm(comm).state.races.items() if r is not None}
    key = (HOST, adapt.size_class(1 << 20), np.dtype(np.float64))
    assert list(races) == [key]
    race = races[key]
    assert race.candidates[race.winner] == "shm"


def test_explicit_algorithms_are_never_raced(timed):
    ran, _ = timed
    comm = fresh_comm()
    n = (2 << 20) // 8
    for call in range(RACE_CALLS + 1):
        check(rr.allreduce(inputs(n, RANK, call), algorithm="ring", comm=comm), n, call)
    assert set(ran) <= {"ring"} and (P == 1 or len(ran) == RACE_CALLS + 1)
    assert not any(get_comm(comm).state.races.values())
