"""The parameter server's and the pipeline's pure parts, in one process.

- The GPipe schedule: every stage's ops, and a simulation of all stages together in which
  every send waits for its matching receive (the strictest MPI semantics): it must finish,
  match every message to the right micro-batch, keep each micro-batch's forward on stage s
  before its forward on s + 1 (backward the other way round), and take the 2 (M + P - 1) time
  units of a pipeline rather than the 2 M P of stages taking turns. The same simulation must
  report a deadlock for a schedule that has one.
- Layer partition (against brute force), the replayed initial weights (against ``MLP``), and
  stages chained over micro-batches (against ``MLP``'s full-batch gradient).
- Shard bounds, roles, flattening, memory estimates and the budget error.
- The byte counter and a one-stage pipeline run on COMM_SELF.

tests/jobs/test_ps_pipeline_mpi.py runs both modes across ranks.
"""
import itertools
import os
import sys

import numpy as np
import pytest
from mpi4py import MPI

from ringreduce.core.schedule import chunk_bounds
from ringreduce.modes import pipeline, ps
from ringreduce.modes.common import (CountingComm, MemoryBudgetError, check_memory_budget,
                                     layer_parameter_counts, memory_bytes)
from ringreduce.modes.pipeline import gpipe_schedule, partition_layers
from ringreduce.modes.stage import Stage, mlp_layer_parameters
from ringreduce.training import SGD, DistributedSampler

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples"))
from mlp import MLP, softmax_cross_entropy  # noqa: E402


# ---------------------------------------------------------------------------------------------
# GPipe schedule
# ---------------------------------------------------------------------------------------------

class Deadlock(Exception):
    pass


PEER = {"send_act": (+1, "recv_act"), "send_grad": (-1, "recv_grad")}


def simulate(schedules):
    """Run every stage's op list together; return ``{(op, stage, m): time}``.

    Time advances in units: in each unit every stage whose next op is a forward or backward
    runs it (one unit each). Messages take no time but are *rendezvous*: a send completes only
    together with the receiver's matching receive, as a large MPI ``Send`` does. A message is
    matched to the receiver's next receive of that kind from that sender (MPI's
    non-overtaking order), so a receive of another micro-batch is a mismatch. Raises
    :class:`Deadlock` when no stage can move and some have ops left.
    """
    n = len(schedules)
    pos = [0] * n
    done = {}
    now = 0

    def current(s):
        return schedules[s][pos[s]] if pos[s] < len(schedules[s]) else (None, None)

    while any(pos[s] < len(schedules[s]) for s in range(n)):
        moved = True
        while moved:  # match every send whose receiver waits for it, until none does
            moved = False
            for s in range(n):
                op, m = current(s)
                if op in PEER:
                    step, want = PEER[op]
                    peer = s + step
                    assert 0 <= peer < n, f"stage {s} sends {op} to stage {peer}, who is not there"
                    peer_op, peer_m = current(peer)
                    if peer_op == want:
                        assert peer_m == m, (f"stage {s} sends {op} of micro-batch {m}, stage "
                                             f"{peer} expects micro-batch {peer_m}")
                        done[(op, s, m)] = done[(want, peer, m)] = now
                        pos[s] += 1
                        pos[peer] += 1
                        moved = True
        computing = [s for s in range(n) if current(s)[0] in ("forward", "backward")]
        if not computing:
            if any(pos[s] < len(schedules[s]) for s in range(n)):
                raise Deadlock({s: current(s) for s in range(n)})
            break
        now += 1
        for s in computing:
            op, m = current(s)
            done[(op, s, m)] = now
            pos[s] += 1
    return done


@pytest.mark.parametrize("n_stages,n_micro", [(1, 1), (1, 3), (2, 1), (2, 4), (3, 4), (4, 2),
                                              (4, 7), (5, 3)])
def test_schedule_runs_to_the_end_in_pipeline_order(n_stages, n_micro):
    schedules = [gpipe_schedule(s, n_stages, n_micro) for s in range(n_stages)]
    for s, ops in enumerate(schedules):
        forwards = [m for op, m in ops if op == "forward"]
        backwards = [m for op, m in ops if op == "backward"]
        assert forwards == list(range(n_micro))
        assert backwards == list(reversed(range(n_micro)))
        kinds = {op for op, _ in ops}
        assert ("recv_act" in kinds) == (s > 0) and ("send_grad" in kinds) == (s > 0)
        assert ("send_act" in kinds) == (s < n_stages - 1)
        assert ("recv_grad" in kinds) == (s < n_stages - 1)
    t = simulate(schedules)
    for m in range(n_micro):
        for s in range(n_stages):
            assert t[("forward", s, m)] < t[("backward", s, m)]
            if s + 1 < n_stages:
                assert t[("forward", s, m)] < t[("forward", s + 1, m)]
                assert t[("backward", s + 1, m)] < t[("backward", s, m)]
    # Pipelined: 2 (M + P - 1) units, the GPipe figure, not the 2 M P of taking turns.
    assert max(t.values()) == 2 * (n_micro + n_stages - 1)


