"""``allreduce``: validate, agree across ranks, pick an algorithm, run it.

Agreement. Before any data moves, the ranks exchange a small header (count, dtype, op,
algorithm, segment size, a hash of the shape, an error code) with one native
``MPI_Allreduce(MAX)`` over ``[h, -h]``, which yields every field's maximum and minimum at
once. If they differ anywhere, or a rank rejected its own input, every rank learns it in
that same step and raises; only then do the ranks spend an ``allgather`` to name who sent
what. Any schedule decision ("auto", segment sizes) is taken after the header, from values
every rank agrees on, so ranks can never run different schedules and hang. Folding the header
into the algorithms' own first messages would save that one small collective, but a rank with
a different count or dtype would then post receives of the wrong size or run a different
schedule before the mismatch is known; the separate header is what makes "an error on every
rank, never a hang" hold for every algorithm. Its cost is measured in docs/benchmarks.md.
"""
import numpy as np
from mpi4py import MPI

from ._comm import get_comm
from .algorithms import ALGORITHMS
from .kernels.cpu import reduce_kernel, scale_kernel

OPS = ("sum", "avg", "min", "max", "prod")
ALGORITHM_NAMES = ("auto",) + tuple(ALGORITHMS)

# Every numeric numpy dtype; the index is the dtype's code in the header.
DTYPES = tuple(np.dtype(c) for c in (
    "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float16", "float32", "float64", "complex64", "complex128"))
_DTYPE_CODE = {dt: i for i, dt in enumerate(DTYPES)}

# Default segment: the largest message one step of an algorithm sends. Chosen with
# ``python -m ringreduce.bench --segment-sweep`` (docs/benchmarks.md, "segment size").
DEFAULT_SEGMENT_BYTES = 1 << 20

# "auto" thresholds in bytes, from the 2- and 4-rank tables in docs/benchmarks.md
# (``python -m ringreduce.bench``): below SMALL the lg p rounds of recursive doubling win,
# from RING on the ring's pipelined neighbour traffic wins, rhd in between.
AUTO_SMALL_BYTES = 32 << 10
AUTO_RING_BYTES = 512 << 10


class RingReduceError(RuntimeError):
    """A collective failed on some rank; raised on every rank."""


class MismatchError(RingReduceError, ValueError):
    """Ranks passed different counts, shapes, dtypes, ops or algorithms to one collective."""


def choose_algorithm(nbytes, p):
    """The algorithm "auto" runs for ``nbytes`` on ``p`` ranks (every rank computes the same)."""
    if p == 1 or nbytes < AUTO_SMALL_BYTES:
        return "doubling"
    if nbytes < AUTO_RING_BYTES:
        return "rhd"
    return "ring"


def _kernels(op, dtype):
    """(reduce, scale or None) for ``op`` on ``dtype``; raise TypeError for invalid pairs."""
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
        return reduce_kernel("sum", dtype), scale_kernel(dtype)
    return reduce_kernel(op, dtype), None


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


# Header fields, in order.
_FIELDS = ("error", "count", "dtype", "op", "algorithm", "segment_bytes", "shape")
_ERR_NONE, _ERR_LOCAL = 0, 1


def _shape_code(shape):
    # hash() of a tuple of ints is the same in every process (no hash randomisation for ints).
    return hash(tuple(shape)) & 0x7FFFFFFFFFFFFFFF


def _agree(comm, fields, local_error, shape, dtype):
    """Every rank checks every other rank's header; raise the same way on all on mismatch."""
    h = np.array(fields, dtype=np.int64)
    both = np.concatenate([h, -h])
    comm.mpi.Allreduce(MPI.IN_PLACE, [both, MPI.INT64_T], op=MPI.MAX)
    hi, lo = both[:len(h)], -both[len(h):]
    if np.array_equal(hi, lo) and hi[0] == _ERR_NONE:
        return
    # Rare path: say who sent what. Every rank got here from the same hi/lo, so all join.
    info = (fields, None if local_error is None else
            (type(local_error).__name__, str(local_error)), tuple(shape), str(dtype))
    everyone = comm.mpi.allgather(info)
    if local_error is not None:
        raise local_error
    failed = [(r, e) for r, (_, e, _, _) in enumerate(everyone) if e is not None]
    if failed:
        kind = {name for _, (name, _) in failed}
        text = "; ".join(f"rank {r}: {name}: {msg}" for r, (name, msg) in failed)
        exc = TypeError if kind == {"TypeError"} else ValueError
        raise exc(f"allreduce rejected the input on another rank ({text})")
    raise MismatchError(_describe_mismatch(everyone, comm.rank))


