"""What every collective checks before its header, the same way on every memory backend."""
from ..config import get_config
from ..core.tables import check_algorithm, check_op


def resolve_algorithm(mem, op, algorithm):
    """Validate ``op`` and ``algorithm`` for memory ``mem``; return the algorithm to run, with
    "auto" replaced by ``RINGREDUCE_ALGORITHM`` when that is set (and ``mem`` can run it:
    the variable naming a host-only algorithm is meant for host arrays)."""
    check_op(op)
    check_algorithm(algorithm)
    if algorithm == "auto":
        chosen = get_config().algorithm
        return chosen if chosen == "auto" or chosen in mem.algorithms else "auto"
    if algorithm not in mem.algorithms:
        raise ValueError(f"algorithm {algorithm!r} works on host memory only; for CUDA device "
                         f"arrays use one of auto, {', '.join(mem.algorithms)}")
    return algorithm


def check_out(mem, x, arr, out):
    """``(target array or None, whether target is x's own memory)`` for ``out``."""
    if out is None:
        return None, False
    target = arr if out is x or out is arr else mem.view(out, "out")
    shape, tshape = mem.shape(arr), mem.shape(target)
    if tshape != shape or mem.dtype(target) != mem.dtype(arr):
        raise ValueError(f"out must have x's shape {shape} and dtype {mem.dtype(arr)}, got "
                         f"shape {tshape} and dtype {mem.dtype(target)}")
    if not mem.writeable(out, target):
        raise ValueError(f"out must be writeable, got a read-only {mem.noun}")
    if target is arr:
        return arr, True
    how = mem.overlap(target, arr)
    if how == "partial":
        raise ValueError("out overlaps x without being x itself; pass out=x for in place")
    return target, how == "same"


def output_buffer(mem, arr, flat_in, target, same, in_header):
    """``(flat_out, write_back)``: the 1-D buffer the result is reduced into, and whether it
    must be copied into ``target`` afterwards. None when the result comes back in the header
    buffer (``in_header``, no ``out``)."""
    if target is None:
        return (None if in_header else mem.empty(arr.size, mem.dtype(arr))), False
    if same:
        return flat_in, not mem.contiguous(arr)  # in place: on x itself, or on x's copy
    if mem.contiguous(target):
        return mem.flat(target), False
    return mem.empty(arr.size, mem.dtype(arr)), True
