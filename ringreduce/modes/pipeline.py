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
from mpi4py import MPI

from ..transport.comm import PoliteComm
from ..core.schedule import chunk_bounds
from ..training import NonFiniteGradientError

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
# Pure parts: schedule, partition, memory
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


def layer_parameter_counts(sizes):
    """Parameters of each layer of an MLP with layer sizes ``sizes``: fan_in * fan_out + fan_out."""
    return [a * b + b for a, b in zip(sizes[:-1], sizes[1:])]


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


def mlp_layer_parameters(sizes, seed, dtype, layers):
    """``[W, b, ...]`` of the given ``layers`` of ``examples/mlp.py``'s ``MLP(sizes, dtype, seed)``,
    without allocating the others.

    The MLP draws every weight matrix in turn from ``np.random.default_rng([seed, 1])`` (He
    normal, std ``sqrt(2 / fan_in)``; biases zero). Replaying that stream and keeping only the
    wanted layers gives the same values while holding at most one other layer at a time: a
    stage of a model too large for one rank never builds the whole model. The pure tests check
    this against ``MLP`` itself.
    """
    dtype = np.dtype(dtype)
    keep = set(layers)
    rng = np.random.default_rng([seed, 1])
    out = []
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if layer > max(keep, default=-1):
            break
        w = rng.standard_normal((fan_in, fan_out))
        if layer in keep:
            w *= np.sqrt(2.0 / fan_in)
            out.append(np.ascontiguousarray(w, dtype=dtype))
            out.append(np.zeros(fan_out, dtype=dtype))
        del w
    return out


def memory_bytes(sizes, layers, batch, itemsize, state_slots):
    """Estimated bytes a rank needs to train ``layers`` of an MLP with sizes ``sizes`` on a
    batch of ``batch`` samples: ``{"parameters", "gradients", "optimizer", "activations",
    "total"}``.

    Parameters and gradients: one value per parameter each; optimizer state: ``state_slots``
    values per parameter (SGD with momentum 1, Adam 2, plain SGD 0). Activations: the input of
    every layer kept for the backward, plus the last layer's output and its gradient, for all
    ``batch`` samples (a pipeline stage keeps every micro-batch's, so ``batch`` is the whole
    batch there). The training data is not counted: it belongs to the data loader, not the model.
    """
    layers = list(layers)
    counts = layer_parameter_counts(sizes)
    n_params = sum(counts[layer] for layer in layers)
    acts = batch * (sum(sizes[layer] for layer in layers) + 2 * sizes[layers[-1] + 1])
    parts = {"parameters": n_params * itemsize, "gradients": n_params * itemsize,
             "optimizer": state_slots * n_params * itemsize, "activations": acts * itemsize}
    parts["total"] = sum(parts.values())
    return parts


class MemoryBudgetError(MemoryError):
    """A rank's estimated memory exceeds the budget it was given."""


PIPELINE_ADVICE = "split the model over more pipeline stages (--mode pipeline), or raise the budget"


def check_memory_budget(estimates, budget_bytes, what, advice=PIPELINE_ADVICE):
    """Raise :class:`MemoryBudgetError` if any estimate exceeds ``budget_bytes``.

    ``estimates``: ``{label: memory_bytes(...)}`` for every rank (the same on every rank, so
    every rank raises the same error at the same point instead of one waiting on another).
    ``what`` names the mode in the message, ``advice`` ends it.
    """
    over = {label: e for label, e in estimates.items() if e["total"] > budget_bytes}
    if not over:
        return
    mib = 2.0 ** 20
    label, e = max(over.items(), key=lambda kv: kv[1]["total"])
    detail = ", ".join(f"{k} {v / mib:.2f}" for k, v in e.items() if k != "total")
    raise MemoryBudgetError(
        f"{what}: {label} needs an estimated {e['total'] / mib:.2f} MiB ({detail} MiB), over "
        f"the memory budget of {budget_bytes / mib:.2f} MiB"
        + (f" ({len(over)} of {len(estimates)} ranks are over)" if len(estimates) > 1 else "")
        + f"; {advice}")


# ---------------------------------------------------------------------------------------------
# Transport
# ---------------------------------------------------------------------------------------------

class CountingComm:
    """A private duplicate of a communicator whose point-to-point calls count what they hand
    to MPI: ``bytes_sent``, ``bytes_received`` and ``wait_seconds`` (time blocked in a
    blocking call or a wait). Buffers travel as raw bytes, as in the library's own transport.

    The duplicate keeps these messages apart from the user's and from the allreduce engine's.
    Waits poll and nap (``PoliteComm.POLL_SLEEP``) instead of spinning inside MPI, for the
    reason the engine does: with more ranks than cores (a parameter server and its workers on
    one box), a spinning wait takes the core that the rank being waited for needs.
    Creating one is collective over ``comm``; :meth:`free` releases it.
    """

    def __init__(self, comm=None):
        self.mpi = (MPI.COMM_WORLD if comm is None else comm).Dup()
        self.rank = self.mpi.Get_rank()
        self.size = self.mpi.Get_size()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.wait_seconds = 0.0

    def send(self, buf, dest, tag):
        self.waitall([self.isend(buf, dest, tag)])

    def recv(self, buf, source, tag):
        self.waitall([self.irecv(buf, source, tag)])

    def isend(self, buf, dest, tag):
        self.bytes_sent += buf.nbytes
        return self.mpi.Isend([buf, MPI.BYTE], dest, tag)

    def irecv(self, buf, source, tag):
        self.bytes_received += buf.nbytes
        return self.mpi.Irecv([buf, MPI.BYTE], source, tag)

    def waitall(self, requests):
        if requests:
            t = time.perf_counter()
            while not MPI.Request.Testall(requests):
                time.sleep(PoliteComm.POLL_SLEEP)
            self.wait_seconds += time.perf_counter() - t

    def counters(self):
        return self.bytes_sent, self.bytes_received, self.wait_seconds

    def free(self):
        self.mpi.Free()


