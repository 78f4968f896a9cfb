r"""The servers of the parameter server (``ps.py``): the synchronous loop (:func:`serve`), the
asynchronous one (:func:`serve_async`) and the rule it answers pulls by (:func:`may_answer`);
the workers' side and the roles are in ``ps.py``.

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
a wildcard source: each waits on one worker's push. K = 0 is the synchronous loop
(:func:`serve`, the step drawn in ``ps.py``), not this loop with K = 0: that would apply the
pushes one by one in arrival order, which changes momentum and gives a different sum from run
to run.

Each reply is a copy of the shard (the shard changes while the send is in flight) and a
second, 8-byte message with its version; a worker's staleness for step c is c minus the
smallest version of the S shards it got. Per step a worker sends n and receives n + 8 S
bytes; a server sends W (n / S + 8).
"""
import time

import numpy as np
from mpi4py import MPI

from ..training.optim import NonFiniteGradientError
from .common import record_step, warm_up_optimizer

__all__ = ["may_answer", "serve", "serve_async"]

TAG_PUSH = 201    # gradient shard, worker -> server
TAG_PULL = 202    # parameter shard, server -> worker
TAG_INIT = 203    # initial parameter shard, worker 0 -> server, once
TAG_VERSION = 204  # asynchronous only: the version of the shard just pulled, server -> worker


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


def _batch_sizes(sampler, total_steps):
    """Global batch size of each step, in the order the workers take them (the same every
    epoch: only the order of the samples changes)."""
    per_epoch = [sampler.global_batch_size(s) for s in range(len(sampler))]
    return (per_epoch * (total_steps // len(per_epoch) + 1))[:total_steps]


def serve(link, shard, bounds, workers, server_ranks, total_steps, make_optimizer, lr_at,
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


def serve_async(link, shard, bounds, workers, server_ranks, total_steps, make_optimizer, lr_at,
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
        i = link.waitany(pushes)
        if i == MPI.UNDEFINED:
            raise RuntimeError("parameter server: waited for a push, but none is expected")
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
