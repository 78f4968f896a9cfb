"""``grouped_allreduce``: many tensors, fused into few buckets, one allreduce per bucket; one
body for every memory backend, and one bucket reduction (:func:`reduce_bucket`) that the
background engine uses too."""
import time

from ..config import fusion_sizes
from ..core.fusion import group_by_dtype, offsets_of, plan_buckets
from ..core.tables import (DTYPE_CODE, algorithm_code, check_compression, compression_code,
                           op_code, signature)
from ..memory import HOST, backend_of_group
from ..memory.spans import Spans
from ..transport.comm import detects_failures, get_comm
from .calls import resolve_algorithm
from .compress import Codec, check_residuals, reduce_compressed
from .header import fail_everywhere, negotiate
from .run import auto_choice, run_algorithm

# The algorithms that take a ``Spans`` (several arrays as one vector): one_ring's.
SPANS_ALGORITHMS = ("ring", "direct")


class Group:
    """One rank's validated view of a list of arrays to reduce together."""

    def __init__(self, arrays, op, algorithm, inplace, fusion_threshold, segment_bytes,
                 compression=None, residuals=None):
        mem = self.mem = backend_of_group(arrays)
        self.arrs = [mem.view(a, f"arrays[{i}]") for i, a in enumerate(arrays)]
        self.algorithm = resolve_algorithm(mem, op, algorithm)
        self.op, self.compression = op, compression
        self.kernels, self.codecs = {}, {}
        for a in self.arrs:
            dtype = mem.dtype(a)
            if dtype not in self.kernels:
                self.kernels[dtype] = mem.kernels(op, dtype)
                check_compression(compression, dtype, op)
                self.codecs[dtype] = compression and Codec(mem, compression, op)
        self.residuals = check_residuals(mem, residuals, self.arrs, compression)
        if inplace:
            for i, (x, a) in enumerate(zip(arrays, self.arrs)):
                if not mem.writeable(x, a):
                    raise ValueError(f"inplace=True needs writeable arrays; arrays[{i}] is "
                                     "read-only")
        self.cap, self.seg = fusion_sizes(fusion_threshold, segment_bytes)
        mem.prepare()

    def signature(self):
        # The cap and the segment size shape the buckets and the messages: ranks must agree.
        mem = self.mem
        return signature("grouped_allreduce", len(self.arrs),
                         tuple((mem.shape(a), DTYPE_CODE[mem.dtype(a)]) for a in self.arrs),
                         op_code(self.op), algorithm_code(self.algorithm), self.cap, self.seg,
                         compression_code(self.compression), mem.mark)

    def describe(self):
        mem = self.mem
        return {"call": "grouped_allreduce", "tensors": len(self.arrs),
                "shapes": tuple(mem.shape(a) for a in self.arrs),
                "dtypes": tuple(str(mem.dtype(a)) for a in self.arrs), "op": self.op,
                "algorithm": self.algorithm, "fusion_threshold": self.cap,
                "segment_bytes": self.seg, "compression": self.compression,
                "memory": mem.name}


def bucket_plan(mem, arrays, cap, seg):
    """``[(dtype, [index, ...]), ...]``: the buckets a list of ``mem`` arrays is reduced in,
    the same on every backend. A tensor of at least one segment pipelines well on its own:
    it is reduced where it lies instead of being copied twice through the fusion buffer."""
    direct = seg if cap > 0 else 0
    plan = []
    for dtype, idx in group_by_dtype([mem.dtype(a) for a in arrays]).items():
        for bucket in plan_buckets([arrays[i].nbytes for i in idx], cap, direct,
                                   [mem.contiguous(arrays[i]) for i in idx]):
            plan.append((dtype, [idx[j] for j in bucket]))
    return plan


@detects_failures
def grouped_allreduce(arrays, op="sum", *, algorithm="auto", comm=None, inplace=False,
                      fusion_threshold=None, segment_bytes=None, compression=None,
                      residuals=None):
    """Allreduce a list of arrays with few messages: fused per dtype into buckets of at most
    ``fusion_threshold`` bytes (default ``RINGREDUCE_FUSION_THRESHOLD``), one allreduce each.

    Returns a list of results, one per array, each of its array's shape and dtype. With
    ``inplace=True`` the results are written into the given arrays (numpy arrays or zero-copy
    views such as a CPU torch tensor's ``t.numpy()``) and those are returned. Every rank must
    pass the same number of arrays with the same shapes and dtypes, in the same order; if
    not, every rank raises :class:`MismatchError` naming the first difference.
    A list of CUDA device arrays is fused and reduced on the GPU, and the results are device
    arrays; host and device arrays cannot share one call. ``compression`` ("bf16", "fp16")
    sends float32 arrays as 16-bit values (``compress.py``); ``residuals``, one float32
    array per array, turns on error feedback (the rounding residual is added to the next
    call's input and updated in place).
    """
    c = get_comm(comm)
    try:
        g = Group(arrays, op, algorithm, inplace, fusion_threshold, segment_bytes,
                  compression, residuals)
        sig = g.signature()
    except Exception as exc:  # noqa: BLE001 - any local failure must reach every rank
        fail_everywhere(c, exc)
    negotiate(c, sig, None, g.describe)
    mem, arrs = g.mem, g.arrs
    outs = arrs if inplace else mem.results(c, [(mem.shape(a), mem.dtype(a)) for a in arrs])
    plan = bucket_plan(mem, arrs, g.cap, g.seg)
    if mem is HOST and c.size > 1 and g.residuals is None:
        plan = one_ring(c, g, plan, outs)
    for dtype, members in plan:
        reduce, scale = g.kernels[dtype]
        reduce_bucket(c, mem, [arrs[i] for i in members], [outs[i] for i in members],
                      dtype, reduce, scale, g.algorithm, g.seg, codec=g.codecs[dtype],
                      residuals=None if g.residuals is None else [g.residuals[i] for i in members])
    mem.sync()
    return list(arrays) if inplace else outs


