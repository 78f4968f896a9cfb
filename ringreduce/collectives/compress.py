"""Gradient compression: float32 data travels as 16-bit values and comes back as float32.

``compression="bf16"`` or ``"fp16"`` on ``allreduce``, ``grouped_allreduce``,
``allreduce_async`` and ``GradSync``. Half the bytes cross the network and the memory bus at
every step. Two paths, one result contract (every rank gets bitwise-identical float32):

- The ring (``algorithm="ring"``, or what "auto" picks for the bytes on the wire, host memory,
  p > 1) carries the codec inside its own segment loop (:class:`RingWire`, the ``wire`` of
  ``algorithms/ring.py``): at step 0 a rank rounds the segments it sends straight from its
  float32 input; a received 16-bit segment is added to the rank's float32 input in float32
  and rounded once (one fused kernel) and forwarded; the owner's finished 16-bit chunk is
  what every rank, the owner included, widens back to float32, as each segment arrives in the
  allgather. Other ranks' inputs enter the sums unrounded: only the first rank of a chunk's
  path rounds its input alone.
- Every other algorithm (rhd, tree, doubling, shm, "auto" below the ring's sizes, one rank)
  goes in blocks of ``BLOCK`` elements: each rank rounds the block once to the wire type, the
  algorithm runs on wire values (every local reduction reads two 16-bit values, adds in
  float32 and rounds once to nearest-even), and the block is widened back.

fp16 scaling. fp16's largest finite value is 65504, so a large gradient (or a sum of p of
them) would overflow to inf. Before compressing, the ranks agree on the largest magnitude
``amax`` of the data (one 4-byte recursive-doubling exchange, lg p messages) and every rank
multiplies by the same power of two ``s = 2**floor(log2(65504 / (p * amax)))``: no partial
sum of p values can then exceed 65504, and small gradients move up out of fp16's subnormal
range instead of flushing to zero. A power of two is exact in float32, so scaling and
unscaling add no rounding of their own; the ring's kernels scale each float32 input as they
read it, and the result is divided by ``s`` when widened. bf16 has float32's exponent range
and needs no scaling.

Error bound. Each rounding has relative error at most u (2**-8 for bf16, 2**-11 for fp16) of
the value rounded, which is at most ``sum_i |x_i|``. The block path rounds every input once
and every reduction step's float32 sum once more: a result element sees ``1 + r`` roundings,
r being the steps that reduce it: ceil(lg p) in rhd, doubling and the tree (plus one for the
fold of a non-power-of-two p). The ring rounds an element p times: once where its chunk
leaves its first rank, once at each of the p - 1 hops (the last being the owner's); widening
is exact. So ``|result - exact| <= (1 + r) * u * sum_i |x_i|`` to first order, with
``1 + r = p`` for the ring; tests/collective/test_compression.py checks it for every
algorithm, test_compressed_ring.py the ring's exact order bit for bit.

Error feedback (``residual=``): the rounding error of a rank's compression is kept and added
to its next input, so nothing is lost over steps, only delayed (what makes compressed
training converge like uncompressed). The input of a call is ``x = g + r``, and afterwards
the residual holds ``t - Q(t)`` for what this rank itself rounded, unscaled:

- on the block path, ``t = x`` everywhere: ``r = (g + r) - Q(g + r)``;
- in the ring each rank rounds each element exactly once: on the chunk it sends at step 0
  ``t = x`` as above; on every other chunk ``t`` is its float32 sum of the received partial
  and x, so the residual is what that sum's rounding removed.

Either way the residuals summed over the ranks plus the result equal the inputs summed over
the ranks (but for float32's own roundings of the sums), so the next call's inputs add back
exactly what this call lost. In the ring the residual is the whole rounding of a partial
sum, not a share of it: its magnitude is bounded by u times that partial sum rather than by
u times |x|.
"""
import math

import numpy as np

from ..algorithms.ring import ring
from ..memory.host import HOST
from .run import auto_choice, run_algorithm

FP16_MAX = 65504.0
# Elements per block of a compressed call: 4 MiB of float32, 2 MiB on the wire (this
# machine's L2 per core is 2 MiB; see reduce_compressed).
BLOCK = 1 << 20


class Codec:
    """How one call compresses: the wire format ("bf16", "fp16"), the dtype its values are
    held in (their uint16 bits: a bfloat16 dtype would import ml_dtypes, at 0.8-1 s more than
    the rest of a first call), its reduction kernel, its codec kernels."""
    __slots__ = ("compression", "fmt", "wire", "reduce", "compress", "decompress", "scaled")

    def __init__(self, mem, compression, op):
        self.compression = compression
        self.fmt = compression  # its name is its format in the kernel tables
        self.wire = np.dtype(np.uint16)
        self.reduce, self.compress, self.decompress = mem.codec(
            self.fmt, "sum" if op == "avg" else op)
        self.scaled = compression == "fp16"


def check_residuals(mem, residuals, arrs, compression):
    """The error-feedback arrays as ``mem`` arrays, one writeable float32 array per tensor
    of its shape; None without feedback."""
    if residuals is None:
        return None
    if compression is None:
        raise ValueError("residuals (error feedback) need a compression, got compression=None")
    residuals = list(residuals)
    if len(residuals) != len(arrs):
        raise ValueError(f"residuals must hold one array per tensor: {len(arrs)} tensors, "
                         f"{len(residuals)} residuals")
    out = []
    for i, (r, a) in enumerate(zip(residuals, arrs)):
        v = mem.view(r, f"residuals[{i}]")
        if mem.shape(v) != mem.shape(a) or mem.dtype(v) != np.float32 or not mem.writeable(r, v):
            raise ValueError(f"residuals[{i}] must be a writeable float32 array of shape "
                             f"{mem.shape(a)}, got {mem.dtype(v)} of shape {mem.shape(v)}")
        out.append(v)
    return out


