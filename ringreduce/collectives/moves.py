"""The collectives that move data rather than only reduce it: ``broadcast``, ``allgather``,
``reduce_scatter``, and ``barrier``; one body each for every memory backend, each behind the
same header agreement as ``allreduce`` (a shape, dtype, root or op that differs between ranks,
or one rank calling another collective, raises on every rank and leaves the library usable).

- ``broadcast``: a segmented binomial tree from the root (``algorithms.tree.tree_broadcast``):
  lg p latencies, and segments pipeline down the tree.
- ``allgather`` and ``reduce_scatter``: the two halves of the ring allreduce
  (``algorithms.ring.allgather`` and ``reduce_scatter``), each p - 1 steps moving
  n (p - 1) / p bytes per rank, the lower bound for either (Patarasuk and Yuan 2009).
- ``barrier``: the header pass alone. It is a recursive doubling in which every rank's result
  depends on every rank's message, so no rank leaves before all have entered.
"""
from ..algorithms.ring import allgather as ring_allgather
from ..algorithms.ring import reduce_scatter as ring_reduce_scatter
from ..algorithms.ring import rotated_bounds
from ..algorithms.tree import tree_broadcast
from ..config import is_whole, segment_size
from ..core.tables import DTYPE_CODE, check_dtype, check_op, op_code, signature
from ..memory import backend_of
from ..memory.buffers import copy_into
from ..transport.comm import detects_failures, get_comm
from .calls import check_out
from .header import fail_everywhere, negotiate


class _Moved:
    """One rank's validated view of a data-moving call: the input, the result's shape, and
    where the result goes (``out`` or a new array)."""

    def __init__(self, call, c, x, out, segment_bytes, result_shape=None):
        self.call, self.mem = call, backend_of(x)
        mem = self.mem
        self.arr = mem.view(x)
        self.shape, self.dtype = mem.shape(self.arr), mem.dtype(self.arr)
        check_dtype(self.dtype)
        self.seg = segment_size(segment_bytes, self.dtype)
        self.result_shape = self.shape if result_shape is None else result_shape(self.shape)
        self.target = None
        if out is not None and result_shape is not None:
            target = mem.view(out, "out")
            if mem.shape(target) != self.result_shape or mem.dtype(target) != self.dtype:
                raise ValueError(f"out must have shape {self.result_shape} and dtype "
                                 f"{self.dtype} for {call} of shape {self.shape} over {c.size} "
                                 f"ranks, got shape {mem.shape(target)} and dtype "
                                 f"{mem.dtype(target)}")
            if not mem.writeable(out, target):
                raise ValueError(f"out must be writeable, got a read-only {mem.noun}")
            if mem.overlap(target, self.arr) != "none":
                raise ValueError(f"out must not overlap x in {call}")
            self.target = target
        mem.prepare()

    def fields(self):
        return (DTYPE_CODE[self.dtype], self.shape, self.seg, self.mem.mark)

    def describe(self, **extra):
        return dict({"call": self.call, "shape": self.shape, "dtype": str(self.dtype)}, **extra,
                    segment_bytes=self.seg, memory=self.mem.name)

    def result(self, n):
        """``(flat result buffer, write-back needed)`` of ``n`` elements."""
        mem, t = self.mem, self.target
        if t is not None and mem.contiguous(t):
            return mem.flat(t), False
        return mem.empty(n, self.dtype), t is not None

    def finish(self, flat):
        mem = self.mem
        if self.target is not None:
            mem.write_back(self.target, flat)
        mem.sync()
        return flat.reshape(self.result_shape) if self.target is None else self.target


