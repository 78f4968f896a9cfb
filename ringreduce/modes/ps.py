r"""Parameter server: S ranks own the parameters, the other W = p - S ranks compute gradients.

Roles: ranks ``0 .. W-1`` are *workers*, ranks ``W .. p-1`` are *servers* (rank 0 is always a
worker, so it holds the whole model for logging, evaluation and saving). All parameters are
viewed as one flat vector of n elements; server s owns its *shard*, chunk s of the chunk rule
(:func:`shard_bounds`: the first ``n % S`` shards get one element more), and only that shard
and its optimizer state: a server never builds the model. Its shard starts as worker 0's
initial values, sent once before the first step.

One synchronous step:

    workers w0 w1 w2                 servers s0 (shard 0)  s1 (shard 1)
      pull:  <-- shard 0 from s0, shard 1 from s1 (current parameters)
      compute the gradient of (1 / B) * sum of the loss over the worker's slice of the batch
      push:  shard 0 of the gradient --> s0, shard 1 --> s1
                                     each server: g = g_w0 + g_w1 + g_w2 (in that order),
                                     then the optimizer kernel on its shard with g

Why it equals one rank: the worker slices are the chunk rule's split of the global batch
(as in data parallel) and the loss is scaled by the global batch size, so the sum of the
workers' gradients is the full batch's; a server adds them in a fixed worker order, so the
result does not depend on message arrival and is the same in every run. The optimizer kernels
(``kernels/optim.py``) are element-wise, so applying them to a shard of the flat vector is
applying them to the parameters. What differs from one rank is the order of floating-point
additions, as in data parallel.

Traffic per step: a worker sends n elements (its gradient) and receives n (the parameters):
2n through the servers, whatever the worker count. A server sends and receives W n / S each
way: the servers' links carry everything, so a PS needs enough servers (S comparable to W)
to match a ring allreduce's 2 n (p - 1) / p per rank. In return a worker never waits on
another worker's link, and the server's optimizer step is done once per shard, not on every
rank. In alpha-beta terms (n in bytes), push and pull each take the longer of a server's
W (alpha + n / S beta) and a worker's S alpha + n beta (a server takes its W messages one
after another), plus the server's update of n / S elements between them.

The pull of step k + 1 is posted right after the push of step k, and a worker waits for both
together: the server answers the pull only after it has received every worker's push and
updated, so that one wait covers the whole round trip, which is all the time a worker spends
not computing (``wait_seconds``). Messages go through a private duplicate of the communicator
(:class:`~ringreduce.modes.common.CountingComm`), which counts the bytes handed to MPI.

Asynchronous, with a staleness bound K >= 1 (``staleness=K``): the workers' loop is the same
but for the version each reply carries; the servers' loop, the protocol and why it cannot
hang are in ``ps_server.py``.
"""
import time

import numpy as np
from mpi4py import MPI

from ..config import is_whole
from ..core.schedule import chunk_bounds
from .common import (CountingComm, check_memory_budget, layer_parameter_counts, memory_bytes,
                     new_timed, rank_summary, record_step, step_times)
from .ps_server import (TAG_INIT, TAG_PULL, TAG_PUSH, TAG_VERSION, may_answer, serve,
                        serve_async)

# may_answer is the servers' rule (ps_server.py), published here with the rest of the mode.
__all__ = ["shard_bounds", "roles", "flatten_parameters", "memory_estimates", "may_answer",
           "train_ps"]


def shard_bounds(n, servers):
    """``[(start, stop)] * servers``: the flat parameter range each server owns (chunk rule)."""
    if servers < 1:
        raise ValueError(f"a parameter server needs at least 1 server, got {servers}")
    return chunk_bounds(n, servers)


def roles(size, servers):
    """``(workers, servers)``: rank lists of each role for ``size`` ranks and ``servers``
    servers (the last ranks serve, so rank 0 is a worker)."""
    if not 1 <= servers <= size - 1:
        raise ValueError(f"--mode ps needs 1 <= servers <= ranks - 1 (at least one worker); got "
                         f"{servers} server(s) on {size} rank(s)")
    return list(range(size - servers)), list(range(size - servers, size))


