"""``grouped_allreduce``: many tensors, fused into few buckets, one allreduce per bucket."""
import numpy as np

from ._allreduce import (_DTYPE_CODE, _MASK, ALGORITHM_NAMES, OPS, _kernels, _negotiate,
                         as_array, check_op_algorithm, run_algorithm)
from . import _device
from ._comm import get_comm
from ._config import fusion_sizes
from ._fusion import group_by_dtype, offsets_of, pack, plan_buckets, unpack


def _fusion_buffer(c, dtype, n):
    """A reusable 1-D buffer of at least ``n`` elements per communicator and dtype: a fresh
    64 MiB allocation per call would cost more in page faults than the copy into it."""
    bufs = c.__dict__.setdefault("fusion_buffers", {})
    buf = bufs.get(dtype)
    if buf is None or buf.size < n:
        buf = bufs[dtype] = np.empty(n, dtype)
    return buf[:n]


def validate_group(arrays, op, algorithm, inplace):
    """Local checks; returns ``(arrays as numpy, kernels per dtype, algorithm)``."""
    if isinstance(arrays, np.ndarray) or not hasattr(arrays, "__iter__"):
        raise TypeError(f"grouped_allreduce takes a list or tuple of arrays, got "
                        f"{type(arrays).__name__}")
    arrs = [as_array(a, f"arrays[{i}]") for i, a in enumerate(arrays)]
    algorithm = check_op_algorithm(op, algorithm)
    kernels = {a.dtype: _kernels(op, a.dtype) for a in arrs}
    if inplace:
        for i, a in enumerate(arrs):
            if not a.flags.writeable:
                raise ValueError(f"inplace=True needs writeable arrays; arrays[{i}] is read-only")
    return arrs, kernels, algorithm


def group_signature(arrs, op, algorithm, cap, seg):
    # The cap and the segment size shape the buckets and the messages: ranks must agree.
    return hash((len(arrs), tuple((a.shape, _DTYPE_CODE[a.dtype]) for a in arrs),
                 OPS.index(op), ALGORITHM_NAMES.index(algorithm), cap, seg)) & _MASK


def describe_group(arrs, op, algorithm, cap, seg):
    return {"call": "grouped_allreduce", "tensors": len(arrs),
            "shapes": tuple(a.shape for a in arrs), "dtypes": tuple(str(a.dtype) for a in arrs),
            "op": op, "algorithm": algorithm, "fusion_threshold": cap, "segment_bytes": seg,
            "memory": "host"}


def grouped_allreduce(arrays, op="sum", *, algorithm="auto", comm=None, inplace=False,
                      fusion_threshold=None, segment_bytes=None):
    """Allreduce a list of arrays with few messages: fused per dtype into buckets of at most
    ``fusion_threshold`` bytes (default ``RINGREDUCE_FUSION_THRESHOLD``), one allreduce each.

    Returns a list of results, one per array, each of its array's shape and dtype. With
    ``inplace=True`` the results are written into the given arrays (numpy arrays or zero-copy
    views such as a CPU torch tensor's ``t.numpy()``) and those are returned. Every rank must
    pass the same number of arrays with the same shapes and dtypes, in the same order; if
    not, every rank raises :class:`MismatchError` naming the first difference.
    A list of CUDA device arrays is fused and reduced on the GPU, and the results are device
    arrays; host and device arrays cannot share one call.
    """
    c = get_comm(comm)
    if isinstance(arrays, (list, tuple)) and any(map(_device.is_device_array, arrays)):
        # CUDA device arrays: packed into a device fusion buffer, reduced on the GPU.
        return _device.grouped_allreduce_device(c, arrays, op, algorithm, inplace,
                                                fusion_threshold, segment_bytes)
    try:
        arrs, kernels, algorithm = validate_group(arrays, op, algorithm, inplace)
        cap, seg = fusion_sizes(fusion_threshold, segment_bytes)
        sig, local_error = group_signature(arrs, op, algorithm, cap, seg), None
    except (TypeError, ValueError) as exc:
        sig, local_error = 0, exc
    if local_error is not None:
        _negotiate(c, 0, local_error, None)  # raises on every rank
    _negotiate(c, sig, None, describe_group(arrs, op, algorithm, cap, seg))
    # A tensor of at least one segment pipelines well on its own: reduce it in place of
    # copying it twice through the fusion buffer.
    direct = seg if cap > 0 else 0
    outs = arrs if inplace else [np.empty(a.shape, a.dtype) for a in arrs]
    for dtype, idx in group_by_dtype(arrs).items():
        reduce, scale = kernels[dtype]
        for bucket in plan_buckets([arrs[i].nbytes for i in idx], cap, direct,
                                   [arrs[i].flags.c_contiguous for i in idx]):
            members = [idx[j] for j in bucket]
            reduce_bucket(c, [arrs[i] for i in members], [outs[i] for i in members],
                          dtype, reduce, scale, algorithm, seg)
    return list(arrays) if inplace else outs


def reduce_bucket(c, ins, outs, dtype, reduce, scale, algorithm, seg):
    """Reduce one bucket: a lone contiguous tensor goes straight through, else pack, reduce in
    the fusion buffer, unpack. The ranks already agreed on everything, so no header."""
    if len(ins) == 1 and ins[0].flags.c_contiguous and outs[0].flags.c_contiguous:
        src = ins[0].reshape(-1)
        # The same object when in place: algorithms recognise in-place by identity.
        dst = src if outs[0] is ins[0] else outs[0].reshape(-1)
        if src.size:
            run_algorithm(c, algorithm, src, dst, reduce, seg)
            if scale is not None:
                scale(dst, c.size)
        return
    offsets, total = offsets_of(ins)
    if total == 0:
        return
    buf = _fusion_buffer(c, dtype, total)
    pack(ins, buf, offsets)
    run_algorithm(c, algorithm, buf, buf, reduce, seg)
    if scale is not None:
        scale(buf, c.size)
    unpack(buf, outs, offsets)
