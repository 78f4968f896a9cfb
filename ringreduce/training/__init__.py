"""Data-parallel training on top of ringreduce: the pieces any training loop needs.

- :func:`broadcast_parameters`: every rank starts from the root's weights.
- :class:`DistributedSampler`: which samples each rank uses at each step, a pure function of
  ``(seed, epoch, step)``, with a global order that does not depend on the rank count.
- :class:`GradSync`: gradient synchronisation in the spirit of PyTorch DDP: gradients live in
  flat per-bucket buffers, each bucket's allreduce starts as soon as its last gradient is ready,
  and :meth:`GradSync.wait` is called before the optimizer step.
- :class:`SGD`, :class:`Adam`: optimizers that call the Numba kernels in
  ``ringreduce.kernels.optim`` (CPU ``@njit`` kernels, CUDA twins for device arrays).
- :func:`save_checkpoint`, :func:`load_checkpoint`: atomic ``.npz`` checkpoints that are read
  without unpickling anything.

How N ranks compute exactly the global-batch gradient
-----------------------------------------------------
Take a global batch of ``B`` samples and loss ``L = (1/B) * sum_j loss_j``. The sampler gives
rank ``r`` a contiguous slice of the batch (the first ``B % p`` ranks get one sample more, the
chunk rule of the allreduce). Each rank computes the gradient of its *partial sum*
``(1/B) * sum_{j in slice r} loss_j`` (loss scaled by ``1/B``, the global batch size, not by its
own slice size) and the gradients are reduced with ``op="sum"``. The sum over ranks of the
partial sums is ``L`` itself, so the result is the gradient one rank would get from the whole
batch, whatever the slice sizes, including a last batch smaller than the rank count where some
ranks hold no sample at all. Dividing by the rank count after the reduction (what DDP does)
is only right when every slice has the same size. The remaining difference from one rank is
the order of floating-point additions (about 1e-16 relative per step in float64).

Randomness and checkpoints
--------------------------
Nothing here keeps a random generator between steps: the sampler draws epoch ``e``'s order from
``np.random.default_rng([seed, e])`` and the example model draws its initial weights from
``seed``. A checkpoint therefore needs only the integers ``seed``, ``epoch`` and ``step`` next
to the parameters and optimizer state to resume bit for bit; there is no generator state to
save.
"""
import contextlib
import itertools
import os
import tempfile
import time
import zipfile
import zlib

import numpy as np
from mpi4py import MPI

from ..collectives.grouped import grouped_allreduce
from ..config import is_whole
from ..core.fusion import assign_buckets
from ..core.schedule import chunk_bounds
from ..engine.api import allreduce_async
from ..transport.comm import control_comm

__all__ = [
    "broadcast_parameters",
    "DistributedSampler",
    "GradSync",
    "NonFiniteGradientError",
    "SGD",
    "Adam",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
]


# ---------------------------------------------------------------------------------------------
# broadcast_parameters
# ---------------------------------------------------------------------------------------------

def _describe(a):
    return f"{a.dtype}{tuple(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__


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


# ---------------------------------------------------------------------------------------------
# DistributedSampler
# ---------------------------------------------------------------------------------------------

