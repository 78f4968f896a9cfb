"""Collective parts of data-parallel training: every rank starts from the same weights
(:func:`broadcast_parameters`) and reduces its gradients in buckets as backward produces them
(:class:`GradSync`). Why a ``sum`` of losses scaled by the global batch size gives one rank's
gradient: the ``ringreduce.training`` package docstring.
"""
import contextlib
import itertools
import time

import numpy as np
from mpi4py import MPI

from ..collectives.grouped import grouped_allreduce
from ..config import is_whole
from ..core.fusion import assign_buckets
from ..core.tables import check_compression
from ..engine.api import allreduce_async
from ..errors import agree
from ..transport.comm import control_comm, detects_failures

__all__ = ["broadcast_parameters", "GradSync"]


def _describe(a):
    return f"{a.dtype}{tuple(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__


@detects_failures
def broadcast_parameters(arrays, root=0, comm=None):
    """Overwrite ``arrays`` on every rank with the root's values, in place.

    ``arrays`` is a sequence of writable C-contiguous numpy arrays, the same number, shapes and
    dtypes on every rank; this is checked first (one small broadcast plus one allgather) and a
    mismatch raises ``ValueError`` on *every* rank, naming the ranks and what they hold, instead
    of letting mismatched broadcasts hang or scribble over memory. Collective over ``comm``
    (default ``COMM_WORLD``).
    """
    c = control_comm(comm)
    rank, size = c.Get_rank(), c.Get_size()
    # Every rank sees every rank's root, so a bad or differing root raises on all of them
    # (a root checked on one rank alone would leave the others waiting in the broadcast).
    roots = c.allgather(root)
    if any(r != root for r in roots):
        raise ValueError(f"broadcast_parameters: ranks passed different roots {roots}; "
                         "every rank must pass the same root")
    if not (is_whole(root, 0) and root < size):
        raise ValueError(f"broadcast_parameters: root must be in [0, {size}) (an int), got "
                         f"{root!r}")
    arrays = list(arrays)
    problem = ""
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            problem = f"array {i} is a {type(a).__name__}, expected a numpy array"
        elif not (a.flags.c_contiguous and a.flags.writeable):
            problem = f"array {i} ({_describe(a)}) is not a writable C-contiguous array"
        if problem:
            break
    signature = ";".join(_describe(a) for a in arrays).encode()

    # The root's signature travels as bytes (no pickling), then every rank says whether it
    # matches; all ranks see all answers, so they all raise or all go on together.
    length = np.array([len(signature)], dtype=np.int64)
    c.Bcast(length, root=root)
    root_signature = bytearray(signature) if rank == root else bytearray(int(length[0]))
    c.Bcast([root_signature, MPI.BYTE], root=root)
    if not problem and bytes(root_signature) != signature:
        problem = (f"rank {rank} holds [{signature.decode()}], root {root} holds "
                   f"[{bytes(root_signature).decode()}]")
    flags = np.zeros(size, dtype=np.int32)
    c.Allgather(np.array([1 if problem else 0], dtype=np.int32), flags)
    bad = [int(r) for r in np.flatnonzero(flags)]
    if bad:
        detail = problem or "see the error raised on those ranks"
        raise ValueError(f"broadcast_parameters: ranks {bad} cannot take root {root}'s arrays: "
                         f"{detail}")
    for a in arrays:
        if a.size:
            c.Bcast([a, MPI.BYTE], root=root)


def _reverse_buckets(params, cap_bytes):
    """Parameter indices grouped into buckets, last parameter first.

    The packing is the library's :func:`assign_buckets` (in order, within ``cap_bytes``, a
    parameter larger than the cap alone) over the reversed list, cut additionally wherever the
    dtype changes, since one flat buffer per bucket needs one dtype. Pure: testable without MPI.
    """
    order = list(reversed(range(len(params))))
    buckets, start = [], 0
    while start < len(order):
        stop = start
        while stop < len(order) and params[order[stop]].dtype == params[order[start]].dtype:
            stop += 1
        run = order[start:stop]
        for group in assign_buckets([params[i].nbytes for i in run], cap_bytes):
            buckets.append([run[j] for j in group])
        start = stop
    return buckets


_gradsync_ids = itertools.count()


def _check_params(params, cap):
    """Local checks of GradSync's arguments."""
    if not params:
        raise ValueError("GradSync needs at least one parameter")
    for i, p in enumerate(params):
        if not isinstance(p, np.ndarray):
            raise TypeError(f"GradSync: parameter {i} is a {type(p).__name__}, expected a "
                            f"numpy array")
    if not is_whole(cap, 1):
        raise ValueError(f"bucket_cap_bytes must be an int >= 1, got {cap!r}")