def one_ring(c, g, plan, outs):
    """Reduce, per dtype, every bucket of ``plan`` in one ring where the ring would serve
    them (``algorithm`` "ring", or "auto" choosing it for their total): the large tensors
    where they lie and one fusion buffer of the small ones, joined as ``Spans``, so the ring
    pipelines across all of them and no large tensor is copied. Returns the buckets left for
    the bucket-by-bucket path: other dtypes, compressed ones, those of other algorithms, or
    small ones that need more than one fusion buffer. Host memory, more than one rank."""
    mem, arrs, left = g.mem, g.arrs, []
    by_dtype = {}
    for dtype, members in plan:
        by_dtype.setdefault(dtype, []).append(members)
    for dtype, buckets in by_dtype.items():
        direct, fused = [], []
        for m in buckets:
            lone = len(m) == 1 and arrs[m[0]].nbytes >= g.seg and mem.contiguous(arrs[m[0]])
            (direct if lone else fused).extend(m)
        total = sum(arrs[i].nbytes for i in direct + fused)
        name = g.algorithm
        if name == "auto" and total:
            name = auto_choice(c, mem, total)
        if (not total or name not in SPANS_ALGORITHMS or g.codecs[dtype] is not None
                or len(buckets) < 2 or sum(arrs[i].nbytes for i in fused) > g.cap):
            left += [(dtype, m) for m in buckets]
            continue
        reduce, scale = g.kernels[dtype]
        ins = [mem.flat(arrs[i]) for i in direct]
        dsts = ins if outs is arrs else [mem.flat(outs[i]) for i in direct]
        small_in, small_out, offsets = None, None, None
        if fused:
            offsets, n = offsets_of([arrs[i] for i in fused])
            small_in = mem.fusion_buffer(c, dtype, n)
            mem.pack([arrs[i] for i in fused], small_in, offsets)
            small_out = small_in if outs is arrs else mem.scratch(c, "fusion out", dtype, n)
            ins, dsts = ins + [small_in], dsts + [small_out]
        src = Spans(ins)
        dst = src if outs is arrs else Spans(dsts)
        run_algorithm(c, mem, name, src, dst, reduce, g.seg)
        if scale is not None:
            for piece in dst.arrays:
                scale(piece, c.size)
        if fused:
            mem.unpack(small_out, [outs[i] for i in fused], offsets)
    return left


def reduce_buffer(c, mem, src, dst, reduce, scale, algorithm, seg, codec=None, residual=None):
    """Reduce the 1-D ``src`` into ``dst`` (the same object for in place) with an algorithm
    every rank agreed on, through ``codec`` (``compress.Codec``) when the call compresses."""
    if codec is None:
        run_algorithm(c, mem, algorithm, src, dst, reduce, seg)
        if scale is not None:
            scale(dst, c.size)
    else:
        reduce_compressed(c, mem, codec, algorithm, seg, src, dst, scale, residual)


def reduce_bucket(c, mem, ins, outs, dtype, reduce, scale, algorithm, seg, times=None,
                  codec=None, residuals=None):
    """Reduce one bucket of ``mem`` arrays over ``c``: a lone contiguous tensor goes straight
    through, else pack, reduce in the fusion buffer, unpack. The ranks already agreed on
    everything, so no header. ``residuals``: error-feedback arrays, one per tensor, packed
    and unpacked beside them. Returns the bytes reduced; ``times``, a list, receives the
    perf_counter stamps (start, packed, reduced, unpacked) for the timeline."""
    t0 = time.perf_counter() if times is not None else 0.0
    if len(ins) == 1 and mem.contiguous(ins[0]) and mem.contiguous(outs[0]) and (
            residuals is None or mem.contiguous(residuals[0])):
        src = mem.flat(ins[0])
        # The same object when in place: algorithms recognise in-place by identity.
        dst = src if outs[0] is ins[0] else mem.flat(outs[0])
        if src.size:
            reduce_buffer(c, mem, src, dst, reduce, scale, algorithm, seg, codec,
                          None if residuals is None else mem.flat(residuals[0]))
        if times is not None:
            t1 = time.perf_counter()
            times[:] = (t0, t0, t1, t1)
        return src.nbytes
    offsets, total = offsets_of(ins)
    buf = mem.fusion_buffer(c, dtype, total)
    if total:
        mem.pack(ins, buf, offsets)
        res = None
        if residuals is not None:
            res = mem.scratch(c, "fused feedback", dtype, total)
            mem.pack(residuals, res, offsets)
        t1 = time.perf_counter() if times is not None else 0.0
        reduce_buffer(c, mem, buf, buf, reduce, scale, algorithm, seg, codec, res)
        t2 = time.perf_counter() if times is not None else 0.0
        mem.unpack(buf, outs, offsets)
        if res is not None:
            mem.unpack(res, residuals, offsets)
    else:
        t1 = t2 = t0
    if times is not None:
        times[:] = (t0, t1, t2, time.perf_counter())
    return buf.nbytes