def new_timed():
    """The per-rank step accounts that ``record_step`` adds to and ``_rank_summary`` reads."""
    return {"steps": 0, "samples": 0, "seconds": 0.0, "wait": 0.0, "update": 0.0,
            "sent": 0, "received": 0}


def record_step(timed, link, before, samples, seconds, update=0.0):
    """Add one timed step to ``timed``; ``before`` is ``link.counters()`` from its start."""
    sent0, recv0, wait0 = before
    sent1, recv1, wait1 = link.counters()
    timed["steps"] += 1
    timed["samples"] += samples
    timed["seconds"] += seconds
    timed["wait"] += wait1 - wait0
    timed["update"] += update
    timed["sent"] += sent1 - sent0
    timed["received"] += recv1 - recv0


def warm_up_optimizer(make_optimizer, dtype):
    """Compile the optimizer's Numba kernels for ``dtype`` now, on a one-element scratch
    parameter. Otherwise one rank's first update compiles them (seconds), and the ranks waiting
    for that rank's next message wait through it in a step that is timed."""
    make_optimizer([np.zeros(1, dtype=dtype)]).step([np.zeros(1, dtype=dtype)])


# ---------------------------------------------------------------------------------------------
# One stage
# ---------------------------------------------------------------------------------------------

class Stage:
    """Layers ``[first, stop)`` of a ReLU MLP with sizes ``sizes``, with the arithmetic of
    ``examples/mlp.py`` (``h = relu(h @ W + b)``, no ReLU after the model's last layer), and
    the inputs of every micro-batch in flight kept for its backward.

    ``params`` is ``[W_first, b_first, ...]``. :meth:`backward` adds into ``grads`` (gradient
    accumulation over micro-batches) and returns the gradient with respect to the stage's
    input, or ``None`` on the stage that holds layer 0 (nobody needs the data's gradient).
    """

    def __init__(self, sizes, first, stop, params):
        if not 0 <= first < stop <= len(sizes) - 1:
            raise ValueError(f"Stage needs 0 <= first < stop <= {len(sizes) - 1} (layers), got "
                             f"first={first}, stop={stop}")
        if len(params) != 2 * (stop - first):
            raise ValueError(f"Stage of layers [{first}, {stop}) expected "
                             f"{2 * (stop - first)} parameters, got {len(params)}")
        self.sizes, self.first, self.stop, self.params = list(sizes), first, stop, list(params)
        self.num_model_layers = len(sizes) - 1
        self._inputs = {}  # micro-batch -> the input of each of this stage's layers

    def forward(self, x, micro):
        if x.ndim != 2 or x.shape[1] != self.sizes[self.first]:
            raise ValueError(f"stage of layers [{self.first}, {self.stop}) expected input of "
                             f"shape (batch, {self.sizes[self.first]}), got {x.shape}")
        if micro in self._inputs:
            raise RuntimeError(f"forward of micro-batch {micro} twice before its backward")
        inputs = []
        h = x
        for i, layer in enumerate(range(self.first, self.stop)):
            w, b = self.params[2 * i], self.params[2 * i + 1]
            inputs.append(h)
            h = h @ w
            h += b
            if layer < self.num_model_layers - 1:
                np.maximum(h, 0, out=h)
        self._inputs[micro] = inputs
        return h

    def backward(self, d, micro, grads):
        inputs = self._inputs.pop(micro)  # KeyError: backward without its forward
        for i in reversed(range(self.stop - self.first)):
            layer = self.first + i
            h_in = inputs[i]
            grads[2 * i + 1] += d.sum(axis=0)
            grads[2 * i] += h_in.T @ d
            if layer == 0:
                return None
            # The ReLU before this layer passed gradient only where its output was > 0.
            d = d @ self.params[2 * i].T
            d *= h_in > 0
        return d

    def forward_only(self, x):
        """Forward without keeping anything (evaluation)."""
        h = x
        for i, layer in enumerate(range(self.first, self.stop)):
            h = h @ self.params[2 * i]
            h += self.params[2 * i + 1]
            if layer < self.num_model_layers - 1:
                np.maximum(h, 0, out=h)
        return h


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

    mine = _rank_summary(timed, f"stage {stage_id} (layers {first}..{stop - 1})")
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
        "step_time_seconds": _step_times(timed),
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


def _rank_summary(timed, role):
    """Per-step averages of one rank's timed steps (the first step is not timed)."""
    n = timed["steps"]
    return {"role": role,
            "bytes_sent_per_step": timed["sent"] / n if n else None,
            "bytes_received_per_step": timed["received"] / n if n else None,
            "wait_seconds_per_step": timed["wait"] / n if n else None,
            "step_seconds": timed["seconds"] / n if n else None}


def _step_times(timed):
    n = timed["steps"]
    if not n:
        return {"compute": None, "comm_wait": None, "update": None, "total": None}
    return {"compute": (timed["seconds"] - timed["wait"] - timed["update"]) / n,
            "comm_wait": timed["wait"] / n, "update": timed["update"] / n,
            "total": timed["seconds"] / n}
