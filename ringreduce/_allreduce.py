"""``allreduce``: validate, agree across ranks, pick an algorithm, run it.

Agreement. Every call starts with a recursive-doubling pass (``_schedule.doubling_plan``)
whose messages carry a 24-byte header: a signature of (count, dtype, op, algorithm, segment
size, shape) as ``[sig, -sig]`` and an error flag, combined by element-wise maximum. After
lg p steps every rank holds the maximum and the minimum signature over all ranks and knows
whether any rank rejected its input, so a mismatch raises on every rank in the same call and
never leaves one rank waiting in a schedule the others did not enter. Only then, on that rare
path, an ``allgather`` names who sent what.

Small messages ride in the same messages: below ``AUTO_SMALL_BYTES`` ("auto") the payload is
appended to the header and reduced on the way, so the whole allreduce is lg p exchanges with
no separate negotiation (the piggy-backed header costs 24 bytes). Larger messages pay one
header-only pass of lg p tiny exchanges, then run the algorithm every rank agreed on; any
schedule decision ("auto", segment sizes) is taken after the header, from agreed values.
"""
import math
import struct

import numpy as np

from ._comm import TAG_FOLD, get_comm
from ._config import get_config, segment_size
from ._schedule import doubling_plan
from .algorithms import ALGORITHMS
from .algorithms.shm import on_one_node
from . import _device
from ._buffers import is_device_array
from .kernels.cpu import reduce_kernel, scale_kernel

OPS = ("sum", "avg", "min", "max", "prod")
ALGORITHM_NAMES = ("auto",) + tuple(ALGORITHMS)

# Every numeric numpy dtype; the index is the dtype's code in the header.
DTYPES = tuple(np.dtype(c) for c in (
    "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float16", "float32", "float64", "complex64", "complex128"))
_DTYPE_CODE = {dt: i for i, dt in enumerate(DTYPES)}

# "auto" thresholds in bytes, from the 2- and 4-rank tables in docs/benchmarks.md
# (``python -m ringreduce.bench``): below SMALL the data rides in the header's own lg p
# exchanges; from RING on the ring's pipelined neighbour traffic wins; rhd in between.
AUTO_SMALL_BYTES = 32 << 10
AUTO_RING_BYTES = 512 << 10
# All ranks on one node: from here on the shared-memory algorithm runs. Best of four runs of
# ``mpiexec -n P python -m ringreduce.bench -b 1K -e 64M -f 4 -a native ring rhd doubling tree
# shm`` (docs/benchmarks.md, "Cost model fit"): at 2 ranks shm was the fastest of the
# library's algorithms from 64 KiB up but at 4 MiB (ring 0.97 ms, shm 1.06), and at 32 KiB
# already ahead of rhd; at 3 and 4 ranks (more ranks than the 2 cores) it ties doubling at
# 64 KiB and leads from 256 KiB up but at 64 MiB with 4 ranks.
AUTO_SHM_BYTES = 32 << 10
# ... and up to here (exclusive); larger messages take the ring. At 2 ranks shm's copies into
# the window ran 1.2-2.8x slower than the ring from 1 MiB up in 4-5 of 10 runs (its writes
# to lines the other core had just read were 5x slower; docs/benchmarks.md, "Shared-memory
# allreduce") and won by 10-20% in the others; below 1 MiB it stays ahead of rhd either way.
AUTO_SHM_MAX_BYTES = 1 << 20
# Ranks at which AUTO_RING_BYTES was measured. Beyond them the ring's 2 (p - 1) latencies
# (rhd pays 2 lg p) move the size where its bandwidth wins upwards, about as sqrt(p) with 8
# ranks per node: over 25 GbE and 100 Gb InfiniBand at 16 to 1,024 ranks ringreduce.model
# (2-rank fit) loses at most 10% on average between 32 KiB and 1 GiB with the threshold
# scaled by sqrt(p / 4), against up to 251% kept fixed and 35% scaled by p / 4
# (``python benchmarks/fit_model.py --scaling``, docs/scaling.md).
AUTO_RING_RANKS = 4
# Largest payload that may ride with the header (explicit algorithm="doubling" included);
# it sizes the two receive buffers kept per communicator.
PIGGYBACK_CAP = 64 << 10