def test_simulation_finds_a_deadlock():
    # Stage 1 wants a gradient before it has done any forward: stage 2 waits for an
    # activation that stage 1 never sends. The simulation must say so, not hang or pass.
    schedules = [gpipe_schedule(s, 3, 2) for s in range(3)]
    first_recv_grad = next(op for op in schedules[1] if op[0] == "recv_grad")
    schedules[1] = [first_recv_grad] + [op for op in schedules[1] if op != first_recv_grad]
    with pytest.raises(Deadlock):
        simulate(schedules)


def test_simulation_finds_a_mismatched_message():
    schedules = [gpipe_schedule(s, 2, 3) for s in range(2)]
    schedules[1] = [("recv_act", 1 - m) if op == "recv_act" and m < 2 else (op, m)
                    for op, m in schedules[1]]
    with pytest.raises(AssertionError, match="expects micro-batch"):
        simulate(schedules)


def test_schedule_rejects_bad_arguments():
    for args in ((0, 0, 1), (2, 2, 1), (0, 1, 0), (-1, 2, 2)):
        with pytest.raises(ValueError, match="gpipe_schedule needs"):
            gpipe_schedule(*args)


# ---------------------------------------------------------------------------------------------
# Partition, initial weights, stages
# ---------------------------------------------------------------------------------------------

def brute_force_partition_cost(costs, k):
    n = len(costs)
    best = None
    for cuts in itertools.combinations(range(1, n), k - 1):
        edges = [0, *cuts, n]
        worst = max(sum(costs[a:b]) for a, b in zip(edges[:-1], edges[1:]))
        best = worst if best is None else min(best, worst)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_partition_is_contiguous_and_optimal(seed):
    rng = np.random.default_rng(seed)
    costs = rng.integers(1, 1000, rng.integers(1, 9)).tolist()
    for k in range(1, len(costs) + 1):
        parts = partition_layers(costs, k)
        assert len(parts) == k
        assert parts[0][0] == 0 and parts[-1][1] == len(costs)
        assert all(a < b for a, b in parts)
        assert all(parts[i][1] == parts[i + 1][0] for i in range(k - 1))
        assert max(sum(costs[a:b]) for a, b in parts) == brute_force_partition_cost(costs, k)


def test_partition_needs_a_layer_per_stage():
    with pytest.raises(ValueError, match="3 stages needs at least 3 layers.*has 2"):
        partition_layers([10, 20], 3)


def test_layer_parameter_counts():
    assert layer_parameter_counts([12, 16, 8, 10]) == [12 * 16 + 16, 16 * 8 + 8, 8 * 10 + 10]


@pytest.mark.parametrize("layers", [[0], [1], [2, 3], [0, 1, 2, 3], [3]])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_replayed_initial_weights_equal_the_mlp(layers, dtype):
    sizes = [7, 9, 5, 6, 4]
    full = MLP(sizes, dtype=dtype, seed=11).parameters()
    got = mlp_layer_parameters(sizes, 11, dtype, layers)
    want = [p for layer in layers for p in full[2 * layer:2 * layer + 2]]
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("parts,n_micro", [([(0, 4)], 3), ([(0, 2), (2, 4)], 4),
                                           ([(0, 1), (1, 3), (3, 4)], 5)])
