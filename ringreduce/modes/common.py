"""What the parameter server (``ps.py``) and the pipeline (``pipeline.py``) share: the MLP's
parameter counts and memory estimate, the memory budget check, the counting communicator both
send through, and the per-rank step accounts their metrics report."""
import time

import numpy as np
from mpi4py import MPI

from ..transport.comm import PoliteComm

__all__ = ["layer_parameter_counts", "memory_bytes", "check_memory_budget", "MemoryBudgetError",
           "CountingComm", "new_timed", "record_step", "rank_summary", "step_times",
           "warm_up_optimizer"]


# ---------------------------------------------------------------------------------------------
# Sizes and memory
# ---------------------------------------------------------------------------------------------

def layer_parameter_counts(sizes):
    """Parameters of each layer of an MLP with layer sizes ``sizes``: fan_in * fan_out + fan_out."""
    return [a * b + b for a, b in zip(sizes[:-1], sizes[1:])]


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
# Transport and accounts
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

    def waitany(self, requests):
        """Index of a request of ``requests`` that completed, waiting as :meth:`waitall` does;
        ``MPI.UNDEFINED`` when none of them is active."""
        t = time.perf_counter()
        while True:
            index, done = MPI.Request.Testany(requests)
            if done:
                break
            time.sleep(PoliteComm.POLL_SLEEP)
        self.wait_seconds += time.perf_counter() - t
        return index

    def counters(self):
        return self.bytes_sent, self.bytes_received, self.wait_seconds

    def free(self):
        self.mpi.Free()


def new_timed():
    """The per-rank step accounts that ``record_step`` adds to and ``rank_summary`` reads."""
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


def rank_summary(timed, role):
    """Per-step averages of one rank's timed steps (the first step is not timed)."""
    n = timed["steps"]
    return {"role": role,
            "bytes_sent_per_step": timed["sent"] / n if n else None,
            "bytes_received_per_step": timed["received"] / n if n else None,
            "wait_seconds_per_step": timed["wait"] / n if n else None,
            "step_seconds": timed["seconds"] / n if n else None}


def step_times(timed):
    """Mean seconds per timed step: compute, waiting for messages, optimizer update, total."""
    n = timed["steps"]
    if not n:
        return {"compute": None, "comm_wait": None, "update": None, "total": None}
    return {"compute": (timed["seconds"] - timed["wait"] - timed["update"]) / n,
            "comm_wait": timed["wait"] / n, "update": timed["update"] / n,
            "total": timed["seconds"] / n}
