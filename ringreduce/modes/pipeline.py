r"""Model parallelism by pipelining (GPipe): the MLP's layers split across ranks.

Each rank is a *stage*: it holds a contiguous run of layers and nothing else of the model.
A global batch of B samples is cut into M *micro-batches* (the chunk rule: the first B % M get
one sample more). Stage s receives micro-batch m's activation from stage s - 1, runs its
layers, and sends the result to stage s + 1; the last stage computes the loss. After all M
forwards, the gradients travel back the same way, micro-batch M - 1 first. Every stage adds
each micro-batch's parameter gradients into one buffer and takes a single optimizer step after
the last backward, so one step uses the gradient of the whole batch, as one rank would.

    3 stages, 4 micro-batches (F: forward, B: backward, one time unit each, "." idle)

      stage 0 | F0 F1 F2 F3 .  .  .  .  B3 B2 B1 B0
      stage 1 | .  F0 F1 F2 F3 .  .  B3 B2 B1 B0 .
      stage 2 | .  .  F0 F1 F2 F3 B3 B2 B1 B0 .  .

While stage 1 runs F0, stage 0 already runs F1: that is the pipelining. The idle corners are
the *bubble*: with P stages each stage is idle for 2 (P - 1) of 2 (M + P - 1) units, a fraction
(P - 1) / (M + P - 1), so more micro-batches shrink it (GPipe, Huang et al. 2019).

Why the result equals one rank's: the loss is scaled by 1 / B (B the global batch size, not
the micro-batch's), so the per-micro-batch gradients add up to the full-batch gradient; the
layer arithmetic is that of ``examples/mlp.py``'s ``MLP`` step for step. What differs is only
the order of floating-point additions (a matmul over B rows against M matmuls over B / M rows,
summed), about 1e-16 relative per step in float64.

Cost per step: stage s sends M forward messages of B / M activations of its output width and
M backward messages of B / M gradients of its input width, so B (h_out + h_in) elements in all
(one of the two for the first and last stage) - independent of M and of the number of
parameters; the rank holding the widest boundary sends most. In alpha-beta terms a stage pays
2 M alpha + B (h_in + h_out) beta per step, and the step takes (M + P - 1) / M times the
slowest stage's compute: more micro-batches shrink the bubble but add latencies.

Memory: a stage keeps every micro-batch's layer inputs until its backward (GPipe stores all M),
so its activations are those of the whole batch for its layers only, and its parameters,
gradients and optimizer state are its own layers' only. :func:`memory_bytes` estimates that and
:func:`check_memory_budget` refuses, before allocating, a rank that would exceed a budget.

The schedule is a pure function (:func:`gpipe_schedule`) of (stage, stages, micro-batches),
listing every receive, compute and send in order; the executor (:func:`train_pipeline`) walks
it with blocking ``Send``/``Recv`` on a private duplicate of the communicator. Because every
dependency points downstream during the forwards and upstream during the backwards, the walk
cannot deadlock even when every ``Send`` waits for its matching ``Recv`` (tests simulate it).
"""
import time

import numpy as np

from ..core.schedule import chunk_bounds
from ..training.optim import NonFiniteGradientError
from .common import (CountingComm, MemoryBudgetError, check_memory_budget,
                     layer_parameter_counts, memory_bytes, new_timed, rank_summary, record_step,
                     step_times, warm_up_optimizer)
from .stage import Stage, mlp_layer_parameters

# The pipeline's public names include what it shares with ps.py (common.py) and its stage
# (stage.py).
__all__ = [
    "gpipe_schedule",
    "partition_layers",
    "layer_parameter_counts",
    "mlp_layer_parameters",
    "memory_bytes",
    "check_memory_budget",
    "MemoryBudgetError",
    "Stage",
    "CountingComm",
    "train_pipeline",
]

TAG_ACT = 101   # activations, forward
TAG_GRAD = 102  # gradients of activations, backward
TAG_EVAL = 103  # forward-only activations of the evaluation
TAG_RESULT = 104  # to rank 0 after training: test score, loss curve, parameters to save