def test_stages_over_micro_batches_give_the_full_batch_gradient(parts, n_micro):
    sizes = [6, 9, 8, 7, 5]
    rng = np.random.default_rng(5)
    x = rng.standard_normal((13, sizes[0]))
    y = rng.integers(0, sizes[-1], 13)
    model = MLP(sizes, seed=2)
    for b in model.parameters()[1::2]:  # non-zero biases, so that ReLU masks differ by layer
        b[...] = rng.standard_normal(b.shape) * 0.3
    loss_ref, d = softmax_cross_entropy(model.forward(x), y, scale=1 / 13)
    want = [np.empty_like(p) for p in model.parameters()]
    model.backward(d, want)

    stages = [Stage(sizes, a, b, [p.copy() for p in model.parameters()[2 * a:2 * b]])
              for a, b in parts]
    grads = [[np.zeros_like(p) for p in st.params] for st in stages]
    micro = chunk_bounds(13, n_micro)
    loss, dlogits = 0.0, {}
    for m, (lo, hi) in enumerate(micro):
        h = x[lo:hi]
        for st in stages:
            h = st.forward(h, m)
        part, dlogits[m] = softmax_cross_entropy(h, y[lo:hi], scale=1 / 13)
        loss += part
    for m in reversed(range(n_micro)):
        d = dlogits[m]
        for st, g in zip(reversed(stages), reversed(grads)):
            d = st.backward(d, m, g)
        assert d is None  # the first stage holds layer 0 and returns no input gradient
    got = [g for gs in grads for g in gs]
    assert loss == pytest.approx(loss_ref, rel=1e-13)
    for i, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=f"parameter {i}")


def test_stage_checks_its_input_and_its_micro_batches():
    sizes = [4, 3, 2]
    st = Stage(sizes, 1, 2, mlp_layer_parameters(sizes, 0, np.float64, [1]))
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, 3\), got \(2, 4\)"):
        st.forward(np.zeros((2, 4)), 0)
    st.forward(np.zeros((2, 3)), 0)
    with pytest.raises(RuntimeError, match="micro-batch 0 twice"):
        st.forward(np.zeros((2, 3)), 0)
    with pytest.raises(ValueError, match="expected 2 parameters, got 4"):
        Stage(sizes, 0, 1, mlp_layer_parameters(sizes, 0, np.float64, [0, 1]))


