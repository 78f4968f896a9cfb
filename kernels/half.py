"""Half-precision kernels on the CPU: bfloat16 and float16 held as 16-bit integers.

Numba has no bfloat16 at all and no float16 arithmetic on the CPU, so these kernels see the
data as ``uint16`` bits (``arr.view(np.uint16)``), widen each value to float32 with bit
operations, compute in float32 and round back once to nearest-even:

- bf16 -> float32: ``bits << 16`` (exact). float32 -> bf16: ``(u + 0x7FFF + ((u >> 16) & 1))
  >> 16``, the rounding-bias trick; a NaN becomes ``sign | 0x7FC0``, as ml_dtypes makes it.
- fp16 -> float32: the full IEEE decode (the exponent rebiased by 112; subnormals
  renormalised by one float32 subtraction; inf and NaN keep their payload, as numpy's cast).
  float32 -> fp16: round-to-nearest-even by the same bias trick at bit 13, 65520 and above
  overflowing to inf, subnormals rounded by one float32 addition of 0.5 (whose ulp is fp16's
  smallest subnormal); a NaN keeps its top 10 payload bits (a zero payload becomes 1), as
  numpy's cast does.

Every kernel gives the bits numpy/ml_dtypes give for ``(a.astype(float32) op
b.astype(float32)).astype(dtype)``, checked over all 65536 patterns of one operand
(``tests/unit/test_half_kernels.py``). Where the float32 result is a NaN its bits are chosen,
not left to the hardware: an operand's NaN (quietened by sum and prod, as x86 does; passed on
unchanged by min and max, as numpy's ``minimum``/``maximum`` do), dst's before src's, else
x86's default NaN ``0xFFC00000`` (inf - inf, 0 * inf), each as the cast makes it, chosen on
the 16-bit operands (fewer instructions). So a CUDA GPU (default NaN ``0x7FFFFFFF``, operand
order the compiler's) gives the same bits (``cuda_reduce.py`` compiles these element
functions), and so do the numpy twins of ``half_np.py``. min and max follow numpy: dst wins
when ``dst < src`` (``>`` for max) or dst is NaN, else src (min(+0, -0) is -0, as in numpy).

The element functions are plain Python, compiled by :func:`element_functions` for a target
(``njit`` here, ``cuda.jit(device=True)`` in the CUDA modules), kept beside the cached
kernels that inline them: Numba's ``cache=True`` checks only the cached function's own file.

Compression (:func:`compress_kernel`, :func:`decompress_kernel`) moves float32 gradients to
16 bits and back, with an optional power-of-two ``scale``: compress stores
``round(src * scale)``, decompress ``dst = widen(src) * scale``, so a caller compresses with
``s`` and decompresses with ``1 / s``. fp16's largest finite value is 65504 and its smallest
normal 2**-14, so a gradient (or the sum of p of them) can overflow to inf or sink into the
subnormals; a caller that knows the largest magnitude ``amax`` over the ranks picks
``s = 2**floor(log2(65504 / (p * amax)))``. A power of two scales exactly in float32 (no
rounding of its own, short of float32's own range), so compress rounds once, as unscaled,
and decompress is exact; any other factor is refused. bf16 has float32's exponent range and
needs no scaling (``scale`` is accepted for symmetry). NaN passes both unchanged, as a cast.
"""
import numpy as np
from numba import njit

# The dtypes and argument checks need no Numba: they live in half_checks.py (BFLOAT16 and
# FORMATS, which import ml_dtypes, at first use: its __getattr__, which this module's is).
from . import half_checks
from .half_checks import (BITS, FLOAT16, as_bits, check_scale,  # noqa: F401 - re-exported
                          format_of, grad_format, half_format)

__getattr__ = half_checks.__getattr__
_U = np.uint32
_F = np.float32
_ABS = _U(0x7FFFFFFF)
_EXP = _U(0x7F800000)
_LOW15 = _U(0x7FFF)
_ONE = _U(1)
_SHIFT13 = _U(13)
_SHIFT16 = _U(16)
_SIGN16 = _U(0x8000)
_BF16_NAN = _U(0x7FC0)
_BF16_BIAS = _U(0x7FFF)
_FP16_INF = _U(0x7C00)
_FP16_PAYLOAD = _U(0x3FF)
_FP16_QUIET = _U(0x0200)
_FP16_EXP = _U(0x0F800000)   # fp16's exponent field, shifted into float32's place
_FP16_REBIAS = _U(112 << 23)  # float32's exponent bias 127 less fp16's 15
_FP16_SUBNORMAL = _U(1 << 23)
_FP16_MIN_NORMAL = _F(2.0 ** -14)
_FP16_MIN_NORMAL_BITS = _U(0x38800000)
_FP16_OVERFLOW_BITS = _U(0x47800000)  # 65536.0: this and above is inf without rounding
_FP16_ROUND = _U(0xFFF)
_HALF = _F(0.5)
_HALF_BITS = _U(0x3F000000)