class DistributedSampler:
    """Per-rank sample indices for each step of each epoch.

    Global order: epoch ``e`` visits ``np.random.default_rng([seed, e]).permutation(n)``
    (``arange(n)`` with ``shuffle=False``), a pure function of ``(seed, epoch)``, identical on
    every rank and for every rank count. Step ``s`` of an epoch is the global batch
    ``order[s*B:(s+1)*B]``.

    Split: rank ``r`` takes the contiguous slice ``chunk_bounds(len(batch), size)[r]`` of each
    global batch: the first ``len(batch) % size`` ranks get one sample more, the same rule the
    allreduce uses for chunks. Concatenating the slices in rank order gives the global batch
    back, so N ranks see exactly the samples of one rank's batch (see the module docstring for
    why the loss must be scaled by the global batch size).

    Tail rule, when ``n % B != 0``:

    - ``drop_last=False`` (default): the last step of an epoch is a smaller global batch of the
      ``n % B`` remaining samples, split by the same rule. If it holds fewer samples than there
      are ranks, some ranks get none; they still take part in the allreduce (with zero
      gradients), so no rank waits on another.
    - ``drop_last=True``: those samples are skipped for this epoch (the next epoch's shuffle
      puts other samples at the end); every step has exactly ``B`` samples.

    Use :meth:`global_batch_size` as the loss divisor. No MPI here: ``rank`` and ``size`` are
    given, so the sampler can be checked for every rank in one process.
    """

    def __init__(self, num_samples, batch_size, *, rank, size, seed=0, shuffle=True,
                 drop_last=False):
        num_samples, batch_size, rank, size = map(int, (num_samples, batch_size, rank, size))
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"DistributedSampler needs num_samples >= 1 and batch_size >= 1, "
                             f"got num_samples={num_samples}, batch_size={batch_size}")
        if not 0 <= rank < size:
            raise ValueError(f"DistributedSampler needs 0 <= rank < size, got rank={rank}, "
                             f"size={size}")
        if int(seed) < 0:
            raise ValueError(f"DistributedSampler needs seed >= 0 (numpy seeds), got {seed}")
        if drop_last and num_samples < batch_size:
            raise ValueError(f"drop_last=True with {num_samples} samples and batch size "
                             f"{batch_size} leaves no step in an epoch")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.size = size
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self._order_epoch = None
        self._order = None

    def __len__(self):
        """Steps per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def order(self, epoch):
        """The global visiting order of epoch ``epoch`` (an int64 permutation of ``range(n)``)."""
        epoch = int(epoch)
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if self._order_epoch != epoch:
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, epoch]).permutation(
                    self.num_samples)
            else:
                self._order = np.arange(self.num_samples)
            self._order_epoch = epoch
        return self._order

    def _check_step(self, step):
        step = int(step)
        if not 0 <= step < len(self):
            raise IndexError(f"step must be in [0, {len(self)}) (steps per epoch), got {step}")
        return step

    def global_batch(self, epoch, step):
        """Indices of the whole global batch of ``step`` in ``epoch`` (all ranks together)."""
        step = self._check_step(step)
        return self.order(epoch)[step * self.batch_size:(step + 1) * self.batch_size]

    def global_batch_size(self, step):
        """Samples in the global batch of ``step``: ``B``, or less for a short last batch."""
        step = self._check_step(step)
        return min(self.batch_size, self.num_samples - step * self.batch_size)

    def local_batch(self, epoch, step):
        """This rank's indices for ``step`` in ``epoch`` (possibly empty in a short last batch)."""
        batch = self.global_batch(epoch, step)
        start, stop = chunk_bounds(len(batch), self.size)[self.rank]
        return batch[start:stop]

    def batches(self, epoch, start_step=0):
        """Yield ``(step, local_indices, global_batch_size)`` from ``start_step`` to the epoch's
        end; ``start_step > 0`` resumes in the middle of an epoch."""
        for step in range(int(start_step), len(self)):
            yield step, self.local_batch(epoch, step), self.global_batch_size(step)

    def steps(self, total_steps):
        """Yield ``(step, local_indices, global_batch_size)`` for ``total_steps`` steps,
        counted across epochs 0, 1, ... (each epoch shuffled anew, as :meth:`batches`)."""
        step = epoch = 0
        while step < total_steps:
            for _, idx, batch_size in self.batches(epoch):
                if step == total_steps:
                    return
                yield step, idx, batch_size
                step += 1
            epoch += 1


# ---------------------------------------------------------------------------------------------
# GradSync
# ---------------------------------------------------------------------------------------------

