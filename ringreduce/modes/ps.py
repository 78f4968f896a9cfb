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
(:class:`~ringreduce.pipeline.CountingComm`), which counts the bytes handed to MPI.

Asynchronous, with a staleness bound K >= 1 (``staleness=K``; Stale Synchronous Parallel, Ho
et al. 2013, and the asynchronous server of Li et al. 2014). A worker's *clock* is the number
of gradients it has pushed; it computes step c with parameters of *version* v, and c - v is
its *staleness*. A shard's version is the smallest clock over the workers when the server
sends it: every push of every step below v is in the shard (and some pushes of faster
workers' later steps may be too). No worker waits for the others' pushes, only for the
slowest worker to be within K steps:

    worker w, step c = 0 .. T-1          server (each one, for its shard)
      wait for the reply to pull c       loop over the W T pushes, whichever arrives first:
      compute on its slice of batch c      push c of w: optimizer step on the shard with it
      push c; post pull c + 1                (lr of step c), clock[w] = c + 1; pull c + 1 of
                                             w is now pending
                                           answer every pending pull c' for which
                                             may_answer(c', clocks, K, T): min(clocks) >= c' - K
                                             (the final pull, c' = T, only when min = T)

Update rule: a server applies each push on its own, as it arrives: its optimizer step with
that worker's gradient, still scaled by 1 / (global batch), so one push is that worker's share
of the batch's gradient and the W pushes of a step add up to the whole batch's. Plain SGD
therefore moves a shard by lr x (batch gradient) per round of W pushes, as the synchronous
server does, except that each gradient was taken at parameters up to K steps old. Weight
decay is part of the batch's gradient, so each push carries 1 / W of it (the server's
optimizer runs with ``weight_decay / W``); momentum is updated once per push (W times a
round, so a round keeps ``momentum ** W`` of the velocity rather than ``momentum``); Adam
normalises each push by itself, so a round moves about W times as far: divide its lr by W.

Why it cannot hang, and why every message is received: a worker sends exactly T pushes to
every server and receives exactly T + 1 replies (pulls 0 .. T); a server keeps one receive
posted per worker until that worker's T pushes are in, and answers each worker's pulls 0 .. T
exactly once. Pull 0 is answered at once. If every worker waited, the slowest, at clock m,
would be waiting for pull m, which every server may answer once it has the push that made the
pull pending (m >= m - K; and when m = T every clock is T): so some worker can always move,
and each server's loop ends after W T pushes, with every final pull answered. No receive uses
a wildcard source: each waits on one worker's push. K = 0 is the synchronous loop above, not
this loop with K = 0: that would apply the pushes one by one in arrival order, which changes
momentum and gives a different sum from run to run.

Each reply is a copy of the shard (the shard changes while the send is in flight) and a
second, 8-byte message with its version; a worker's staleness for step c is c minus the
smallest version of the S shards it got. Per step a worker sends n and receives n + 8 S
bytes; a server sends W (n / S + 8).
"""
import time

import numpy as np
from mpi4py import MPI

from ..transport.comm import PoliteComm
from ..config import is_whole
from ..core.schedule import chunk_bounds
from .pipeline import (CountingComm, _rank_summary, _step_times, check_memory_budget,
                       layer_parameter_counts, memory_bytes, new_timed, record_step,
                       warm_up_optimizer)
from ..training import NonFiniteGradientError

__all__ = ["shard_bounds", "roles", "flatten_parameters", "memory_estimates", "may_answer",
           "train_ps"]

TAG_PUSH = 201    # gradient shard, worker -> server
TAG_PULL = 202    # parameter shard, server -> worker
TAG_INIT = 203    # initial parameter shard, worker 0 -> server, once
TAG_VERSION = 204  # asynchronous only: the version of the shard just pulled, server -> worker


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


def may_answer(clock, clocks, staleness, total_steps):
    """Whether a server may answer now the pull of a worker that has pushed ``clock`` gradients.

    ``clocks``: the pushes the server has received from each worker; ``staleness``: the bound K.
    The pull of step ``clock`` is answered once every worker has pushed at least
    ``clock - staleness`` times (the SSP condition), so the parameters it returns miss at most
    K steps of any worker. The final pull (``clock == total_steps``) waits for every push, so
    every worker ends with the same parameters.
    """
    if not 0 <= clock <= total_steps:
        raise ValueError(f"a worker's clock must be in 0..{total_steps}, got {clock}")
    slowest = min(clocks)
    if clock == total_steps:
        return slowest == total_steps
    return slowest >= clock - staleness


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
    (see the module docstring for both).

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
            role = _serve(link, buffers, bounds, workers, server_ranks, total_steps,
                          make_optimizer, lr_at, sampler, timed)
        else:
            role = _serve_async(link, buffers, bounds, workers, server_ranks, total_steps,
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

    everyone = link.mpi.gather(_rank_summary(timed, role), root=0)
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
        "step_time_seconds": _step_times(timed),
        "per_rank": everyone,
        # A worker sends its whole gradient (and receives all parameters: 2n through the
        # servers); a server sends its shard to every worker (and receives as much).
        "formula_bytes_sent_per_step": [n * itemsize] * n_workers
        + [n_workers * ((hi - lo) * itemsize + version_bytes) for lo, hi in bounds],
        "wall_seconds": wall,
    }


def _serve(link, shard, bounds, workers, server_ranks, total_steps, make_optimizer, lr_at,
           sampler, timed):
    """A server's loop: answer the pull, collect the pushes, sum in worker order, update."""
    s = server_ranks.index(link.rank)
    lo, hi = bounds[s]
    opt = make_optimizer([shard])
    warm_up_optimizer(make_optimizer, shard.dtype)
    inbox = np.empty((len(workers), hi - lo), dtype=shard.dtype)
    summed = np.empty_like(shard)
    batch_sizes = _batch_sizes(sampler, total_steps)
    for step in range(total_steps):
        t0 = time.perf_counter()
        before = link.counters()
        # Pull: the current shard to every worker. Waited for before the update below changes
        # the shard (each worker has already posted its receive, so this does not block long).
        link.waitall([link.isend(shard, w, TAG_PULL) for w in workers])
        link.waitall([link.irecv(inbox[i], w, TAG_PUSH) for i, w in enumerate(workers)])
        t1 = time.perf_counter()
        # Fixed worker order: the same sum whatever order the messages arrived in.
        np.copyto(summed, inbox[0])
        for i in range(1, len(workers)):
            summed += inbox[i]
        if not np.isfinite(summed).all():
            raise NonFiniteGradientError(f"parameter server {s}: step {step}: the summed "
                                         f"gradient holds NaN or Inf; stopping")
        opt.lr = lr_at(step)
        opt.step([summed])
        t2 = time.perf_counter()
        if step > 0:  # the first step compiles the Numba optimizer kernels: not timed
            record_step(timed, link, before, batch_sizes[step], t2 - t0, t2 - t1)
    link.waitall([link.isend(shard, w, TAG_PULL) for w in workers])  # the final parameters
    return f"server {s} (elements {lo}..{hi - 1})"


def _serve_async(link, shard, bounds, workers, server_ranks, total_steps, make_optimizer, lr_at,
                 staleness, timed):
    """An asynchronous server's loop: apply each push as it arrives, answer each pull as soon
    as :func:`may_answer` allows (the protocol and why it ends: the module docstring).

    Its accounts cover the T pushes and the replies to pulls 1 .. T of every worker (pull 0,
    the starting shard, is sent before), as T steps: a server has no step of its own, and
    this way its bytes per step are the formula's exactly."""
    s = server_ranks.index(link.rank)
    lo, hi = bounds[s]
    n_workers = len(workers)
    opt = make_optimizer([shard])
    # Weight decay belongs to the batch's gradient, and each push is 1 / W of a batch.
    if getattr(opt, "weight_decay", 0):
        opt.weight_decay /= n_workers
    warm_up_optimizer(make_optimizer, shard.dtype)
    inbox = np.empty((n_workers, hi - lo), dtype=shard.dtype)   # one push per worker
    outbox = np.empty((n_workers, hi - lo), dtype=shard.dtype)  # one reply per worker
    out_version = np.zeros((n_workers, 1), dtype=np.int64)
    clocks = [0] * n_workers    # pushes received from each worker
    answered = [-1] * n_workers  # the last pull answered, per worker
    sending = [[] for _ in workers]

    def answer(i):
        # The previous reply to this worker has arrived (it has pushed since), so this wait
        # only frees its request before its buffers are reused.
        link.waitall(sending[i])
        np.copyto(outbox[i], shard)
        out_version[i] = min(clocks)
        sending[i] = [link.isend(outbox[i], workers[i], TAG_PULL),
                      link.isend(out_version[i], workers[i], TAG_VERSION)]
        answered[i] = clocks[i]

    for i in range(n_workers):
        answer(i)  # pull 0: the starting shard, version 0
    before = link.counters()
    t0 = time.perf_counter()
    update = 0.0
    pushes = [link.irecv(inbox[i], w, TAG_PUSH) if total_steps else MPI.REQUEST_NULL
              for i, w in enumerate(workers)]
    for _ in range(n_workers * total_steps):
        i = _wait_any(link, pushes)
        step = clocks[i]
        t1 = time.perf_counter()
        if not np.isfinite(inbox[i]).all():
            raise NonFiniteGradientError(f"parameter server {s}: step {step} of worker "
                                         f"{workers[i]}: the gradient holds NaN or Inf; "
                                         f"stopping")
        opt.lr = lr_at(step)
        opt.step([inbox[i]])
        update += time.perf_counter() - t1
        clocks[i] += 1
        if clocks[i] < total_steps:
            pushes[i] = link.irecv(inbox[i], workers[i], TAG_PUSH)
        for j in range(n_workers):
            if answered[j] < clocks[j] and may_answer(clocks[j], clocks, staleness,
                                                      total_steps):
                answer(j)
    link.waitall([r for reqs in sending for r in reqs])  # the final parameters
    if answered != [total_steps] * n_workers:  # cannot happen: the module docstring's proof
        raise RuntimeError(f"parameter server {s}: ended with pulls {answered} answered, "
                           f"expected {total_steps} for every worker")
    sent0, recv0, wait0 = before
    sent1, recv1, wait1 = link.counters()
    timed.update(steps=total_steps, seconds=time.perf_counter() - t0, wait=wait1 - wait0,
                 update=update, sent=sent1 - sent0, received=recv1 - recv0)
    return f"server {s} (elements {lo}..{hi - 1})"


def _wait_any(link, requests):
    """Index of a request of ``requests`` that completed, waiting politely as ``link`` does
    (and counting the time in its ``wait_seconds``)."""
    t = time.perf_counter()
    while True:
        index, done = MPI.Request.Testany(requests)
        if done:
            break
        time.sleep(PoliteComm.POLL_SLEEP)
    link.wait_seconds += time.perf_counter() - t
    if index == MPI.UNDEFINED:
        raise RuntimeError("parameter server: waited for a push, but none is expected")
    return index


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


def _batch_sizes(sampler, total_steps):
    """Global batch size of each step, in the order the workers take them (the same every
    epoch: only the order of the samples changes)."""
    per_epoch = [sampler.global_batch_size(s) for s in range(len(sampler))]
    return (per_epoch * (total_steps // len(per_epoch) + 1))[:total_steps]


def _evaluate(sub, model, loss_fn, x_test, y_test):
    """Test accuracy and mean loss; each worker scores a contiguous part, summed over ``sub``."""
    start, stop = chunk_bounds(len(x_test), sub.Get_size())[sub.Get_rank()]
    logits = model.forward(x_test[start:stop])
    loss, _ = loss_fn(logits, y_test[start:stop])
    correct = float(np.sum(np.argmax(logits, axis=1) == y_test[start:stop]))
    total = np.empty(2)
    sub.Allreduce(np.array([correct, loss]), total)
    return float(total[0] / len(x_test)), float(total[1] / len(x_test))