_HEADER = struct.Struct("<3q")  # sig, -sig, error: combined by element-wise max
_MASK = 0x7FFFFFFFFFFFFFFF


class RingReduceError(RuntimeError):
    """A collective failed on some rank; raised on every rank."""


class MismatchError(RingReduceError, ValueError):
    """Ranks passed different counts, shapes, dtypes, ops or algorithms to one collective."""


def choose_algorithm(nbytes, p, one_node=False):
    """The algorithm "auto" runs for ``nbytes`` on ``p`` ranks (every rank computes the same).
    ``one_node``: all ``p`` ranks share one node's memory (agreed by every rank)."""
    if p == 1 or nbytes < AUTO_SMALL_BYTES:
        return "doubling"
    if one_node and AUTO_SHM_BYTES <= nbytes < AUTO_SHM_MAX_BYTES:
        return "shm"
    if nbytes < AUTO_RING_BYTES * math.sqrt(max(p, AUTO_RING_RANKS) / AUTO_RING_RANKS):
        return "rhd"
    return "ring"


_KERNELS = {}


def _kernels(op, dtype):
    """(reduce, scale or None) for ``op`` on ``dtype``; TypeError for invalid pairs."""
    key = (op, dtype)
    got = _KERNELS.get(key)
    if got is not None:
        return got
    if dtype not in _DTYPE_CODE:
        raise TypeError(f"unsupported dtype {dtype}; expected one of "
                        f"{', '.join(str(d) for d in DTYPES)}")
    if op == "avg" and dtype.kind in "iu":
        raise TypeError(f"op='avg' needs a floating or complex dtype, got {dtype}; "
                        "use op='sum' and divide, or cast first")
    if op in ("min", "max") and dtype.kind == "c":
        raise TypeError(f"op={op!r} is not defined for complex dtype {dtype}; "
                        "complex supports 'sum', 'avg' and 'prod'")
    if op == "avg":
        got = reduce_kernel("sum", dtype), scale_kernel(dtype)
    else:
        got = reduce_kernel(op, dtype), None
    _KERNELS[key] = got
    return got


def as_array(x, what="x"):
    """View ``x`` as a numpy array without copying (buffer protocol, __array_interface__)."""
    if isinstance(x, np.ndarray):
        return x
    try:
        arr = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - reported with the type that failed
        raise TypeError(f"{what} must be a numpy array or expose the buffer protocol or "
                        f"__array_interface__, got {type(x).__name__}: {exc}") from None
    if arr.dtype == object:
        raise TypeError(f"{what} must be a numeric array, got {type(x).__name__} that numpy "
                        "sees as an object array")
    return arr


def check_op_algorithm(op, algorithm):
    """Validate ``op`` and ``algorithm``; return the algorithm to run, with "auto" replaced
    by ``RINGREDUCE_ALGORITHM`` when that is set."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    if algorithm not in ALGORITHM_NAMES:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of "
                         f"{', '.join(ALGORITHM_NAMES)}")
    return get_config().algorithm if algorithm == "auto" else algorithm


_PLANS = {}


class _Call:
    """One rank's validated view of one allreduce call."""
    __slots__ = ("arr", "op", "algorithm", "seg_bytes", "reduce", "scale", "target", "same",
                 "sig", "piggyback")

    def __init__(self, x, op, algorithm, out, segment_bytes):
        arr = self.arr = as_array(x)
        key = (arr.shape, arr.dtype, op, algorithm, segment_bytes)
        plan = _PLANS.get(key)
        if plan is None:
            plan = _PLANS[key] = self._plan(arr, op, algorithm, segment_bytes)
        (self.op, self.algorithm, self.reduce, self.scale, self.seg_bytes, self.piggyback,
         self.sig) = plan
        self.target, self.same = _check_out(arr, out)

    @staticmethod
    def _plan(arr, op, algorithm, segment_bytes):
        """Everything that depends only on (shape, dtype, op, algorithm, segment_bytes),
        computed once per such key: small calls are dominated by per-call Python work."""
        algorithm = check_op_algorithm(op, algorithm)
        reduce, scale = _kernels(op, arr.dtype)
        seg = segment_size(segment_bytes, arr.dtype)
        nbytes = arr.nbytes
        piggyback = nbytes <= PIGGYBACK_CAP and (
            algorithm == "doubling" or (algorithm == "auto" and nbytes < AUTO_SMALL_BYTES))
        # hash() of a tuple of ints is the same in every process (no randomisation for ints).
        sig = hash((arr.size, _DTYPE_CODE[arr.dtype], OPS.index(op),
                    ALGORITHM_NAMES.index(algorithm), seg, arr.shape)) & _MASK
        return op, algorithm, reduce, scale, seg, piggyback, sig

    def describe(self):
        return {"call": "allreduce", "shape": self.arr.shape, "dtype": str(self.arr.dtype),
                "op": self.op, "algorithm": self.algorithm, "segment_bytes": self.seg_bytes,
                "memory": "host"}


