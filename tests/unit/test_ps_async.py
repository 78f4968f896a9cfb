"""The asynchronous parameter server with a staleness bound (``--mode ps --staleness K``).

In one process:

- ``may_answer``, the SSP condition a server checks before answering a pull, on a table of
  cases, and the bound's validation;
- a simulation of the whole protocol (W workers, S servers, messages delivered in a random
  order, workers running at random speeds) built on ``may_answer``: it must always finish
  with every push and every reply received, keep every step's staleness within K, and end
  with every worker holding the same, final version;
- the servers' memory estimate.

Across ranks, in jobs of their own: tests/jobs/test_ps_async_jobs.py.
"""
import random

import pytest

from ringreduce.modes import ps


# ---------------------------------------------------------------------------------------------
# The SSP condition
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("clock,clocks,staleness,expected", [
    (0, [0, 0, 0], 0, True),     # pull 0: the starting parameters, always
    (3, [3, 3, 3], 0, True),     # synchronous: everyone has pushed 3
    (3, [3, 2, 3], 0, False),    # ... but not when one worker is behind
    (3, [3, 2, 3], 1, True),     # 1 step behind is allowed with K = 1
    (3, [3, 1, 3], 1, False),    # 2 steps behind is not
    (3, [3, 1, 3], 2, True),
    (5, [5, 0, 9], 4, False),    # the slowest worker decides, not the mean
    (2, [2, 7], 0, True),        # a worker ahead never blocks one behind
])
def test_may_answer_is_the_ssp_condition(clock, clocks, staleness, expected):
    assert ps.may_answer(clock, clocks, staleness, total_steps=10) is expected


def test_the_final_pull_waits_for_every_push():
    # The last reply is the final parameters: every worker must get the same ones, so the
    # bound does not apply to it.
    assert ps.may_answer(10, [10, 10], 3, total_steps=10)
    assert not ps.may_answer(10, [10, 9], 3, total_steps=10)
    with pytest.raises(ValueError, match=r"clock must be in 0\.\.10, got 11"):
        ps.may_answer(11, [11, 11], 1, total_steps=10)


def test_check_staleness():
    assert ps.check_staleness(0) == 0 and ps.check_staleness(3) == 3
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match=rf"integer >= 0 .*got {bad!r}"):
            ps.check_staleness(bad)


def simulate(n_workers, n_servers, staleness, total_steps, seed):
    """The protocol of ``ps_server.serve_async`` and ``ps._work`` with every message in flight
    in a random order (FIFO per sender and receiver, as MPI's non-overtaking rule guarantees
    for one tag), and workers computing at random moments. Returns each worker's staleness per
    step and the versions of its final parameters; fails on a deadlock."""
    rng = random.Random(seed)
    pushes = {(w, s): [] for w in range(n_workers) for s in range(n_servers)}   # step numbers
    replies = {(s, w): [] for s in range(n_servers) for w in range(n_workers)}  # versions
    clocks = [[0] * n_workers for _ in range(n_servers)]  # each server's view
    answered = [[-1] * n_workers for _ in range(n_servers)]
    got = [{} for _ in range(n_workers)]   # this step's versions, by server
    step = [0] * n_workers                 # the step each worker computes next
    stale = [[] for _ in range(n_workers)]
    final = [None] * n_workers

    def answer_all(s):
        for w in range(n_workers):
            if answered[s][w] < clocks[s][w] and ps.may_answer(clocks[s][w], clocks[s],
                                                                staleness, total_steps):
                replies[(s, w)].append(min(clocks[s]))
                answered[s][w] = clocks[s][w]

    for s in range(n_servers):
        answer_all(s)  # pull 0
    while True:
        moves = []
        for w in range(n_workers):
            if len(got[w]) == n_servers and final[w] is None:
                moves.append(("compute", w))
        moves += [("push", key) for key, queue in pushes.items() if queue]
        moves += [("reply", key) for key, queue in replies.items() if queue]
        if not moves:
            break
        kind, key = rng.choice(moves)
        if kind == "compute":
            w = key
            c = step[w]
            stale[w].append(c - min(got[w].values()))
            got[w] = {}
            for s in range(n_servers):
                pushes[(w, s)].append(c)
            step[w] += 1
        elif kind == "push":
            w, s = key
            c = pushes[key].pop(0)
            assert c == clocks[s][w], "pushes of one worker arrive in order"
            clocks[s][w] += 1
            answer_all(s)
        else:
            s, w = key
            got[w][s] = replies[key].pop(0)
        for w in range(n_workers):  # a worker past its last step holds the final parameters
            if step[w] == total_steps and len(got[w]) == n_servers and final[w] is None:
                final[w] = dict(got[w])
    assert all(f is not None for f in final), (
        f"deadlock: workers at steps {step}, server clocks {clocks}, answered {answered}")
    return stale, final


@pytest.mark.parametrize("n_workers,n_servers,staleness", [
    (1, 1, 1), (2, 1, 1), (3, 1, 2), (3, 2, 1), (4, 3, 3), (5, 2, 0)])
def test_protocol_always_finishes_within_the_bound(n_workers, n_servers, staleness):
    total_steps = 12
    worst = 0
    for seed in range(40):
        stale, final = simulate(n_workers, n_servers, staleness, total_steps, seed)
        for w in range(n_workers):
            assert len(stale[w]) == total_steps
            assert all(0 <= x <= staleness for x in stale[w]), (seed, w, stale[w])
            assert final[w] == {s: total_steps for s in range(n_servers)}
        worst = max(worst, max(max(s) for s in stale))
    if n_workers > 1:
        assert worst == staleness  # random speeds reach the bound: it is the bound that holds
    else:
        assert worst == 0  # one worker is never behind itself


def test_memory_estimate_of_an_asynchronous_server():
    sizes = [10, 20, 5]
    n = 10 * 20 + 20 + 20 * 5 + 5
    sync = ps.memory_estimates(sizes, servers=1, workers=3, batch=6, itemsize=8, state_slots=1)
    stale = ps.memory_estimates(sizes, servers=1, workers=3, batch=6, itemsize=8, state_slots=1,
                                staleness=2)
    assert stale["worker 0"] == sync["worker 0"]
    # The shard and one reply copy per worker; one push buffer per worker; momentum.
    assert stale["server 0"]["parameters"] == 8 * n * 4
    assert stale["server 0"]["gradients"] == 8 * n * 3
    assert stale["server 0"]["total"] == 8 * n * (4 + 3 + 1)