def _elems(seg, dtype):
    return max(1, seg // dtype.itemsize)


@detects_failures
def broadcast(x, root=0, *, comm=None, out=None, segment_bytes=None):
    """Every rank gets the ``root`` rank's ``x``. ``x`` gives the shape and dtype on every
    rank (they must agree); ``out``: ``None`` for a new array, ``x`` itself to overwrite x
    in place (as ``torch.distributed.broadcast`` does), or another array of x's shape and
    dtype. Host arrays or CUDA device arrays, as for :func:`allreduce`."""
    c = get_comm(comm)
    try:
        if not is_whole(root, 0) or root >= c.size:
            raise ValueError(f"root must be a rank in [0, {c.size}), got {root!r}")
        m = _Moved("broadcast", c, x, None, segment_bytes)
        target, same = check_out(m.mem, x, m.arr, out)
        sig = signature("broadcast", int(root), *m.fields())
    except Exception as exc:  # noqa: BLE001 - any local failure must reach every rank
        fail_everywhere(c, exc)
    negotiate(c, sig, None, lambda: m.describe(root=int(root)))
    mem, arr = m.mem, m.arr
    flat_in = mem.flatten(arr)
    write_back = False
    if same:
        flat = flat_in
        write_back = not mem.contiguous(arr)
    elif target is not None and mem.contiguous(target):
        flat = mem.flat(target)
    else:
        flat = mem.empty(arr.size, m.dtype)
        write_back = target is not None
    if c.rank == root and flat is not flat_in and arr.size:
        copy_into(flat, flat_in)
    if arr.size:
        tree_broadcast(mem.transport(c), flat, int(root), _elems(m.seg, m.dtype))
    if write_back:
        mem.write_back(target if target is not None else arr, flat)
    mem.sync()
    if same:
        return out
    return flat.reshape(m.shape) if target is None else out


def _stacked(p):
    return lambda shape: (p * shape[0],) + tuple(shape[1:]) if shape else (p,)


@detects_failures
def allgather(x, *, comm=None, out=None, segment_bytes=None):
    """Every rank's ``x``, concatenated along the first axis in rank order, on every rank
    (for a 0-d ``x``, a vector of p elements). Every rank passes the same shape and dtype.
    ``out``: an array of the result's shape and dtype to write into, else a new array."""
    c = get_comm(comm)
    try:
        m = _Moved("allgather", c, x, out, segment_bytes, _stacked(c.size))
        sig = signature("allgather", *m.fields())
    except Exception as exc:  # noqa: BLE001 - any local failure must reach every rank
        fail_everywhere(c, exc)
    negotiate(c, sig, None, m.describe)
    mem, n, p = m.mem, m.arr.size, c.size
    flat, _ = m.result(p * n)
    if n:
        copy_into(flat[c.rank * n:(c.rank + 1) * n], mem.flatten(m.arr))
        if p > 1:
            ring_allgather(mem.transport(c), flat, _elems(m.seg, m.dtype), rotated_bounds(n, p))
    return m.finish(flat)


@detects_failures
def reduce_scatter(x, op="sum", *, comm=None, out=None, segment_bytes=None):
    """Reduce ``x`` over all ranks and give rank r the r-th of p equal blocks of the result
    along the first axis (whose length must divide by the rank count). ``op`` as for
    :func:`allreduce`. ``out``: an array of the block's shape and dtype, else a new array."""
    c = get_comm(comm)
    p = c.size

    def block(shape):
        if not shape or shape[0] % p:
            raise ValueError(f"reduce_scatter needs a first axis divisible by the {p} ranks, "
                             f"got shape {shape}")
        return (shape[0] // p,) + tuple(shape[1:])
    try:
        check_op(op)
        m = _Moved("reduce_scatter", c, x, out, segment_bytes, block)
        reduce, scale = m.mem.kernels(op, m.dtype)
        sig = signature("reduce_scatter", op_code(op), *m.fields())
    except Exception as exc:  # noqa: BLE001 - any local failure must reach every rank
        fail_everywhere(c, exc)
    negotiate(c, sig, None, lambda: m.describe(op=op))
    mem, n = m.mem, m.arr.size // p
    flat, _ = m.result(n)
    flat_in = mem.flatten(m.arr)
    if p == 1:
        if n:
            copy_into(flat, flat_in)
    elif n:
        ring_reduce_scatter(mem.transport(c), flat_in, flat, reduce, _elems(m.seg, m.dtype),
                            rotated_bounds(n, p))
    if scale is not None and n:
        scale(flat, p)
    return m.finish(flat)


@detects_failures
def barrier(comm=None):
    """Return once every rank of ``comm`` has called ``barrier`` (and raise on every rank if
    some rank called another collective instead)."""
    negotiate(get_comm(comm), signature("barrier"), None, {"call": "barrier"})
