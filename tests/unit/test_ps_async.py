"""The asynchronous parameter server with a staleness bound (``--mode ps --staleness K``).

In one process:

- ``may_answer``, the SSP condition a server checks before answering a pull, on a table of
  cases, and the bound's validation;
- a simulation of the whole protocol (W workers, S servers, messages delivered in a random
  order, workers running at random speeds) built on ``may_answer``: it must always finish
  with every push and every reply received, keep every step's staleness within K, and end
  with every worker holding the same, final version;
- the servers' memory estimate.

Across ranks (each test starts its own ``mpiexec`` jobs, so they are skipped under mpiexec):
with K = 1 and 2, at 3 ranks (1 server) and 4 ranks (2 servers), on the bundled digits, the
job ends with exit 0, the staleness the metrics report never exceeds K, the bytes per step
equal the formula, and the test accuracy is close to the synchronous run's (asynchronous
training does not equal one rank, so the check is a margin, not equality). Bad values of
``--staleness`` stop every rank with a clear message, and a non-finite gradient, which only a
server sees, ends the whole job instead of leaving the workers waiting. The synchronous
``--staleness 0`` against one rank is in tests/test_ps_pipeline_mpi.py, next to the other such
checks.
"""
import json
import os
import random

import pytest
from mpi4py import MPI

from _jobs import mpirun
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


# ---------------------------------------------------------------------------------------------
# Across ranks
# ---------------------------------------------------------------------------------------------

across_ranks = pytest.mark.skipif(MPI.COMM_WORLD.Get_size() > 1,
                                  reason="starts its own mpiexec jobs; run under plain pytest")

# The bundled digits (1437 training images), global batch 64: 23 steps per epoch.
DIGITS = ["--epochs", "3", "--no-progress", "--mode", "ps"]


def run_ps(tmp, n, servers, staleness):
    path = os.path.join(tmp, f"ps_{n}_{servers}_{staleness}.json")
    mpirun(n, [*DIGITS, "--servers", str(servers), "--staleness", str(staleness),
               "--metrics-out", path])
    with open(path) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def synchronous(tmp_path_factory):
    """The synchronous parameter server on the same data: the accuracy to compare with."""
    return run_ps(tmp_path_factory.mktemp("sync"), 3, 1, 0)


@across_ranks
@pytest.mark.parametrize("n,servers", [(3, 1), (4, 2)])
@pytest.mark.parametrize("staleness", [1, 2])
def test_asynchronous_server_keeps_the_bound_and_trains(tmp_path, synchronous, n, servers,
                                                         staleness):
    m = run_ps(tmp_path, n, servers, staleness)  # exit 0 within the timeout: no hang
    assert m["staleness_bound"] == staleness and synchronous["staleness_bound"] == 0
    assert synchronous["staleness_observed"] == {"max": 0, "mean": 0.0}
    seen = m["staleness_observed"]
    assert 0 <= seen["max"] <= staleness and 0 <= seen["mean"] <= seen["max"]
    assert m["steps"] == synchronous["steps"] == 69 and m["workers"] == n - servers
    # Stale gradients cost some accuracy, but on digits in 3 epochs little: the margin is
    # wide, it only catches training that went wrong (the synchronous run reaches about 0.95).
    assert m["final_test_accuracy"] >= synchronous["final_test_accuracy"] - 0.1
    assert m["loss_curve"][-1] < 0.5 * m["loss_curve"][0]
    # The bytes counted equal the formula, the servers' 8-byte versions included.
    for r, rank in enumerate(m["per_rank"]):
        assert rank["bytes_sent_per_step"] == m["formula_bytes_sent_per_step"][r]
    n_bytes = 9610 * 8  # [64, 128, 10] in float64
    assert m["per_rank"][0]["bytes_received_per_step"] == n_bytes + 8 * servers


@across_ranks
@pytest.mark.parametrize("n,args,message", [
    (3, ["--mode", "ps", "--staleness", "-1"], "--staleness must be >= 0 (0: synchronous), got -1"),
    (2, ["--staleness", "2", "--mode", "dp"], "--staleness is for --mode ps only, got --mode dp"),
])
def test_bad_staleness_fails_on_every_rank(n, args, message):
    rc, out, err = mpirun(n, [*DIGITS[:3], *args], expect_ok=False)
    assert rc != 0 and err.count(message) == n


@across_ranks
@pytest.mark.parametrize("staleness", [0, 1])
def test_a_non_finite_gradient_ends_the_job(staleness):
    # Only a server sees the gradient; the workers waiting for its reply must not hang.
    rc, out, err = mpirun(3, ["--epochs", "1", "--no-progress", "--mode", "ps", "--lr", "1e300",
                              "--staleness", str(staleness)], expect_ok=False)
    assert rc != 0 and "rank 2: error: parameter server 0: step" in err
    assert "gradient holds NaN or Inf" in err