def allreduce(x, op="sum", *, algorithm="auto", comm=None, out=None, segment_bytes=None):
    """Reduce ``x`` element-wise over all ranks of ``comm``; every rank gets the result.

    ``x``: a numpy array of any shape, or anything numpy can view without copying (the buffer
    protocol, ``__array_interface__``, a CPU torch tensor); non-contiguous input is fine.
    ``op``: "sum", "avg", "min", "max" or "prod". ``algorithm``: "auto", "ring", "tree",
    "rhd" or "doubling". ``comm``: an mpi4py communicator (default COMM_WORLD).
    ``out``: ``None`` for a new array, ``x`` itself to reduce in place, or another array of
    x's shape and dtype. ``segment_bytes``: the largest single message (default
    ``RINGREDUCE_SEGMENT_BYTES``, 1 MiB). A CUDA device array (anything with
    ``__cuda_array_interface__``) is reduced on the GPU; ``out`` must then be a device array
    too, and the result for ``out=None`` is a new Numba device array (``_device.py``).

    Every rank gets a bitwise-identical result, of x's shape and dtype. Ranks that pass
    different shapes, dtypes, ops or algorithms all raise :class:`MismatchError`; a rank whose
    input is invalid raises its ValueError or TypeError and the others raise the same type
    naming it. Either way the library stays usable.
    """
    c = get_comm(comm)
    if is_device_array(x):  # CUDA device arrays: same header and algorithms, see _device.py
        return _device.allreduce_device(c, x, op, algorithm, out, segment_bytes)
    try:
        call, local_error = _Call(x, op, algorithm, out, segment_bytes), None
    except (TypeError, ValueError) as exc:
        call, local_error = None, exc
    arr = None if call is None else call.arr

    if call is None:
        _negotiate(c, 0, local_error, None)  # raises on every rank
    contiguous = arr.flags.c_contiguous
    flat_in = arr.reshape(-1) if contiguous else np.ascontiguousarray(arr).reshape(-1)
    target = call.target
    write_back = False  # whether the result must be copied into target at the end
    if target is None:
        # A small call's result comes back in a header buffer and is copied out below.
        flat_out = None if call.piggyback else np.empty(arr.size, dtype=arr.dtype)
    elif call.same:
        flat_out = flat_in  # in place: on x itself, or on x's contiguous copy
        write_back = not contiguous
    elif target.flags.c_contiguous:
        flat_out = target.reshape(-1)
    else:
        flat_out = np.empty(arr.size, dtype=arr.dtype)
        write_back = True

    reduced = _negotiate(c, call.sig, None, call.describe,
                         flat_in if call.piggyback else None, call.reduce)
    if reduced is not None:
        if flat_out is None:
            flat_out = reduced.copy()
        else:
            flat_out[...] = reduced
    elif arr.size:
        run_algorithm(c, call.algorithm, flat_in, flat_out, call.reduce, call.seg_bytes)
    elif flat_out is not flat_in:
        flat_out[...] = flat_in
    if call.scale is not None:
        call.scale(flat_out, c.size)
    if target is None:
        return flat_out.reshape(arr.shape)
    if write_back:
        target[...] = flat_out.reshape(arr.shape)
    return out


