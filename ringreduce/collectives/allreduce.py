"""``allreduce``: validate, agree across ranks, pick an algorithm, run it; one body for every
memory backend (``memory/``).

Agreement is the header pass (``header.py``); any schedule decision ("auto", segment sizes)
is taken after it, from agreed values. A call's plan (kernels, signature, whether it rides in
the header) depends only on (memory, shape, dtype, op, algorithm, segment_bytes) and is
computed once per such key: small calls are dominated by per-call Python work.
"""
from numpy import empty, may_share_memory, ndarray

from ..config import segment_size
from ..core.choose import rides_in_header
from ..core.tables import (DTYPE_CODE, algorithm_code, check_compression, compression_code,
                           op_code, signature)
from ..memory import HOST, backend_of
from ..transport.comm import detects_failures, get_comm
from .calls import check_out, output_buffer, resolve_algorithm
from .header import fail_everywhere, header_bytes, header_state, negotiate, raise_everywhere
from .compress import Codec
from .grouped import reduce_buffer

_PLANS = {}
# The plans of uncompressed host calls that need nothing decided per communicator, by
# (shape, dtype, op, algorithm, segment_bytes): those that ride in the header on every
# communicator and those that never do (see allreduce and _cached). Per-call Python work is
# most of a small call, and was 14-20 us of a 1 MiB one through the general body on the
# shared 2-core VM in its fast mode (its caches cold after the copies; 9-11 us on this
# path), where native MPI_Allreduce takes 180-250 us.
_SMALL = {}
# ... and those that ride only where every rank shares a host (Comm.one_host).
_SMALL_HOST = {}


class _Call:
    """One rank's validated view of one allreduce call."""
    __slots__ = ("mem", "arr", "op", "algorithm", "seg_bytes", "reduce", "scale", "target",
                 "same", "sig", "piggyback", "codec", "compression")

    def __init__(self, mem, x, op, algorithm, out, segment_bytes, compression, one_host=False):
        self.mem = mem
        arr = self.arr = mem.view(x)
        shape, dtype = mem.shape(arr), mem.dtype(arr)
        key = (mem, shape, dtype, op, algorithm, segment_bytes, compression)
        plan = _PLANS.get(key)
        if plan is None:
            plan = _PLANS[key] = self._plan(mem, shape, dtype, arr.size, op, algorithm,
                                            segment_bytes, compression)
            if mem is HOST and plan[7] is None:  # no codec
                # piggyback (plan[5]; on one host only: plan[8]), or never riding
                rides = plan[5] or plan[8]
                (_SMALL_HOST if plan[8] and not plan[5] else _SMALL)[
                    (shape, dtype, op, algorithm, segment_bytes)] = (
                    plan[0], plan[2], plan[3], plan[6],
                    header_bytes(plan[6]) if rides else None,
                    HOST.first(plan[2]) if rides else None, plan[1], plan[4])
        (self.op, self.algorithm, self.reduce, self.scale, self.seg_bytes, self.piggyback,
         self.sig, self.codec, on_one_host) = plan
        # Sizes that ride only where every rank shares a host: never in _SMALL, whose plans
        # hold for any communicator.
        self.piggyback = self.piggyback or (on_one_host and one_host)
        self.compression = compression
        self.target, self.same = (None, False) if out is None else check_out(mem, x, arr, out)
        mem.prepare()

    @staticmethod
    def _plan(mem, shape, dtype, size, op, algorithm, segment_bytes, compression):
        algorithm = resolve_algorithm(mem, op, algorithm)
        reduce, scale = mem.kernels(op, dtype)
        seg = segment_size(segment_bytes, dtype)
        check_compression(compression, dtype, op)
        codec = compression and Codec(mem, compression, op)
        # A compressed call's payload is made after the header (fp16 needs the agreed scale).
        rides = mem.piggyback and codec is None
        piggyback = rides and rides_in_header(size * dtype.itemsize, algorithm)
        on_one_host = rides and rides_in_header(size * dtype.itemsize, algorithm, True)
        sig = signature("allreduce", size, DTYPE_CODE[dtype], op_code(op),
                        algorithm_code(algorithm), seg, shape, compression_code(compression),
                        mem.mark)
        return op, algorithm, reduce, scale, seg, piggyback, sig, codec, on_one_host

    def describe(self):
        return {"call": "allreduce", "shape": self.mem.shape(self.arr),
                "dtype": str(self.mem.dtype(self.arr)), "op": self.op,
                "algorithm": self.algorithm, "segment_bytes": self.seg_bytes,
                "compression": self.compression, "memory": self.mem.name}