def fp16_scale(amax, p):
    """The power of two that keeps p values of magnitude ``amax`` summable in fp16."""
    if not (amax > 0 and math.isfinite(amax)):
        return 1.0  # zeros need none; a NaN or inf is carried as it is
    return math.ldexp(1.0, max(-120, min(120, math.floor(math.log2(FP16_MAX / (p * amax))))))


def _agreed_amax(c, mem, data):
    """The largest magnitude of ``data`` over every rank (the ranks already agreed on the
    call in its header, so this exchange needs none of its own)."""
    a = np.array([mem.amax(data)], np.float32)
    if c.size > 1:
        reduce, _ = HOST.kernels("max", a.dtype)
        run_algorithm(c, HOST, "doubling", a, a, reduce, a.nbytes)
    return float(a[0])


def reduce_compressed(c, mem, codec, algorithm, seg, src, dst, scale, residual=None):
    """Reduce the 1-D float32 ``src`` into ``dst`` through ``codec``'s wire type; ``scale``:
    the avg kernel or None; ``residual``: error feedback, updated in place. Where the ring
    runs (host memory, more than one rank), the codec rides inside its segment loop
    (:class:`RingWire`); elsewhere the vector goes in blocks (:func:`_reduce_blocks`)."""
    if residual is not None:
        add, _ = mem.kernels("sum", residual.dtype)
        add(residual, src)  # the input of this call is g + r
        src = residual
    s = fp16_scale(_agreed_amax(c, mem, src), c.size) if codec.scaled else 1.0
    wire_bytes = src.size * codec.wire.itemsize
    if _runs_the_ring(c, mem, algorithm, wire_bytes):
        wire = RingWire(c, mem, codec, src.size, s, residual is not None)
        # Segments of seg bytes on the wire, as the uncompressed ring's messages.
        ring(mem.transport(c), src, dst, wire.reduce, max(1, seg // codec.wire.itemsize),
             wire=wire)
    else:
        _reduce_blocks(c, mem, codec, algorithm, seg, src, dst, s, residual)
    if scale is not None:
        scale(dst, c.size)


def _runs_the_ring(c, mem, algorithm, wire_bytes):
    """Whether the call runs the ring: named, or what "auto" chooses for the bytes that move
    (run_algorithm's rule). Host memory only (the fused kernels are CPU kernels), and not
    on one rank, where nothing moves and the block path rounds once."""
    if mem is not HOST or c.size == 1:
        return False
    return (auto_choice(c, mem, wire_bytes) if algorithm == "auto" else algorithm) == "ring"


class RingWire:
    """The ring's wire (``algorithms/ring.py``) for a float32 vector of ``n`` elements sent
    as ``codec``'s 16-bit values scaled by ``s``: step 0 rounds the rank's own segment
    straight from float32 (``send``), a received segment is summed with the rank's float32
    input and rounded once (``fold``), and a finished 16-bit segment is widened and unscaled
    (``decompress``); every buffer holds the uint16 bits. ``feedback``: the input is the
    residual array, overwritten with what this rank's roundings removed."""
    __slots__ = ("moved", "_c", "_mem", "_send", "_fold", "_widen", "_scale", "_unscale",
                 "_feedback")

    def __init__(self, c, mem, codec, n, s, feedback):
        self._send, self._fold, self._widen = mem.ring_codec(codec.fmt)
        self._scale, self._unscale = np.float32(s), np.float32(1.0 / s)
        self._feedback = feedback
        self._c, self._mem = c, mem
        self.moved = mem.scratch(c, "ring wire", codec.wire, n)

    def scratch(self, n):
        return [self._mem.scratch(self._c, f"ring wire {i}", self.moved.dtype, n)
                for i in range(3)]

    def encode(self, dst, src):
        self._send(dst, src, self._scale, self._unscale, self._feedback)

    def reduce(self, dst, src):
        self._fold(dst, src, self._scale, self._unscale, self._feedback)

    def widen(self, out, src):
        self._widen(out, src, self._unscale)


def _reduce_blocks(c, mem, codec, algorithm, seg, src, dst, s, residual):
    """The vector in blocks of ``BLOCK`` elements, each compressed, reduced by ``algorithm``
    on wire values and widened before the next, into one block-sized wire buffer: the
    16-bit values the algorithm sends and receives are still in cache when it starts and
    when they are widened, instead of a whole-vector pass each way through memory. Every
    rank cuts the same blocks, so "auto" chooses alike."""
    n = src.size
    # Two wire buffers: out of place the ring receives its last step straight into the
    # result (in place it costs a copy more: 1.76 against 1.11 ms for 2 MiB at 2 ranks).
    wire = mem.scratch(c, "wire", codec.wire, min(n, BLOCK))
    reduced = mem.scratch(c, "wire result", codec.wire, min(n, BLOCK))
    sent = None if residual is None else mem.scratch(c, "feedback", residual.dtype,
                                                     min(n, BLOCK))
    for lo in range(0, n, BLOCK):
        hi = min(n, lo + BLOCK)
        w = wire[:hi - lo]
        codec.compress(w, src[lo:hi], s)
        if sent is not None:
            codec.decompress(sent[:hi - lo], w, 1.0 / s)
            mem.subtract(residual[lo:hi], sent[:hi - lo])  # r = (g + r) - Q(g + r)
        out = reduced[:hi - lo]
        run_algorithm(c, mem, algorithm, w, out, codec.reduce, seg)
        codec.decompress(dst[lo:hi], out, 1.0 / s)