def check_staleness(staleness):
    """``staleness`` as an int >= 0, or a ValueError that names what was given."""
    if not is_whole(staleness, 0):
        raise ValueError(f"parameter server: the staleness bound must be an integer >= 0 (0: "
                         f"synchronous), got {staleness!r}")
    return int(staleness)


def flatten_parameters(params):
    """Move ``params`` (a list of same-dtype arrays, changed in place) into one flat buffer.

    Each list entry is replaced by a view of the buffer with the old shape and values, so a
    model that reads its parameters from that list (``MLP.parameters()``) now computes with the
    buffer, and a pull can receive straight into it. Returns ``(flat, offsets)``.
    """
    dtypes = {p.dtype for p in params}
    if len(dtypes) != 1:
        raise ValueError(f"parameter server: all parameters must share one dtype, got "
                         f"{sorted(str(d) for d in dtypes)}")
    offsets = np.concatenate([[0], np.cumsum([p.size for p in params])]).astype(int).tolist()
    flat = np.empty(offsets[-1], dtype=params[0].dtype)
    for i, p in enumerate(params):
        view = flat[offsets[i]:offsets[i + 1]].reshape(p.shape)
        view[...] = p
        params[i] = view
    return flat, offsets


def train_ps(sizes, make_model, loss_fn, x_train, y_train, x_test, y_test, *, servers, sampler,
             total_steps, make_optimizer, lr_at, dtype, state_slots=1, memory_budget_bytes=None,
             staleness=0, comm=None):
    """Parameter-server training of an MLP with layer sizes ``sizes``: synchronous with
    ``staleness=0``, asynchronous with a staleness bound of K steps with ``staleness=K`` >= 1
    (the module docstring, and ``ps_server.py``'s for the asynchronous protocol).

    ``make_model()`` builds the model on the workers (never on a server): an object with
    ``parameters()`` (a list of ``dtype`` arrays), ``forward(x)`` and ``backward(dlogits,
    grads)``. Worker 0's initial parameters are the servers' starting shards (sent once, before
    the first step), and every step begins with a pull, so all workers compute with worker 0's
    values. ``sampler``: a :class:`~ringreduce.training.DistributedSampler` over the *global*
    batch (``rank=0, size=1``); worker w takes slice w of each batch by the chunk rule.
    ``loss_fn(logits, labels, scale)`` returns ``(loss, dlogits)``; ``make_optimizer(params)``
    builds the optimizer a server runs on ``[its shard]``; ``lr_at(step)`` gives each step's
    learning rate. ``state_slots``: optimizer values per parameter, for the memory estimate (a
    worker holds the whole model, a server its shard) checked against ``memory_budget_bytes``
    before anything is allocated (``None``: no budget).

    Returns ``(metrics, params)`` on rank 0: the metrics dict (every rank's counters in
    ``per_rank``) and the final parameters (every worker holds them); ``(None, None)``
    elsewhere. Collective over ``comm`` (default ``COMM_WORLD``).
    """
    dtype = np.dtype(dtype)
    n = sum(layer_parameter_counts(sizes))
    staleness = check_staleness(staleness)
    link = CountingComm(comm)
    try:
        workers, server_ranks = roles(link.size, servers)
        bounds = shard_bounds(n, servers)
        if memory_budget_bytes is not None:
            check_memory_budget(memory_estimates(sizes, servers, len(workers),
                                                 sampler.batch_size, dtype.itemsize,
                                                 state_slots, staleness),
                                memory_budget_bytes, f"parameter server with {servers} server(s)",
                                advice="more servers (--servers) shrink a server's share; a "
                                       "worker holds the whole model, which only a pipeline "
                                       "(--mode pipeline) splits; or raise the budget")
        model = shard = None
        if link.rank in server_ranks:
            lo, hi = bounds[server_ranks.index(link.rank)]
            shard = np.empty(hi - lo, dtype=dtype)
            link.recv(shard, 0, TAG_INIT)
        else:
            model = make_model()
            got = model.parameters()
            if sum(p.size for p in got) != n or any(p.dtype != dtype for p in got):
                raise ValueError(f"parameter server: make_model() built {len(got)} arrays of "
                                 f"{sorted({str(p.dtype) for p in got})}, "
                                 f"{sum(p.size for p in got)} elements; expected {n} elements "
                                 f"of {dtype} for layer sizes {list(sizes)}")
            flat, offsets = flatten_parameters(got)
            if link.rank == 0:
                for (lo, hi), srv in zip(bounds, server_ranks):
                    link.send(flat[lo:hi], srv, TAG_INIT)
        buffers = shard if model is None else (flat, offsets)
        metrics = _train_ps(link, model, buffers, loss_fn, x_train, y_train, x_test, y_test,
                            bounds, workers, server_ranks, sampler, total_steps, make_optimizer,
                            lr_at, staleness)
    finally:
        link.free()
    if metrics is None:
        return None, None
    return metrics, model.parameters()