class NonFiniteGradientError(FloatingPointError):
    """The reduced gradient holds NaN or Inf (raised by training loops that choose to stop)."""


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
    everyone = control_comm(comm).allgather(
        (None if problem is None else f"{type(problem).__name__}: {problem}", mine))
    if problem is not None:
        raise problem
    bad = [(r, text) for r, (text, _) in enumerate(everyone) if text]
    if bad:
        raise ValueError(f"GradSync: rank {bad[0][0]} rejected its arguments ({bad[0][1]})")
    everyone = [layout for _, layout in everyone]
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
    batch size (module docstring): exact for uneven per-rank batches, no extra pass.

    ``overlap=False`` reduces every bucket in :meth:`wait` instead, with one blocking
    ``rr.grouped_allreduce`` in the caller's thread: the synchronous baseline, which needs no
    background engine at all (to measure what overlap buys, and what it costs). Inside ``with sync.no_sync():`` nothing is sent and ``mark_ready`` is ignored, for
    gradient accumulation: accumulate into ``grads`` over several micro-batches and sync on the
    last one, outside the block.

    Every rank must register the same parameters, and create its ``GradSync`` objects in the
    same order: a bucket's allreduce is matched across ranks by its name, ``gradsync<i>.bucket<k>``
    (the engine negotiates names, so ranks may start buckets in different orders). The
    constructor is collective and checks that (as DDP's does): ranks whose parameter shapes,
    dtypes or bucket caps differ all raise ValueError, naming the first difference, rather
    than wait for buckets the others never send.
    """

    def __init__(self, params, *, bucket_cap_bytes=25 * 2**20, comm=None, overlap=True,
                 algorithm="auto"):
        self.params = list(params)
        _check_same_layout(self.params, bucket_cap_bytes, comm)  # collective
        self.comm = comm
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
            comm=self.comm, out=self.buffers[k])

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
                                     comm=self.comm, inplace=True)
        finally:
            self._handles = [None] * len(self.buffers)
            self._marked[:] = False
            self._pending = [len(m) for m in self.bucket_members]
        self.last_wait_seconds = time.perf_counter() - start
        self.last_finite = all(bool(np.isfinite(buf).all()) for buf in self.buffers)
        return self.last_finite


# ---------------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------------

def _is_device_array(a):
    """A CUDA array: a Numba device array (also the simulator's) or any other object with
    ``__cuda_array_interface__`` (CuPy, PyTorch)."""
    if isinstance(a, np.ndarray):
        return False
    if hasattr(a, "__cuda_array_interface__"):
        return True
    from numba import cuda
    return cuda.devicearray.is_cuda_ndarray(a)


def _flat(a, what):
    """1-D view of a C-contiguous array (the kernels update in place, so a copy would be lost)."""
    if _is_device_array(a):
        from numba import cuda
        if not cuda.devicearray.is_cuda_ndarray(a):
            a = cuda.as_cuda_array(a)  # a view of the same device memory, no copy
        if not a.is_c_contiguous():
            raise ValueError(f"{what} must be a C-contiguous device array, got strides "
                             f"{a.strides}")
        return a.reshape(a.size)
    if not a.flags.c_contiguous:
        raise ValueError(f"{what} must be a C-contiguous array, got strides {a.strides}")
    return a.reshape(-1)


class _Optimizer:
    """Shared plumbing: parameters, per-parameter state buffers, step count, state_dict."""

    _state_names = ()

    def __init__(self, params):
        from ..kernels.optim import get_optimizer_kernels

        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__} needs at least one parameter")
        self._flat_params = [_flat(p, f"parameter {i}") for i, p in enumerate(self.params)]
        # One kernel pair for the whole model: CPU @njit for numpy arrays, the CUDA twins
        # (same signature, same per-element code) for Numba device arrays.
        kinds = {_is_device_array(p) for p in self.params}
        if len(kinds) > 1:
            raise ValueError(f"{type(self).__name__}: parameters mix numpy and device arrays")
        self.device = "cuda" if kinds == {True} else "cpu"
        self.kernels = get_optimizer_kernels(self.device)
        self.state = {name: [self._zeros(p) for p in self.params] for name in self._state_names}
        self.steps = 0

    def _zeros(self, p, shape=None):
        shape = p.shape if shape is None else shape
        if self.device == "cuda":
            from numba import cuda
            return cuda.to_device(np.zeros(shape, dtype=p.dtype))
        return np.zeros(shape, dtype=p.dtype)

    def _check_grads(self, grads):
        grads = list(grads)
        if len(grads) != len(self.params):
            raise ValueError(f"{type(self).__name__}.step expected {len(self.params)} "
                             f"gradients, got {len(grads)}")
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(f"{type(self).__name__}.step: gradient {i} is "
                                 f"{g.dtype}{tuple(g.shape)}, parameter {i} is "
                                 f"{p.dtype}{tuple(p.shape)}")
        return [_flat(g, f"gradient {i}") for i, g in enumerate(grads)]

    def state_dict(self):
        """Plain numpy arrays: ``step`` (0-d int64) and ``<buffer>.<i>`` per parameter."""
        out = {"step": np.array(self.steps, dtype=np.int64)}
        for name, buffers in self.state.items():
            for i, b in enumerate(buffers):
                out[f"{name}.{i}"] = b.copy_to_host() if _is_device_array(b) else b.copy()
        return out

    def load_state_dict(self, state):
        """Restore from :meth:`state_dict` output; shapes and dtypes must match exactly."""
        expected = {"step"} | {f"{n}.{i}" for n in self.state for i in range(len(self.params))}
        missing, extra = expected - set(state), set(state) - expected
        if missing or extra:
            raise ValueError(f"{type(self).__name__}.load_state_dict: missing entries "
                             f"{sorted(missing)}, unexpected entries {sorted(extra)}")
        for name, buffers in self.state.items():
            for i, b in enumerate(buffers):
                src = np.asarray(state[f"{name}.{i}"])
                if src.shape != b.shape or src.dtype != b.dtype:
                    raise ValueError(f"{type(self).__name__}.load_state_dict: '{name}.{i}' is "
                                     f"{src.dtype}{src.shape}, expected {b.dtype}{b.shape}")
        for name, buffers in self.state.items():
            for i, b in enumerate(buffers):
                src = np.asarray(state[f"{name}.{i}"])
                if _is_device_array(b):
                    b.copy_to_device(np.ascontiguousarray(src))
                else:
                    b[...] = src
        self.steps = int(state["step"])


class SGD(_Optimizer):
    """SGD with momentum, Nesterov momentum and (coupled, L2) weight decay: PyTorch semantics
    with ``dampening=0``, done by ``kernels.optim.sgd_update`` on each parameter in place::

        g = grad_scale * grad + weight_decay * param
        buf = momentum * buf + g                  (buf starts at zero, so step 1 gives buf = g)
        d = g + momentum * buf if nesterov else buf
        param -= lr * d
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD needs lr, momentum and weight_decay >= 0, got lr={lr}, "
                             f"momentum={momentum}, weight_decay={weight_decay}")
        if nesterov and momentum <= 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self._state_names = ("momentum_buffer",) if momentum > 0 else ()
        super().__init__(params)
        self.lr, self.momentum = float(lr), float(momentum)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)
        if momentum > 0:
            self._buffers = [_flat(b, "momentum buffer") for b in self.state["momentum_buffer"]]
        else:
            # Without momentum the kernel never touches the buffer, which may be empty.
            self._buffers = [self._zeros(p, (0,)) for p in self.params]

    def step(self, grads, grad_scale=1.0):
        """One update from ``grads`` (same shapes as the parameters), times ``grad_scale``."""
        flat_grads = self._check_grads(grads)
        for p, g, b in zip(self._flat_params, flat_grads, self._buffers):
            self.kernels.sgd_update(p, g, b, self.lr, self.momentum, self.weight_decay,
                                    self.nesterov, float(grad_scale))
        self.steps += 1