def _check_same_layout(params, cap, comm):
    """Collective: the local checks on every rank, then ValueError on every rank unless all
    ranks registered parameters of the same shapes and dtypes, in the same order, with the
    same bucket cap. A rank whose own arguments are bad raises its error; the others say so."""
    try:
        _check_params(params, cap)
        problem, mine = None, (int(cap), [(tuple(p.shape), str(p.dtype)) for p in params])
    except (TypeError, ValueError) as exc:
        problem, mine = exc, None
    everyone = agree(control_comm(comm), mine, problem, "GradSync")
    for r, (their_cap, theirs) in enumerate(everyone):
        if their_cap != everyone[0][0]:
            raise ValueError(f"GradSync: ranks passed different bucket_cap_bytes: rank 0 "
                             f"{everyone[0][0]}, rank {r} {their_cap}")
        if len(theirs) != len(everyone[0][1]):
            raise ValueError(f"GradSync expects the same parameters on every rank, but rank 0 "
                             f"has {len(everyone[0][1])} and rank {r} has {len(theirs)}")
        for i, (a, b) in enumerate(zip(everyone[0][1], theirs)):
            if a != b:
                raise ValueError(f"GradSync expects the same parameters on every rank, but "
                                 f"parameter {i} is {a[1]}{a[0]} on rank 0 and "
                                 f"{b[1]}{b[0]} on rank {r}")