def memory_estimates(sizes, servers, workers, batch, itemsize, state_slots, staleness=0):
    """``{label: memory_bytes(...)-like dict}`` for every rank: a worker trains the whole model
    on its slice of the batch and keeps no optimizer state; a server keeps its shard, the
    shard's optimizer state, one receive buffer per worker and their sum (synchronous), or
    one receive buffer and one copy of the shard being sent per worker (asynchronous)."""
    n = sum(layer_parameter_counts(sizes))
    worker_batch = chunk_bounds(batch, workers)[0][1]  # the first slice is the largest
    worker = memory_bytes(sizes, range(len(sizes) - 1), worker_batch, itemsize, 0)
    estimates = {f"worker {w}": worker for w in range(workers)}
    for s, (lo, hi) in enumerate(shard_bounds(n, servers)):
        m = hi - lo
        if staleness == 0:
            parts = {"parameters": m * itemsize, "gradients": (workers + 1) * m * itemsize}
        else:  # the shard and a copy being sent to each worker; each worker's push
            parts = {"parameters": (1 + workers) * m * itemsize,
                     "gradients": workers * m * itemsize}
        parts.update(optimizer=state_slots * m * itemsize, activations=0)
        parts["total"] = sum(parts.values())
        estimates[f"server {s}"] = parts
    return estimates


def _train_ps(link, model, buffers, loss_fn, x_train, y_train, x_test, y_test, bounds, workers,
              server_ranks, sampler, total_steps, make_optimizer, lr_at, staleness):
    """The loops; ``buffers``: a server's shard, or a worker's ``(flat, offsets)``."""
    is_server = model is None
    timed = new_timed()
    run_start = time.perf_counter()
    if is_server:
        if staleness == 0:
            role = serve(link, buffers, bounds, workers, server_ranks, total_steps,
                         make_optimizer, lr_at, sampler, timed)
        else:
            role = serve_async(link, buffers, bounds, workers, server_ranks, total_steps,
                               make_optimizer, lr_at, staleness, timed)
        losses, stale, accuracy, test_loss = [], [], None, None
    else:
        role = f"worker {link.rank}"
        losses, stale = _work(link, model, *buffers, loss_fn, x_train, y_train, bounds, workers,
                              server_ranks, sampler, total_steps, timed, staleness > 0)
    wall = time.perf_counter() - run_start

    # Loss curve and test score among the workers only (a sub-communicator; servers idle).
    sub = link.mpi.Split(1 if is_server else 0, link.rank)
    try:
        if not is_server:
            total = np.empty(len(losses), dtype=np.float64)
            sub.Allreduce(np.array(losses, dtype=np.float64), total)
            losses = total.tolist()
            stale_max = sub.allreduce(max(stale, default=0), op=MPI.MAX)
            stale_sum = sub.allreduce(sum(stale), op=MPI.SUM)
            stale_count = sub.allreduce(len(stale), op=MPI.SUM)
            accuracy, test_loss = _evaluate(sub, model, loss_fn, x_test, y_test)
    finally:
        sub.Free()

    everyone = link.mpi.gather(rank_summary(timed, role), root=0)
    if link.rank != 0:
        return None
    itemsize = model.parameters()[0].dtype.itemsize
    n, n_workers = bounds[-1][1], len(workers)
    # Asynchronous: a server also sends each worker an 8-byte version with every shard.
    version_bytes = 8 if staleness else 0
    return {
        "mode": "ps", "ranks": link.size, "servers": len(server_ranks), "workers": n_workers,
        "parameters": n, "steps": len(losses), "loss_curve": losses,
        # Step c minus the version of the parameters a worker computed it with, over every
        # worker's steps: 0 in the synchronous loop, at most the bound in the asynchronous one.
        "staleness_bound": staleness,
        "staleness_observed": {"max": stale_max,
                               "mean": stale_sum / stale_count if stale_count else None},
        "final_test_accuracy": accuracy, "final_test_loss": test_loss,
        "samples_per_second": timed["samples"] / timed["seconds"] if timed["seconds"] else None,
        "timed_steps": timed["steps"],
        "step_time_seconds": step_times(timed),
        "per_rank": everyone,
        # A worker sends its whole gradient (and receives all parameters: 2n through the
        # servers); a server sends its shard to every worker (and receives as much).
        "formula_bytes_sent_per_step": [n * itemsize] * n_workers
        + [n_workers * ((hi - lo) * itemsize + version_bytes) for lo, hi in bounds],
        "wall_seconds": wall,
    }