class Adam(_Optimizer):
    """Adam (PyTorch semantics, L2 weight decay added to the gradient), done by
    ``kernels.optim.adam_update`` with 1-based ``step`` for the bias corrections."""

    _state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Adam needs lr, eps, weight_decay >= 0 and betas in [0, 1), got "
                             f"lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params)
        self.lr, self.eps, self.weight_decay = float(lr), float(eps), float(weight_decay)
        self.beta1, self.beta2 = (float(b) for b in betas)

    def step(self, grads, grad_scale=1.0):
        """One update from ``grads`` (same shapes as the parameters), times ``grad_scale``."""
        flat_grads = self._check_grads(grads)
        step = self.steps + 1
        for p, g, m, v in zip(self._flat_params, flat_grads, self.state["exp_avg"],
                              self.state["exp_avg_sq"]):
            self.kernels.adam_update(p, g, _flat(m, "exp_avg"), _flat(v, "exp_avg_sq"), self.lr,
                                     self.beta1, self.beta2, self.eps, self.weight_decay, step,
                                     float(grad_scale))
        self.steps = step


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

_FORMAT = "ringreduce-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, or does not fit this run."""


def save_checkpoint(path, state):
    """Write ``state`` (``{name: array or number}``) to ``path`` atomically, as an ``.npz``.

    The data goes to a temporary file in the same directory, is flushed and fsync'ed, then
    renamed over ``path`` (``os.replace`` is atomic on POSIX), and the directory is fsync'ed so
    the rename itself survives a crash: a reader sees the old checkpoint or the new one, never
    half of one. Object arrays are refused, since :func:`load_checkpoint` never unpickles.
    """
    path = os.fspath(path)
    arrays = {}
    for name, value in state.items():
        if not isinstance(name, str) or not name or name.startswith("__"):
            raise ValueError(f"save_checkpoint: entry names must be non-empty strings not "
                             f"starting with '__', got {name!r}")
        a = np.asarray(value)
        if a.dtype.hasobject:
            raise ValueError(f"save_checkpoint: entry '{name}' is an object array "
                             f"({type(value).__name__}); only numeric/string arrays can be "
                             f"loaded without pickle")
        arrays[name] = a
    arrays["__format__"] = np.array(_FORMAT)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path, like=None, match=None):
    """Read a checkpoint written by :func:`save_checkpoint`; return ``{name: numpy array}``.

    Nothing is unpickled (``allow_pickle=False``) and every entry is read at once, so the zip
    CRC of every entry is checked here. ``like`` (``{name: array or None}``) demands exactly
    those names, with those shapes and dtypes (``None``: any shape, for a log that grows);
    ``match`` (``{name: value}``) demands those values (e.g. ``{"world_size": 2}``). Any
    failure is a :class:`CheckpointError` naming the file and what was expected and found.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a bare .npy loads as one array
            raise CheckpointError(f"checkpoint {path} is not an .npz archive")
        with z:
            arrays = {name: z[name] for name in z.files}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: "
                              f"{type(e).__name__}: {e}") from e
    fmt = arrays.pop("__format__", None)
    if fmt is None or fmt.shape != () or str(fmt) != _FORMAT:
        found = "no __format__ entry" if fmt is None else f"format {fmt!r}"
        raise CheckpointError(f"{path} is not a ringreduce checkpoint: expected format "
                              f"{_FORMAT!r}, found {found}")
    if like is not None:
        missing = sorted(set(like) - set(arrays))
        extra = sorted(set(arrays) - set(like))
        if missing or extra:
            raise CheckpointError(f"checkpoint {path} does not fit this run: missing entries "
                                  f"{missing}, unexpected entries {extra}")
        for name, ref in like.items():
            if ref is None:
                continue
            ref = np.asarray(ref)
            got = arrays[name]
            if got.shape != ref.shape or got.dtype != ref.dtype:
                raise CheckpointError(f"checkpoint {path}: entry '{name}' is "
                                      f"{got.dtype}{got.shape}, this run expects "
                                      f"{ref.dtype}{ref.shape}")
    for name, value in (match or {}).items():
        if name not in arrays:
            raise CheckpointError(f"checkpoint {path} has no entry '{name}' (expected {value})")
        got = arrays[name]
        if got.shape != np.shape(value) or not np.array_equal(got, value):
            raise CheckpointError(f"checkpoint {path} was written with {name}={got.tolist()}, "
                                  f"this run has {name}={np.asarray(value).tolist()}")
    return arrays