# ---------------------------------------------------------------------------------------
# Element functions: plain Python, compiled per target by element_functions().

def bf16_to_f32(h):
    """bf16 bits -> float32 (exact)."""
    return _U(_U(h) << _SHIFT16).view(np.float32)


def f32_to_bf16(u):
    """float32 bits -> bf16 bits, round to nearest even; NaN -> sign | 0x7FC0."""
    if (u & _ABS) > _EXP:
        return np.uint16(((u >> _SHIFT16) & _SIGN16) | _BF16_NAN)
    return np.uint16(_U(u + _BF16_BIAS + ((u >> _SHIFT16) & _ONE)) >> _SHIFT16)


def fp16_to_f32(h):
    """fp16 bits -> float32 (exact; inf and NaN keep their payload)."""
    o = _U(_U(_U(h) & _LOW15) << _SHIFT13)
    exponent = o & _FP16_EXP
    o = _U(o + _FP16_REBIAS)
    if exponent == _FP16_EXP:       # inf or NaN: float32's all-ones exponent
        o = _U(o + _FP16_REBIAS)
    elif exponent == 0:             # zero or subnormal: 2**-14 * (1 + m/1024) - 2**-14
        o = _F(_U(o + _FP16_SUBNORMAL).view(np.float32) - _FP16_MIN_NORMAL).view(np.uint32)
    return _U(o | _U(_U(_U(h) & _SIGN16) << _SHIFT16)).view(np.float32)


def f32_to_fp16(u):
    """float32 bits -> fp16 bits, round to nearest even, numpy's NaN payload rule."""
    sign = _U(u >> _SHIFT16) & _SIGN16
    a = u & _ABS
    if a > _EXP:
        payload = _U(a >> _SHIFT13) & _FP16_PAYLOAD
        return np.uint16(sign | _FP16_INF | (payload if payload != 0 else _ONE))
    if a >= _FP16_OVERFLOW_BITS:
        return np.uint16(sign | _FP16_INF)
    if a < _FP16_MIN_NORMAL_BITS:
        # 0.5 + |x| rounds |x| to a multiple of 2**-24 (fp16's subnormal step) in hardware.
        rounded = _F(_U(a).view(np.float32) + _HALF).view(np.uint32)
        return np.uint16(sign | _U(rounded - _HALF_BITS))
    odd = _U(a >> _SHIFT13) & _ONE
    return np.uint16(sign | _U(_U(a - _FP16_REBIAS + _FP16_ROUND + odd) >> _SHIFT13))


def bf16_quiet(h):
    """A bf16 NaN as an arithmetic result: ml_dtypes' canonical sign | 0x7FC0."""
    return np.uint16((_U(h) & _SIGN16) | _BF16_NAN)


def fp16_quiet(h):
    """An fp16 NaN as an arithmetic result: its quiet bit set, the payload kept (what x86
    does to the float32 NaN, and numpy's cast keeps)."""
    return np.uint16(_U(h) | _FP16_QUIET)


def f32_sum(x, y):
    return x + y


def f32_prod(x, y):
    return x * y


def f32_min(x, y):
    # numpy's minimum: x when x < y or x is NaN, else y (ties and a NaN y give y).
    return x if (x < y or x != x) else y


def f32_max(x, y):
    return x if (x > y or x != x) else y


def scaled(x, s):
    """``x * s``, a NaN passed on unchanged (a multiply would quieten it)."""
    return x if x != x else x * s


OPS = ("sum", "min", "max", "prod")
_OP_ELEMENTS = {"sum": f32_sum, "prod": f32_prod, "min": f32_min, "max": f32_max}
# Per format: decode, encode, quieten a NaN operand, the bits above which a value is NaN (the
# infinity's), and the result of an invalid operation (x86's default NaN 0xFFC00000, cast).
_FORMAT_ELEMENTS = {
    "bf16": (bf16_to_f32, f32_to_bf16, bf16_quiet, _U(0x7F80), np.uint16(0xFFC0)),
    "fp16": (fp16_to_f32, f32_to_fp16, fp16_quiet, _U(0x7C00), np.uint16(0xFE00)),
}