def run_algorithm(c, name, flat_in, flat_out, reduce, seg_bytes):
    """Run one algorithm on buffers every rank already agreed on (no header)."""
    if name == "auto":
        # on_one_node is collective the first time per communicator; every rank gets here
        # in the same call, since all agreed on "auto" and on the size in the header.
        nbytes = flat_in.nbytes
        one_node = (c.size > 1 and AUTO_SHM_BYTES <= nbytes < AUTO_SHM_MAX_BYTES
                    and on_one_node(c))
        name = choose_algorithm(nbytes, c.size, one_node)
    ALGORITHMS[name](c, flat_in, flat_out, reduce, max(1, seg_bytes // flat_in.dtype.itemsize))


class _HeaderState:
    """Per-communicator state of the header pass: its plan, two message buffers (each the
    header followed by up to PIGGYBACK_CAP payload bytes), and per payload dtype and length
    the typed views of their payloads and the messages (header and payload) they send,
    cached because small calls are dominated by such per-call Python overhead."""

    def __init__(self, c):
        self.plan = doubling_plan(c.rank, c.size)
        self.bufs = (np.empty(_HEADER.size + PIGGYBACK_CAP, np.uint8),
                     np.empty(_HEADER.size + PIGGYBACK_CAP, np.uint8))
        self.headers = tuple(b[:_HEADER.size] for b in self.bufs)
        self.views = {}

    def payload(self, dtype, n):
        """``(payload views, messages)``, one of each per buffer."""
        v = self.views.get((dtype, n))
        if v is None:
            h, end = _HEADER.size, _HEADER.size + n * dtype.itemsize
            v = self.views[(dtype, n)] = (tuple(b[h:end].view(dtype) for b in self.bufs),
                                          tuple(b[:end] for b in self.bufs))
        return v


def _negotiate(c, sig, local_error, describe, payload=None, reduce=None):
    """The header pass over ``c``: every rank learns whether all agree on ``sig``.

    ``sig`` is this rank's signature of the call (ignored when ``local_error`` is set);
    ``describe`` a dict of what the signature covers, or a function returning one (called
    only on a mismatch, so the common path does not pay for it), used to explain a mismatch.
    ``payload`` (a 1-D array of at most PIGGYBACK_CAP bytes) rides along and is reduced with
    ``reduce`` on the way; the return value is then the reduced payload (a view into a buffer
    reused by the next call: copy it out), else None. Raises on every rank if any rank
    disagrees or failed.
    """
    if c.size == 1:
        if local_error is not None:
            raise local_error
        return payload
    st = c.header_state
    if st is None:
        st = c.header_state = _HeaderState(c)
    bufs = st.bufs
    err = 0 if local_error is None else 1
    if err:
        sig, payload = 0, None
    _HEADER.pack_into(bufs[0], 0, sig, -sig, err)
    nbytes = 0
    msgs = st.headers
    if payload is not None:
        nbytes = payload.nbytes
        views, msgs = st.payload(payload.dtype, payload.size)
        views[0][...] = payload
    agreed = (sig, -sig, 0)
    b = 0  # bufs[b] holds this rank's partial result, bufs[1 - b] what a partner sent
    for action, peer in st.plan:
        if action == "give" or action == "return":
            c.send(msgs[b], peer, TAG_FOLD)
            continue
        if action == "take":
            c.recv(bufs[b], peer, TAG_FOLD)
            continue
        if action == "exchange":
            c.sendrecv(msgs[b], peer, bufs[1 - b], peer, TAG_FOLD)
        else:  # absorb
            c.recv(bufs[1 - b], peer, TAG_FOLD)
        s = _HEADER.unpack_from(bufs[b])
        t = _HEADER.unpack_from(bufs[1 - b])
        if s != t:  # combine: element-wise maximum
            _HEADER.pack_into(bufs[b], 0, max(s[0], t[0]), max(s[1], t[1]), max(s[2], t[2]))
        elif nbytes and s == agreed:
            # Same signature on both sides so far: same count, dtype and op, so reduce the
            # payloads, the lower rank's first so both partners compute the same bits.
            if c.rank < peer:
                reduce(views[b], views[1 - b])
            else:
                reduce(views[1 - b], views[b])
                b = 1 - b  # the result is in the partner's buffer, with the same header
    hi, nlo, err_any = _HEADER.unpack_from(bufs[b])
    if hi != -nlo or err_any:
        _raise_everywhere(c, describe, local_error)
    return None if payload is None else views[b]


def _raise_everywhere(c, describe, local_error):
    """Every rank saw the same combined header, so every rank is here: say who sent what."""
    if callable(describe):
        describe = describe()
    info = (describe, None if local_error is None else (type(local_error).__name__, str(local_error)))
    everyone = c.mpi.allgather(info)
    if local_error is not None:
        raise local_error
    failed = [(r, e) for r, (_, e) in enumerate(everyone) if e is not None]
    kind = describe.get("call", "allreduce")
    if failed:
        kinds = {name for _, (name, _) in failed}
        text = "; ".join(f"rank {r}: {name}: {msg}" for r, (name, msg) in failed)
        exc = TypeError if kinds == {"TypeError"} else ValueError
        raise exc(f"{kind} rejected the input on another rank ({text})")
    mine = everyone[c.rank][0]
    for field in mine:
        other = next((r for r, (d, _) in enumerate(everyone) if d.get(field) != mine[field]), None)
        if other is not None:
            raise MismatchError(mismatch_message(kind, field, c.rank, mine[field], other,
                                                 everyone[other][0].get(field)))
    raise MismatchError(f"Mismatched {kind} headers")  # only on a signature hash collision


def mismatch_message(kind, field, me, mine, other, theirs):
    """Horovod's wording: "Mismatched allreduce tensor shapes: One rank sent ... but ..."."""
    if field == "shape":
        what = "counts" if _count(mine) != _count(theirs) else "tensor shapes"
        return (f"Mismatched {kind} {what}: rank {me} sent a tensor of shape {mine} "
                f"({_count(mine)} elements), but rank {other} sent a tensor of shape {theirs} "
                f"({_count(theirs)} elements)")
    if field == "tensors":
        return (f"Mismatched {kind} tensor counts: rank {me} sent {mine} tensors, "
                f"but rank {other} sent {theirs}")
    if field in ("shapes", "dtypes", "names") and len(mine) == len(theirs):
        i = next(i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b)
        noun = field[:-1]
        return (f"Mismatched {kind} tensor {noun}s: for tensor {i}, rank {me} sent {noun} "
                f"{mine[i]}, but rank {other} sent {noun} {theirs[i]}")
    return (f"Mismatched {kind} {field}: rank {me} sent {field} {mine!r}, "
            f"but rank {other} sent {field} {theirs!r}")


def _count(shape):
    return int(np.prod(shape, dtype=np.int64))


def _check_out(arr, out):
    """``(target array or None, whether target is x's own memory)``."""
    if out is None:
        return None, False
    out_arr = arr if out is arr else as_array(out, "out")
    if out_arr.shape != arr.shape or out_arr.dtype != arr.dtype:
        raise ValueError(f"out must have x's shape {arr.shape} and dtype {arr.dtype}, got "
                         f"shape {out_arr.shape} and dtype {out_arr.dtype}")
    if not out_arr.flags.writeable:
        raise ValueError("out must be writeable, got a read-only array")
    if out_arr is arr:
        return arr, True
    if np.shares_memory(out_arr, arr):
        same = (out_arr.__array_interface__["data"][0] == arr.__array_interface__["data"][0]
                and out_arr.strides == arr.strides)
        if not same:
            raise ValueError("out overlaps x without being x itself; pass out=x for in place")
        return out_arr, True
    return out_arr, False