@detects_failures
def allreduce(x, op="sum", *, algorithm="auto", comm=None, out=None, segment_bytes=None,
              compression=None):
    """Reduce ``x`` element-wise over all ranks of ``comm``; every rank gets the result.

    ``x``: a numpy array of any shape, or anything numpy can view without copying (the buffer
    protocol, ``__array_interface__``, a CPU torch tensor); non-contiguous input is fine.
    A CUDA device array (anything with ``__cuda_array_interface__``) is reduced on the GPU;
    ``out`` must then be a device array too, and the result for ``out=None`` is a new Numba
    device array. ``op``: "sum", "avg", "min", "max" or "prod". ``algorithm``: "auto" or one
    of ``ALGORITHM_NAMES``. ``comm``: an mpi4py communicator (default COMM_WORLD).
    ``out``: ``None`` for a new array, ``x`` itself to reduce in place, or another array of
    x's shape and dtype. ``segment_bytes``: the largest single message (default
    ``RINGREDUCE_SEGMENT_BYTES``, 1 MiB). ``compression``: None, "bf16" or "fp16": float32
    data travels as 16-bit values and comes back as float32 (``compress.py``).

    Every rank gets a bitwise-identical result, of x's shape and dtype. Ranks that pass
    different shapes, dtypes, ops, algorithms or memory kinds all raise
    :class:`MismatchError`; a rank whose input is invalid raises its own error and the others
    raise the same type naming it. Either way the library stays usable.
    """
    c = get_comm(comm)
    if type(x) is ndarray and compression is None:
        key = (x.shape, x.dtype, op, algorithm, segment_bytes)
        plan = _SMALL.get(key) or (c.one_host and _SMALL_HOST.get(key) or None)
        if plan is not None and x.flags.c_contiguous and (out is None or _plain_out(x, out)):
            return _cached(c, x, out, plan, algorithm, segment_bytes)
    mem = HOST if type(x) is ndarray else backend_of(x)  # the common case without a call
    try:
        call = _Call(mem, x, op, algorithm, out, segment_bytes, compression, c.one_host)
    except Exception as exc:  # noqa: BLE001 - any local failure must reach every rank
        fail_everywhere(c, exc)
    arr, target = call.arr, call.target
    flat_in = mem.flatten(arr)
    flat_out, write_back = output_buffer(mem, arr, flat_in, target, call.same, call.piggyback)

    reduced = negotiate(c, call.sig, None, call.describe,
                        flat_in if call.piggyback else None, call.reduce)
    if reduced is not None:
        if flat_out is None:
            flat_out = reduced.copy()
        else:
            flat_out[...] = reduced
        if call.scale is not None and arr.size:
            call.scale(flat_out, c.size)
    elif arr.size:
        reduce_buffer(c, mem, flat_in, flat_out, call.reduce, call.scale, call.algorithm,
                      call.seg_bytes, call.codec)
    if write_back:
        mem.write_back(target, flat_out)
    mem.sync()
    return flat_out.reshape(mem.shape(arr)) if target is None else out


# The last (x, out) that _plain_out found apart, kept (two small arrays of the hot path) so
# that the same pair, checked again at every call of a loop, skips numpy's overlap test.
_APART = [None, None]


def _plain_out(x, out):
    """Whether ``out`` is ``x`` itself or a numpy array of x's shape and dtype, contiguous and
    writeable, that shares no memory with ``x`` (both contiguous: bounds decide, and they stay
    what they were for the same two arrays of unchanged shape: 0.2 of a 0.5 us check)."""
    if out is x:
        return x.flags.writeable
    if type(out) is not ndarray or out.shape != x.shape or out.dtype != x.dtype:
        return False
    flags = out.flags
    if not (flags.c_contiguous and flags.writeable):
        return False
    if _APART[0] is x and _APART[1] is out:
        return True
    if may_share_memory(x, out):
        return False
    _APART[0], _APART[1] = x, out
    return True


def _cached(c, x, out, plan, algorithm, segment_bytes):
    """A host call with a plan of ``_SMALL`` (or ``_SMALL_HOST`` on one host), on a
    contiguous array, into a new array, in place, or into a plain ``out`` (``_plain_out``):
    the general body's steps with nothing left to decide (the plan was validated when it was
    made). A call that rides in the header is its pass: at two ranks the pass's one exchange
    writes the result straight into its destination (``HeaderState.pair``). Any other is a
    header-only pass, then its algorithm into the destination."""
    op, reduce, scale, sig, mine, first, name, seg = plan
    flat = x if x.ndim == 1 else x.reshape(-1)  # each reshape costs 0.1 us of a 3 us call
    if mine is None:
        negotiate(c, sig, None, lambda: _Call(HOST, x, op, algorithm, out, segment_bytes,
                                              None).describe())
        if out is None:
            dest = empty(x.size, x.dtype)
        else:
            dest = flat if out is x else out if out.ndim == 1 else out.reshape(-1)
        if x.size:
            reduce_buffer(c, HOST, flat, dest, reduce, scale, name, seg)
        if out is not None:
            return out
        return dest if x.ndim == 1 else dest.reshape(x.shape)
    st = c.state.header or (c.size > 1 and header_state(c))
    if st and st.peer is not None and first is not None:
        if out is None:
            dest = result = empty(x.size, x.dtype)
        else:
            result = out
            dest = out if out.ndim == 1 else out.reshape(-1)
        if not st.pair(c, mine, flat, first, dest):
            raise_everywhere(c, lambda: _Call(HOST, x, op, algorithm, out, segment_bytes,
                                              None).describe(), None)
        if scale is not None and x.size:
            scale(dest, c.size)
        return result if out is not None or x.ndim == 1 else result.reshape(x.shape)
    reduced = negotiate(c, sig, None, lambda: _Call(HOST, x, op, algorithm, out, segment_bytes,
                                                    None).describe(), flat, reduce)
    if out is None:
        flat = reduced.copy()
    else:
        flat = out if out.ndim == 1 else out.reshape(-1)
        flat[...] = reduced
    if scale is not None and x.size:
        scale(flat, c.size)
    if out is not None:
        return out
    return flat if x.ndim == 1 else flat.reshape(x.shape)