def element_functions(jit):
    """Every half-precision element function compiled with ``jit``, keyed by (what, format):
    ``(op, fmt)``: combine(a, b) -> bits for op in OPS; ``("scale", fmt)``: (h, divisor) ->
    bits; ``("compress", fmt)``: (float32 x, scale) -> bits; ``("decompress", fmt)``: (h,
    scale) -> float32; ``("decode", fmt)``: h -> float32; ``("fold", fmt)``: (h, float32 x,
    scale) -> (bits, float32 t), the compressed ring's sum (:func:`_fold`)."""
    scale_by = jit(scaled)
    out = {}
    for fmt, (decode_py, encode_py, quiet_py, inf, invalid) in _FORMAT_ELEMENTS.items():
        decode, encode = jit(decode_py), jit(encode_py)
        nan_of = jit(_nan_of(jit(quiet_py), inf, invalid))
        for op, element in _OP_ELEMENTS.items():
            if op in ("min", "max"):
                out[op, fmt] = jit(_select(decode, encode, jit(element)))
            else:
                out[op, fmt] = jit(_arithmetic(decode, encode, jit(element), nan_of))
        out["scale", fmt] = jit(_divide(decode, encode, nan_of))
        out["compress", fmt] = jit(_compress(encode, scale_by))
        out["decompress", fmt] = jit(_decompress(decode, scale_by))
        out["decode", fmt] = decode
        out["fold", fmt] = jit(_fold(decode, encode, jit(quiet_py), inf, scale_by))
    return out


def _nan_of(quiet, inf, invalid):
    def nan_of(a, b):
        # The NaN of a NaN result, chosen on the 16-bit operands (cheaper than on float32):
        # a's quietened, else b's, else the invalid operation's.
        if (_U(a) & _LOW15) > inf:
            return quiet(a)
        if (_U(b) & _LOW15) > inf:
            return quiet(b)
        return invalid
    return nan_of


def _arithmetic(decode, encode, element, nan_of):
    def combine(a, b):
        u = _F(element(decode(a), decode(b))).view(np.uint32)
        # The encoder's own NaN test, repeated: the compiler drops the encoder's copy.
        return nan_of(a, b) if (u & _ABS) > _EXP else encode(u)
    return combine


def _select(decode, encode, element):
    # min and max return one of their operands, a NaN unquietened, as numpy's do; the
    # encoding gives it the bits numpy's cast would.
    def combine(a, b):
        return encode(_F(element(decode(a), decode(b))).view(np.uint32))
    return combine


def _divide(decode, encode, nan_of):
    def divide(h, divisor):
        u = _F(decode(h) / divisor).view(np.uint32)
        return nan_of(h, h) if (u & _ABS) > _EXP else encode(u)
    return divide


def _compress(encode, scale_by):
    def compress(x, scale):
        return encode(_F(scale_by(x, scale)).view(np.uint32))
    return compress


def _decompress(decode, scale_by):
    def decompress(h, scale):
        return scale_by(decode(h), scale)
    return decompress


def _fold(decode, encode, quiet, inf, scale_by):
    def fold(h, x, scale):
        # t = widen(h) + x * scale in float32, and t rounded. Where both are NaN, h's NaN
        # (quietened) is t's, as x86 adds with h first; where one is, x86 gives that one
        # quietened in either operand order, and inf - inf its default NaN (0xFFC00000).
        t = _F(decode(h) + _F(scale_by(x, scale)))
        u = t.view(np.uint32)
        # One test of both (& rather than and): fp16's fold runs 3x faster without the branch.
        if ((u & _ABS) > _EXP) & ((_U(h) & _LOW15) > inf):
            return quiet(h), t
        return encode(u), t
    return fold


# ---------------------------------------------------------------------------------------
# CPU kernels on uint16 bits: (dst, src) reductions, (dst, divisor) scaling, the codecs.

_E = element_functions(njit(inline="always"))
_bf16_sum, _bf16_prod, _bf16_min, _bf16_max = (_E[op, "bf16"] for op in _OP_ELEMENTS)
_fp16_sum, _fp16_prod, _fp16_min, _fp16_max = (_E[op, "fp16"] for op in _OP_ELEMENTS)
_bf16_scale, _fp16_scale = _E["scale", "bf16"], _E["scale", "fp16"]
_bf16_compress, _fp16_compress = _E["compress", "bf16"], _E["compress", "fp16"]
_bf16_decompress, _fp16_decompress = _E["decompress", "bf16"], _E["decompress", "fp16"]
_bf16_fold, _fp16_fold = _E["fold", "bf16"], _E["fold", "fp16"]
_bf16_decode, _fp16_decode = _E["decode", "bf16"], _E["decode", "fp16"]


@njit(nogil=True, cache=True)
def bf16_sum(dst, src):
    for i in range(dst.size):
        dst[i] = _bf16_sum(dst[i], src[i])