# ---------------------------------------------------------------------------------------------
# Pure parts: schedule, partition
# ---------------------------------------------------------------------------------------------

def gpipe_schedule(stage, n_stages, n_micro):
    """The ordered ops of one training step on ``stage``: ``[(op, micro_batch)]``.

    ``op`` is one of ``recv_act`` (from stage - 1), ``forward``, ``send_act`` (to stage + 1),
    ``recv_grad`` (from stage + 1), ``backward``, ``send_grad`` (to stage - 1). Forwards in
    micro-batch order 0..M-1, then backwards in reverse order M-1..0 (the last stage can start
    the backward of the micro-batch it has just finished). The first stage neither receives
    activations nor sends gradients; the last neither sends activations nor receives gradients.
    """
    if n_stages < 1 or n_micro < 1 or not 0 <= stage < n_stages:
        raise ValueError(f"gpipe_schedule needs n_stages >= 1, n_micro >= 1 and "
                         f"0 <= stage < n_stages; got stage={stage}, n_stages={n_stages}, "
                         f"n_micro={n_micro}")
    first, last = stage == 0, stage == n_stages - 1
    ops = []
    for m in range(n_micro):
        if not first:
            ops.append(("recv_act", m))
        ops.append(("forward", m))
        if not last:
            ops.append(("send_act", m))
    for m in reversed(range(n_micro)):
        if not last:
            ops.append(("recv_grad", m))
        ops.append(("backward", m))
        if not first:
            ops.append(("send_grad", m))
    return ops