# ---------------------------------------------------------------------------------------------
# Parameter server pieces
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,servers", [(1, 1), (10, 3), (434, 2), (5, 7), (0, 2)])
def test_shard_bounds_follow_the_chunk_rule(n, servers):
    b = ps.shard_bounds(n, servers)
    assert len(b) == servers and b[0][0] == 0 and b[-1][1] == n
    assert all(b[i][1] == b[i + 1][0] for i in range(servers - 1))
    sizes = [hi - lo for lo, hi in b]
    assert sizes == [n // servers + (1 if i < n % servers else 0) for i in range(servers)]


def test_roles_put_the_servers_last():
    assert ps.roles(2, 1) == ([0], [1])
    assert ps.roles(4, 2) == ([0, 1], [2, 3])
    for size, servers in ((1, 1), (3, 3), (3, 0)):
        with pytest.raises(ValueError, match=f"got {servers} server"):
            ps.roles(size, servers)


def test_flatten_parameters_keeps_values_and_views_the_buffer():
    model = MLP([3, 4, 2], seed=1)
    before = [p.copy() for p in model.parameters()]
    flat, offsets = ps.flatten_parameters(model.parameters())
    assert offsets == [0, 12, 16, 24, 26] and flat.size == 26
    for p, b in zip(model.parameters(), before):
        assert np.array_equal(p, b) and np.shares_memory(p, flat)
    flat[:] = 0  # a pull that receives into the buffer changes what the model computes with
    assert not model.forward(np.ones((1, 3))).any()
    with pytest.raises(ValueError, match="one dtype"):
        ps.flatten_parameters([np.zeros(2), np.zeros(2, np.float32)])


def test_memory_estimates():
    sizes = [10, 20, 5]
    e = memory_bytes(sizes, [0, 1], batch=4, itemsize=8, state_slots=1)
    n = 10 * 20 + 20 + 20 * 5 + 5
    assert e["parameters"] == e["gradients"] == e["optimizer"] == 8 * n
    assert e["activations"] == 8 * 4 * (10 + 20 + 2 * 5)
    assert e["total"] == 3 * 8 * n + e["activations"]
    stage = memory_bytes(sizes, [1], batch=4, itemsize=8, state_slots=2)
    assert stage["optimizer"] == 2 * 8 * (20 * 5 + 5) and stage["activations"] == 8 * 4 * 30
    s = ps.memory_estimates(sizes, servers=2, workers=3, batch=7, itemsize=4, state_slots=2)
    assert set(s) == {"worker 0", "worker 1", "worker 2", "server 0", "server 1"}
    assert s["worker 0"] == memory_bytes(sizes, [0, 1], 3, 4, 0)  # slices of 3, 2, 2
    half = (n + 1) // 2
    assert s["server 0"]["total"] == 4 * half * (1 + 4 + 2)


def test_memory_estimate_matches_a_stage_s_arrays():
    # The estimate's parts against the arrays a stage really holds: its parameters, their
    # gradients, SGD's momentum buffers, and after all forwards of a step the kept inputs of
    # every micro-batch (plus the output and its gradient, one of each).
    sizes, layers, batch, n_micro = [9, 12, 7, 5], (1, 2), 11, 3
    params = mlp_layer_parameters(sizes, 0, np.float32, layers)
    stage = Stage(sizes, 1, 3, params)
    grads = [np.zeros_like(p) for p in params]
    opt = SGD(params, lr=0.1, momentum=0.9)
    est = memory_bytes(sizes, layers, batch, 4, state_slots=1)
    assert est["parameters"] == sum(p.nbytes for p in params)
    assert est["gradients"] == sum(g.nbytes for g in grads)
    assert est["optimizer"] == sum(b.nbytes for b in opt.state["momentum_buffer"])
    outs = [stage.forward(np.ones((hi - lo, 12), np.float32), m)
            for m, (lo, hi) in enumerate(chunk_bounds(batch, n_micro))]
    kept = sum(h.nbytes for inputs in stage._inputs.values() for h in inputs)
    assert est["activations"] == kept + 2 * sum(o.nbytes for o in outs)


def test_budget_error_names_the_rank_and_the_numbers():
    est = {"stage 0": memory_bytes([100, 100, 10], [0], 8, 8, 1),
           "stage 1": memory_bytes([100, 100, 10], [1], 8, 8, 1)}
    check_memory_budget(est, est["stage 0"]["total"], "pipeline")  # exactly at the budget: fine
    with pytest.raises(MemoryBudgetError, match=r"pipeline: stage 0 needs an estimated 0\.25 "
                                                r"MiB .*over the memory budget of 0\.10 MiB "
                                                r"\(1 of 2 ranks are over\)"):
        check_memory_budget(est, 0.1 * 2**20, "pipeline")


# ---------------------------------------------------------------------------------------------
# Transport and a one-stage pipeline, on COMM_SELF
# ---------------------------------------------------------------------------------------------

def test_counting_comm_counts_bytes_and_delivers():
    link = CountingComm(MPI.COMM_SELF)
    try:
        src = np.arange(5, dtype=np.float64)
        dst = np.empty(5)
        req = link.irecv(dst, 0, 7)
        link.waitall([req, link.isend(src, 0, 7)])
        assert np.array_equal(dst, src)
        empty = np.empty(0)
        r = link.irecv(empty, 0, 8)
        link.send(np.empty(0), 0, 8)
        link.waitall([r])
        assert link.bytes_sent == link.bytes_received == 40
    finally:
        link.free()


def test_one_stage_pipeline_equals_plain_training():
    # On one rank the pipeline is gradient accumulation over micro-batches; its parameters
    # after a few SGD steps must equal a plain MLP loop's over whole batches.
    sizes = [6, 10, 4]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6))
    y = rng.integers(0, 4, 40)
    sampler = DistributedSampler(40, 16, rank=0, size=1, seed=3)
    steps = 5  # two epochs and a bit, each ending in a batch of 8

    def make(params):
        return SGD(params, lr=0.2, momentum=0.9)

    metrics, got = pipeline.train_pipeline(
        sizes, softmax_cross_entropy, x, y, x[:10], y[:10], micro_batches=3, sampler=sampler,
        total_steps=steps, make_optimizer=make, lr_at=lambda s: 0.2, dtype=np.float64, seed=4,
        gather_params=True, comm=MPI.COMM_SELF)
    model = MLP(sizes, seed=4)
    opt = make(model.parameters())
    grads = [np.empty_like(p) for p in model.parameters()]
    step = 0
    for epoch in range(3):
        for _, idx, b in sampler.batches(epoch):
            if step < steps:
                loss, d = softmax_cross_entropy(model.forward(x[idx]), y[idx], scale=1 / b)
                model.backward(d, grads)
                opt.step(grads)
                step += 1
    for i, (a, b) in enumerate(zip(got, model.parameters())):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=f"parameter {i}")
    assert metrics["steps"] == steps and len(metrics["loss_curve"]) == steps
    assert metrics["per_rank"][0]["bytes_sent_per_step"] == 0  # one stage: nothing to send