@njit(nogil=True, cache=True)
def bf16_prod(dst, src):
    for i in range(dst.size):
        dst[i] = _bf16_prod(dst[i], src[i])


@njit(nogil=True, cache=True)
def bf16_min(dst, src):
    for i in range(dst.size):
        dst[i] = _bf16_min(dst[i], src[i])


@njit(nogil=True, cache=True)
def bf16_max(dst, src):
    for i in range(dst.size):
        dst[i] = _bf16_max(dst[i], src[i])


@njit(nogil=True, cache=True)
def fp16_sum(dst, src):
    for i in range(dst.size):
        dst[i] = _fp16_sum(dst[i], src[i])


@njit(nogil=True, cache=True)
def fp16_prod(dst, src):
    for i in range(dst.size):
        dst[i] = _fp16_prod(dst[i], src[i])


@njit(nogil=True, cache=True)
def fp16_min(dst, src):
    for i in range(dst.size):
        dst[i] = _fp16_min(dst[i], src[i])


@njit(nogil=True, cache=True)
def fp16_max(dst, src):
    for i in range(dst.size):
        dst[i] = _fp16_max(dst[i], src[i])


@njit(nogil=True, cache=True)
def bf16_scale(dst, divisor):
    for i in range(dst.size):
        dst[i] = _bf16_scale(dst[i], divisor)


@njit(nogil=True, cache=True)
def fp16_scale(dst, divisor):
    for i in range(dst.size):
        dst[i] = _fp16_scale(dst[i], divisor)


@njit(nogil=True, cache=True)
def bf16_compress(dst, src, scale):
    for i in range(dst.size):
        dst[i] = _bf16_compress(src[i], scale)


@njit(nogil=True, cache=True)
def fp16_compress(dst, src, scale):
    for i in range(dst.size):
        dst[i] = _fp16_compress(src[i], scale)


@njit(nogil=True, cache=True)
def bf16_decompress(dst, src, scale):
    for i in range(dst.size):
        dst[i] = _bf16_decompress(src[i], scale)


@njit(nogil=True, cache=True)
def fp16_decompress(dst, src, scale):
    for i in range(dst.size):
        dst[i] = _fp16_decompress(src[i], scale)


REDUCE = {("sum", "bf16"): bf16_sum, ("prod", "bf16"): bf16_prod,
           ("min", "bf16"): bf16_min, ("max", "bf16"): bf16_max,
           ("sum", "fp16"): fp16_sum, ("prod", "fp16"): fp16_prod,
           ("min", "fp16"): fp16_min, ("max", "fp16"): fp16_max}
SCALE = {"bf16": bf16_scale, "fp16": fp16_scale}
COMPRESS = {"bf16": bf16_compress, "fp16": fp16_compress}
DECOMPRESS = {"bf16": bf16_decompress, "fp16": fp16_decompress}


# ---------------------------------------------------------------------------------------
# The compressed ring's kernels (collectives/compress.py): float32 ``src``, 16-bit ``dst``.
# With ``feedback`` (error feedback) ``src`` holds the input g + r and is overwritten with
# what the rounding removed, unscaled; the test is loop-invariant, hoisted by the compiler.

@njit(nogil=True, cache=True)
def bf16_send(dst, src, scale, unscale, feedback):
    for i in range(dst.size):
        x = src[i]
        h = dst[i] = _bf16_compress(x, scale)
        if feedback:
            src[i] = x - _bf16_decompress(h, unscale)


@njit(nogil=True, cache=True)
def fp16_send(dst, src, scale, unscale, feedback):
    for i in range(dst.size):
        x = src[i]
        h = dst[i] = _fp16_compress(x, scale)
        if feedback:
            src[i] = x - _fp16_decompress(h, unscale)


@njit(nogil=True, cache=True)
def bf16_fold(dst, src, scale, unscale, feedback):
    for i in range(dst.size):
        h, t = _bf16_fold(dst[i], src[i], scale)
        dst[i] = h
        if feedback:
            src[i] = (t - _bf16_decode(h)) * unscale


@njit(nogil=True, cache=True)
def fp16_fold(dst, src, scale, unscale, feedback):
    for i in range(dst.size):
        h, t = _fp16_fold(dst[i], src[i], scale)
        dst[i] = h
        if feedback:
            src[i] = (t - _fp16_decode(h)) * unscale


# (dst, src, scale, unscale, feedback): ``send`` stores round(src * scale) in dst, ``fold``
# round(widen(dst) + src * scale).
RING = {("send", "bf16"): bf16_send, ("send", "fp16"): fp16_send,
        ("fold", "bf16"): bf16_fold, ("fold", "fp16"): fp16_fold}