def _work(link, model, flat, offsets, loss_fn, x_train, y_train, bounds, workers, server_ranks,
          sampler, total_steps, timed, asynchronous):
    """A worker's loop: pull, forward, backward, push; returns its share of each step's loss
    and the staleness of each step's parameters. ``flat``: the parameters, viewed by
    ``model.parameters()`` (:func:`flatten_parameters`). The loop is the same in both modes;
    ``asynchronous`` only adds the receive of each shard's version."""
    w = workers.index(link.rank)
    params = model.parameters()
    gflat = np.zeros_like(flat)
    grads = [gflat[offsets[i]:offsets[i + 1]].reshape(p.shape) for i, p in enumerate(params)]
    versions = np.zeros((len(server_ranks), 1), dtype=np.int64)

    def post_pull():
        pull = [link.irecv(flat[lo:hi], srv, TAG_PULL)
                for (lo, hi), srv in zip(bounds, server_ranks)]
        if asynchronous:
            pull += [link.irecv(versions[i], srv, TAG_VERSION)
                     for i, srv in enumerate(server_ranks)]
        return pull

    losses, stale = [], []
    pending = post_pull()
    for step, batch, batch_size in sampler.steps(total_steps):
        t0 = time.perf_counter()
        before = link.counters()
        link.waitall(pending)  # this step's parameters (and last step's push delivered)
        # Synchronous: a server answers the pull of step c only after every worker's c
        # pushes, so the version is c.
        stale.append(step - int(versions.min()) if asynchronous else 0)
        a, b = chunk_bounds(len(batch), len(workers))[w]
        idx = batch[a:b]
        logits = model.forward(x_train[idx])
        # Scaled by the global batch size: the workers' gradients sum to the batch's.
        loss, dlogits = loss_fn(logits, y_train[idx], scale=1.0 / batch_size)
        model.backward(dlogits, grads)
        pending = [link.isend(gflat[lo:hi], srv, TAG_PUSH)
                   for (lo, hi), srv in zip(bounds, server_ranks)]
        # gflat is written again only after the next pull, which a server answers only
        # once it has received this push (in both modes): no separate wait needed for the
        # sends.
        pending += post_pull()
        t1 = time.perf_counter()
        losses.append(loss)
        if step > 0:  # as the servers: the first step is not timed
            record_step(timed, link, before, batch_size, t1 - t0)
    link.waitall(pending)  # the final parameters
    return losses, stale


def _evaluate(sub, model, loss_fn, x_test, y_test):
    """Test accuracy and mean loss; each worker scores a contiguous part, summed over ``sub``."""
    start, stop = chunk_bounds(len(x_test), sub.Get_size())[sub.Get_rank()]
    logits = model.forward(x_test[start:stop])
    loss, _ = loss_fn(logits, y_test[start:stop])
    correct = float(np.sum(np.argmax(logits, axis=1) == y_test[start:stop]))
    total = np.empty(2)
    sub.Allreduce(np.array([correct, loss]), total)
    return float(total[0] / len(x_test)), float(total[1] / len(x_test))