def _describe_mismatch(everyone, me):
    names = {"count": "count", "dtype": "dtype", "op": "op", "algorithm": "algorithm",
             "segment_bytes": "segment_bytes", "shape": "shape"}
    mine = everyone[me]
    for i, field in enumerate(_FIELDS):
        if field == "error":
            continue
        values = [e[0][i] for e in everyone]
        if len(set(values)) == 1:
            continue
        other = next(r for r, v in enumerate(values) if v != mine[0][i])

        def show(r):
            f, _, shape, dtype = everyone[r]
            return {"count": f"shape {shape} ({f[1]} elements)", "shape": f"shape {shape}",
                    "dtype": f"dtype {dtype}", "op": f"op {OPS[f[3]]!r}",
                    "algorithm": f"algorithm {ALGORITHM_NAMES[f[4]]!r}",
                    "segment_bytes": f"segment_bytes {f[5]}"}[field]
        return (f"Mismatched allreduce {names[field]}: rank {me} sent a tensor with {show(me)}, "
                f"but rank {other} sent {show(other)}")
    return "Mismatched allreduce headers"  # unreachable: some field differed


def allreduce(x, op="sum", *, algorithm="auto", comm=None, out=None, segment_bytes=None):
    """Reduce ``x`` element-wise over all ranks of ``comm``; every rank gets the result.

    ``x``: a numpy array of any shape, or anything numpy can view without copying (the buffer
    protocol, ``__array_interface__``, a CPU torch tensor); non-contiguous input is fine.
    ``op``: "sum", "avg", "min", "max" or "prod". ``algorithm``: "auto", "ring", "tree",
    "rhd" or "doubling". ``comm``: an mpi4py communicator (default COMM_WORLD).
    ``out``: ``None`` for a new array, ``x`` itself to reduce in place, or another array of
    x's shape and dtype. ``segment_bytes``: the largest single message (default 1 MiB).

    Every rank gets a bitwise-identical result, of x's shape and dtype. Ranks that pass
    different shapes, dtypes, ops or algorithms all raise :class:`MismatchError`.
    """
    c = get_comm(comm)
    local_error = None
    arr = None
    fields = [_ERR_LOCAL, 0, 0, 0, 0, 0, 0]
    shape = ()
    try:
        arr = as_array(x)
        shape = arr.shape
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
        if algorithm not in ALGORITHM_NAMES:
            raise ValueError(f"unknown algorithm {algorithm!r}; expected one of "
                             f"{', '.join(ALGORITHM_NAMES)}")
        reduce, scale = _kernels(op, arr.dtype)
        seg_bytes = DEFAULT_SEGMENT_BYTES if segment_bytes is None else int(segment_bytes)
        if seg_bytes < arr.dtype.itemsize:
            raise ValueError(f"segment_bytes must be at least one element "
                             f"({arr.dtype.itemsize} bytes for {arr.dtype}), got {segment_bytes}")
        target, same = _check_out(arr, out)
        fields = [_ERR_NONE, arr.size, _DTYPE_CODE[arr.dtype], OPS.index(op),
                  ALGORITHM_NAMES.index(algorithm), seg_bytes, _shape_code(shape)]
    except (TypeError, ValueError) as exc:
        local_error = exc
    _agree(c, fields, local_error, shape, None if arr is None else arr.dtype)

    if algorithm == "auto":
        algorithm = choose_algorithm(arr.nbytes, c.size)
    flat_in = arr.reshape(-1) if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(-1)
    if target is None:
        flat_out = np.empty(arr.size, dtype=arr.dtype)
    elif same:
        flat_out = flat_in  # in place: on x itself, or on x's contiguous copy
    elif target.flags.c_contiguous:
        flat_out = target.reshape(-1)
    else:
        flat_out = np.empty(arr.size, dtype=arr.dtype)
    ALGORITHMS[algorithm](c, flat_in, flat_out, reduce, max(1, seg_bytes // arr.dtype.itemsize))
    if scale is not None:
        scale(flat_out, c.size)
    if target is None:
        return flat_out.reshape(shape)
    if not np.shares_memory(flat_out, target):
        target[...] = flat_out.reshape(shape)
    return out


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