class GradSync:
    """Bucketed, overlapped gradient allreduce for a fixed list of parameters (DDP-like).

    ``GradSync(params)`` allocates one flat buffer per bucket and exposes ``grads``: for each
    parameter, a view of its place in a bucket buffer with the parameter's shape and dtype.
    The model's backward writes its gradients straight into ``grads[i]`` (zero-copy, like
    DDP's ``gradient_as_bucket_view``), so nothing is packed before sending or unpacked after.

    Buckets hold parameters in *reverse* order, because backward produces the last layer's
    gradients first; a bucket holds at most ``bucket_cap_bytes`` (a larger parameter gets one
    to itself). Per step::

        sync.zero_grad()                      # only if backward accumulates
        model.backward(..., grads=sync.grads, on_ready=sync.mark_ready)
        finite = sync.wait()                  # all buckets reduced, in place
        if finite: optimizer.step(sync.grads)

    ``mark_ready(i)`` says ``grads[i]`` is final; when a bucket's last gradient is marked, its
    ``allreduce_async(op="sum")`` starts at once and runs in the library's background thread
    while backward goes on with earlier layers. :meth:`wait` starts any bucket not started yet,
    waits for all of them and returns whether every reduced gradient is finite. The reduced
    buffer is bitwise identical on every rank, so that check gives the same answer on every
    rank without another message: a NaN or Inf in one rank's gradient becomes a NaN or Inf in
    everyone's sum.

    Averaging: reduce with ``op="sum"`` gradients of losses scaled by ``1/B``, B the *global*
    batch size (the package docstring): exact for uneven per-rank batches, no extra pass.

    ``overlap=False`` reduces every bucket in :meth:`wait` instead, with one blocking
    ``rr.grouped_allreduce`` in the caller's thread: the synchronous baseline, which needs no
    background engine at all (to measure what overlap buys, and what it costs). Inside
    ``with sync.no_sync():`` nothing is sent and ``mark_ready`` is ignored, for gradient
    accumulation: accumulate into ``grads`` over several micro-batches and sync on the last
    one, outside the block.

    Every rank must register the same parameters, and create its ``GradSync`` objects in the
    same order: a bucket's allreduce is matched across ranks by its name, ``gradsync<i>.bucket<k>``
    (the engine negotiates names, so ranks may start buckets in different orders). The
    constructor is collective and checks that (as DDP's does): ranks whose parameter shapes,
    dtypes or bucket caps differ all raise ValueError, naming the first difference, rather
    than wait for buckets the others never send.

    ``compression="bf16"`` or ``"fp16"`` sends float32 gradients as 16-bit values
    (``collectives/compress.py``); ``error_feedback=True`` keeps each bucket's rounding
    residual and adds it to the next step's gradients, so compression delays what it rounds
    away instead of losing it. Every rank must pass the same compression (checked by the
    engine's negotiation or the header, with an error on every rank).
    """

    @detects_failures
    def __init__(self, params, *, bucket_cap_bytes=25 * 2**20, comm=None, overlap=True,
                 algorithm="auto", compression=None, error_feedback=False):
        self.params = list(params)
        _check_same_layout(self.params, bucket_cap_bytes, comm)  # collective
        for p in self.params:
            check_compression(compression, p.dtype, "sum")  # float32 only: say so now
        if error_feedback and compression is None:
            raise ValueError("GradSync: error_feedback=True needs a compression ('bf16' or "
                             "'fp16'), got compression=None")
        self.comm = comm
        self.compression = compression
        self.overlap = bool(overlap)
        self.algorithm = algorithm
        self.bucket_members = _reverse_buckets(self.params, bucket_cap_bytes)
        self.buffers = []
        self.grads = [None] * len(self.params)
        self._bucket_of = np.empty(len(self.params), dtype=np.int64)
        for k, members in enumerate(self.bucket_members):
            dtype = self.params[members[0]].dtype
            buf = np.zeros(sum(self.params[i].size for i in members), dtype=dtype)
            offset = 0
            for i in members:
                n = self.params[i].size
                self.grads[i] = buf[offset:offset + n].reshape(self.params[i].shape)
                self._bucket_of[i] = k
                offset += n
            self.buffers.append(buf)
        self.residuals = ([np.zeros_like(b) for b in self.buffers] if error_feedback
                          else None)
        self._tag = f"gradsync{next(_gradsync_ids)}"
        self._no_sync = False
        self._marked = np.zeros(len(self.params), dtype=bool)
        self._pending = [len(m) for m in self.bucket_members]
        self._handles = [None] * len(self.buffers)
        self.last_wait_seconds = 0.0   # time the last wait() blocked: communication not hidden
        self.last_finite = True

    @property
    def num_buckets(self):
        return len(self.buffers)

    def zero_grad(self):
        """Set every gradient to zero (needed only when backward accumulates)."""
        if any(h is not None for h in self._handles):
            raise RuntimeError("GradSync.zero_grad while allreduces are in flight: call wait() "
                               "first")
        for buf in self.buffers:
            buf.fill(0)

    @contextlib.contextmanager
    def no_sync(self):
        """Skip synchronisation inside the block (gradient accumulation)."""
        if any(h is not None for h in self._handles) or self._marked.any():
            raise RuntimeError("GradSync.no_sync entered in the middle of a synchronised step "
                               "(gradients already marked or sent): call wait() first")
        self._no_sync = True
        try:
            yield self
        finally:
            self._no_sync = False

    def mark_ready(self, i):
        """``grads[i]`` is final for this step; start its bucket if it was the last one."""
        if not 0 <= i < len(self.params):
            raise IndexError(f"GradSync.mark_ready: parameter index must be in "
                             f"[0, {len(self.params)}), got {i}")
        if self._no_sync:
            return
        if self._marked[i]:
            raise RuntimeError(f"GradSync.mark_ready({i}) called twice in one step; call "
                               f"wait() once per step")
        self._marked[i] = True
        k = int(self._bucket_of[i])
        self._pending[k] -= 1
        if self._pending[k] == 0 and self.overlap:
            self._launch(k)

    def _launch(self, k):
        self._handles[k] = allreduce_async(
            self.buffers[k], "sum", name=f"{self._tag}.bucket{k}", algorithm=self.algorithm,
            comm=self.comm, out=self.buffers[k], compression=self.compression,
            residual=None if self.residuals is None else self.residuals[k])

    def wait(self):
        """Finish this step's reduction; return True when every reduced gradient is finite.

        Starts the buckets not started yet, in bucket order, and waits for all of them (with
        ``overlap=False``: reduces all buckets in one blocking ``rr.grouped_allreduce``); then
        resets the marks for the next step. ``last_wait_seconds`` holds how long this call
        blocked.
        """
        if self._no_sync:
            raise RuntimeError("GradSync.wait inside no_sync(): the gradients are not being "
                               "synchronised; leave the block for the last micro-batch")
        start = time.perf_counter()
        try:
            if self.overlap:
                for k in range(len(self.buffers)):
                    if self._handles[k] is None:
                        self._launch(k)
                for handle in self._handles:
                    handle.wait()
            else:
                # Nothing to overlap with any more: one blocking call in this thread, so no
                # background engine runs (and polls) while backward computes.
                grouped_allreduce(self.buffers, "sum", algorithm=self.algorithm,
                                  comm=self.comm, inplace=True, compression=self.compression,
                                  residuals=self.residuals)
        finally:
            self._handles = [None] * len(self.buffers)
            self._marked[:] = False
            self._pending = [len(m) for m in self.bucket_members]
        self.last_wait_seconds = time.perf_counter() - start
        self.last_finite = all(bool(np.isfinite(buf).all()) for buf in self.buffers)
        return self.last_finite