def partition_layers(costs, n_stages):
    """Cut layers with ``costs`` into ``n_stages`` contiguous non-empty runs, minimising the
    largest run's total cost; returns ``[(first, stop)] * n_stages``.

    A stage's compute and memory both grow with its parameter count, so balancing the counts
    balances the pipeline (the slowest stage sets its pace). Exact, by dynamic programming over
    (stages, layers): a model has tens of layers at most here. Ties go to the earliest cut.
    """
    costs = [int(c) for c in costs]
    n = len(costs)
    if n_stages < 1:
        raise ValueError(f"partition_layers needs n_stages >= 1, got {n_stages}")
    if n < n_stages:
        raise ValueError(f"a pipeline of {n_stages} stages needs at least {n_stages} layers, "
                         f"one per stage; the model has {n} (add hidden layers or use fewer "
                         f"ranks)")
    prefix = np.concatenate([[0], np.cumsum(costs)]).tolist()
    inf = float("inf")
    # best[k][i]: the smallest possible largest cost cutting layers [0, i) into k stages.
    best = [[inf] * (n + 1) for _ in range(n_stages + 1)]
    cut = [[0] * (n + 1) for _ in range(n_stages + 1)]
    best[0][0] = 0
    for k in range(1, n_stages + 1):
        for i in range(k, n - (n_stages - k) + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    bounds, i = [], n
    for k in range(n_stages, 0, -1):
        j = cut[k][i]
        bounds.append((j, i))
        i = j
    return bounds[::-1]


# ---------------------------------------------------------------------------------------------
# Executor
# ---------------------------------------------------------------------------------------------

def train_pipeline(sizes, loss_fn, x_train, y_train, x_test, y_test, *, micro_batches, sampler,
                   total_steps, make_optimizer, lr_at, dtype, seed, state_slots=1,
                   memory_budget_bytes=None, gather_params=False, comm=None):
    """Train an MLP of layer sizes ``sizes`` with one pipeline stage per rank of ``comm``.

    ``sampler``: a :class:`~ringreduce.training.DistributedSampler` over the *global* batch
    (``rank=0, size=1``): every stage walks the same batches; the first reads the inputs, the
    last the labels. ``loss_fn(logits, labels, scale)`` returns ``(loss, dlogits)``;
    ``make_optimizer(params)`` builds the optimizer of one stage's parameters; ``lr_at(step)``
    gives each step's learning rate. Weights start as ``MLP(sizes, dtype, seed)``'s
    (:func:`mlp_layer_parameters`). ``state_slots``: optimizer values per parameter, for the
    memory estimate checked against ``memory_budget_bytes`` (``None``: no budget).

    Returns ``(metrics, params)`` on rank 0: the metrics dict (every rank's counters in
    ``per_rank``), and with ``gather_params`` the whole model's ``[W0, b0, ...]`` (sent to
    rank 0 after training, for saving; the one moment a rank holds the whole model). Other
    ranks return ``(None, None)``. Collective over ``comm`` (default ``COMM_WORLD``).
    """
    link = CountingComm(comm)
    try:
        return _train_pipeline(link, sizes, loss_fn, x_train, y_train, x_test, y_test,
                               micro_batches, sampler, total_steps, make_optimizer, lr_at,
                               np.dtype(dtype), seed, state_slots, memory_budget_bytes,
                               gather_params)
    finally:
        link.free()


def _train_pipeline(link, sizes, loss_fn, x_train, y_train, x_test, y_test, n_micro, sampler,
                    total_steps, make_optimizer, lr_at, dtype, seed, state_slots,
                    memory_budget_bytes, gather_params):
    stage_id, n_stages = link.rank, link.size
    if n_micro < 1:
        raise ValueError(f"the pipeline needs at least 1 micro-batch, got {n_micro}")
    parts = partition_layers(layer_parameter_counts(sizes), n_stages)
    if memory_budget_bytes is not None:
        estimates = {f"stage {s} (layers {a}..{b - 1})":
                     memory_bytes(sizes, range(a, b), sampler.batch_size, dtype.itemsize,
                                  state_slots) for s, (a, b) in enumerate(parts)}
        check_memory_budget(estimates, memory_budget_bytes,
                            f"pipeline of {n_stages} stage(s)")
    first, stop = parts[stage_id]
    is_first, is_last = stage_id == 0, stage_id == n_stages - 1
    params = mlp_layer_parameters(sizes, seed, dtype, range(first, stop))
    stage = Stage(sizes, first, stop, params)
    grads = [np.zeros_like(p) for p in params]
    opt = make_optimizer(params)
    warm_up_optimizer(make_optimizer, dtype)
    schedule = gpipe_schedule(stage_id, n_stages, n_micro)
    width_in, width_out = sizes[first], sizes[stop]

    losses = []            # the last stage's global loss of every step
    timed = new_timed()
    run_start = time.perf_counter()
    for step, idx, batch_size in sampler.steps(total_steps):
        t0 = time.perf_counter()
        before = link.counters()
        micro = chunk_bounds(len(idx), n_micro)
        for g in grads:
            g.fill(0)
        outgoing, incoming = {}, {}   # micro-batch -> array to send / array received
        loss = 0.0
        for op, m in schedule:
            lo, hi = micro[m]
            if op == "recv_act":
                buf = np.empty((hi - lo, width_in), dtype=dtype)
                link.recv(buf, stage_id - 1, TAG_ACT)
                incoming[m] = buf
            elif op == "forward":
                x = x_train[idx[lo:hi]] if is_first else incoming.pop(m)
                out = stage.forward(x, m)
                if is_last:
                    # Scaled by the global batch size: the micro-batches' gradients add up
                    # to the whole batch's.
                    part, dlogits = loss_fn(out, y_train[idx[lo:hi]], scale=1.0 / batch_size)
                    loss += part
                    incoming[m] = dlogits
                else:
                    outgoing[m] = out
            elif op == "send_act":
                link.send(outgoing.pop(m), stage_id + 1, TAG_ACT)
            elif op == "recv_grad":
                buf = np.empty((hi - lo, width_out), dtype=dtype)
                link.recv(buf, stage_id + 1, TAG_GRAD)
                incoming[m] = buf
            elif op == "backward":
                d_in = stage.backward(incoming.pop(m), m, grads)
                if not is_first:
                    outgoing[m] = np.ascontiguousarray(d_in)
            elif op == "send_grad":
                link.send(outgoing.pop(m), stage_id - 1, TAG_GRAD)
        t1 = time.perf_counter()
        if not all(np.isfinite(g).all() for g in grads):
            # A NaN in the loss reaches every stage's gradients, so every stage stops here.
            raise NonFiniteGradientError(f"pipeline stage {stage_id}: step {step}: the "
                                         f"gradient holds NaN or Inf; stopping")
        opt.lr = lr_at(step)
        opt.step(grads)
        t2 = time.perf_counter()
        losses.append(loss)
        if step > 0:  # the first step compiles the Numba optimizer kernels: not timed
            record_step(timed, link, before, batch_size, t2 - t0, t2 - t1)
    wall = time.perf_counter() - run_start

    accuracy, test_loss = _evaluate(link, stage, loss_fn, x_test, y_test, sampler.batch_size,
                                    n_micro, width_in, dtype)
    if is_last and not is_first:
        link.send(np.array(losses, dtype=np.float64), 0, TAG_RESULT)
    elif is_first and not is_last:
        buf = np.empty(len(losses), dtype=np.float64)
        link.recv(buf, n_stages - 1, TAG_RESULT)
        losses = buf.tolist()

    full = None
    if gather_params:
        if is_first:
            full = list(params)
            for s in range(1, n_stages):
                a, b = parts[s]
                for layer in range(a, b):
                    w = np.empty((sizes[layer], sizes[layer + 1]), dtype=dtype)
                    bias = np.empty(sizes[layer + 1], dtype=dtype)
                    link.recv(w, s, TAG_RESULT)
                    link.recv(bias, s, TAG_RESULT)
                    full += [w, bias]
        else:
            for p in params:
                link.send(p, 0, TAG_RESULT)

    mine = rank_summary(timed, f"stage {stage_id} (layers {first}..{stop - 1})")
    everyone = link.mpi.gather(mine, root=0)
    if not is_first:
        return None, None
    n = timed["steps"]
    metrics = {
        "mode": "pipeline", "ranks": n_stages, "micro_batches": n_micro,
        "stages": [list(p) for p in parts], "steps": len(losses),
        "loss_curve": losses, "final_test_accuracy": accuracy, "final_test_loss": test_loss,
        "samples_per_second": timed["samples"] / timed["seconds"] if timed["seconds"] else None,
        "timed_steps": n,
        "step_time_seconds": step_times(timed),
        "per_rank": everyone,
        # Each boundary between stages carries B activations forward and B gradients back.
        "formula_bytes_sent_per_step": [
            sampler.batch_size * dtype.itemsize
            * ((sizes[b] if s < n_stages - 1 else 0) + (sizes[a] if s > 0 else 0))
            for s, (a, b) in enumerate(parts)],
        "bubble_fraction": (n_stages - 1) / (n_micro + n_stages - 1),
        "wall_seconds": wall,
    }
    return metrics, full


def _evaluate(link, stage, loss_fn, x_test, y_test, batch_size, n_micro, width_in, dtype):
    """Accuracy and mean loss on the test set, forward only, pipelined like training; the
    result is sent from the last stage to rank 0 (other ranks get ``(None, None)``)."""
    stage_id, n_stages = link.rank, link.size
    is_first, is_last = stage_id == 0, stage_id == n_stages - 1
    score = np.zeros(2)  # correct predictions, summed loss
    for start in range(0, len(x_test), batch_size):
        stop = min(start + batch_size, len(x_test))
        for lo, hi in chunk_bounds(stop - start, n_micro):
            lo, hi = start + lo, start + hi
            if is_first:
                x = x_test[lo:hi]
            else:
                x = np.empty((hi - lo, width_in), dtype=dtype)
                link.recv(x, stage_id - 1, TAG_EVAL)
            out = stage.forward_only(x)
            if is_last:
                score[0] += np.sum(np.argmax(out, axis=1) == y_test[lo:hi])
                score[1] += loss_fn(out, y_test[lo:hi])[0]
            else:
                link.send(np.ascontiguousarray(out), stage_id + 1, TAG_EVAL)
    if is_last and not is_first:
        link.send(score, 0, TAG_RESULT)
    elif is_first and not is_last:
        link.recv(score, n_stages - 1, TAG_RESULT)
    if not is_first:
        return None, None
    return float(score[0] / len(x_test)), float(score[1] / len(x_test))
