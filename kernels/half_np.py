"""The half-precision CPU kernels of ``half.py`` in numpy, bit for bit: what serves bfloat16 and
float16 until Numba is loaded (``cpu.py`` says when), with neither Numba nor ml_dtypes.

``half.py``'s kernels loop over elements in compiled code; these take whole arrays with numpy
operations: widen both operands to float32, compute there, round once, as ``half.py``'s element
functions do, and follow the same rules for every bit pattern:

- bf16 widens by ``bits << 16``; rounds by the bias trick ``(u + 0x7FFF + ((u >> 16) & 1)) >>
  16``; a NaN becomes ``sign | 0x7FC0``.
- fp16 widens and rounds by numpy's own float16 casts, which are exact (widening) and
  round-to-nearest-even (rounding) on every IEEE machine, overflow to inf included; only a
  NaN's bits are set here, not left to the cast's implementation: widened, the payload moves
  up unchanged (``half.fp16_to_f32``); rounded, it keeps its top 10 payload bits, a zero
  payload becoming 1 (``half.f32_to_fp16``).
- A NaN result of sum, prod and the avg division takes the NaN of an operand, quietened, dst's
  before src's, else the invalid operation's default NaN (``half._nan_of``): chosen on the
  16-bit operands, so the hardware's NaN choice never shows. min and max pass an operand on
  (``half.f32_min``: x when x < y or x is NaN, else y), rounded by the format's NaN rule.

Same tables as ``half.py``: ``REDUCE[op, fmt](dst, src)``, ``SCALE[fmt](dst, divisor)``,
``COMPRESS[fmt](dst, src, scale)``, ``DECOMPRESS[fmt](dst, src, scale)`` and ``RING[what,
fmt](dst, src, scale, unscale, feedback)``, on uint16 bits (any strides) and float32 arrays.
tests/unit/test_half_kernels.py and test_ring_kernels.py run every check on both modules.
"""
import numpy as np

_ABS = np.uint32(0x7FFFFFFF)
_EXP = np.uint32(0x7F800000)
_F16 = np.dtype(np.float16)
_F32 = np.dtype(np.float32)
_U32 = np.dtype(np.uint32)
# Per format: the 16-bit bits above which a value is NaN (the infinity's) and the invalid
# operation's NaN (x86's default 0xFFC00000, rounded), as in half._FORMAT_ELEMENTS.
_INF16 = {"bf16": 0x7F80, "fp16": 0x7C00}
_INVALID16 = {"bf16": 0xFFC0, "fp16": 0xFE00}


def _nan32(u):
    """Where the float32 bits ``u`` are a NaN."""
    return (u & _ABS) > _EXP


def _quiet(h, fmt):
    """A 16-bit NaN operand as an arithmetic result (half.bf16_quiet, half.fp16_quiet)."""
    if fmt == "bf16":
        return (h & 0x8000) | 0x7FC0
    return h | 0x0200


def decode(h, fmt):
    """uint16 bits -> a new float32 array (exact)."""
    if fmt == "bf16":
        w = h.astype(_U32)
        w <<= 16
        return w.view(_F32)
    wide = h.view(_F16).astype(_F32)
    nan = (h & 0x7FFF) > 0x7C00
    if nan.any():
        n = h[nan].astype(_U32)
        wide.view(_U32)[nan] = ((n & 0x8000) << 16) | 0x7F800000 | ((n & 0x3FF) << 13)
    return wide


def encode(u, fmt, nans=True):
    """float32 bits ``u`` (a uint32 array) -> a new uint16 array rounded to nearest-even;
    ``nans=False`` leaves a NaN's bits to the caller."""
    if fmt == "bf16":
        r = (u >> 16) & 1
        r += u
        r += 0x7FFF
        r >>= 16
        out = r.astype(np.uint16)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            out = u.view(_F32).astype(_F16).view(np.uint16)
    if nans:
        nan = _nan32(u)
        if nan.any():
            n = u[nan]
            sign = (n >> 16) & 0x8000
            if fmt == "bf16":
                out[nan] = sign | 0x7FC0
            else:
                payload = (n >> 13) & 0x3FF
                out[nan] = sign | 0x7C00 | np.where(payload == 0, 1, payload)
    return out


def _nan_of(a, b, fmt):
    """The NaN of a NaN result, from the 16-bit operands (half._nan_of), elementwise."""
    inf = _INF16[fmt]
    return np.where((a & 0x7FFF) > inf, _quiet(a, fmt),
                    np.where((b & 0x7FFF) > inf, _quiet(b, fmt), _INVALID16[fmt]))


def _arithmetic(fmt, ufunc):
    def kernel(dst, src):
        with np.errstate(all="ignore"):
            wide = ufunc(decode(dst, fmt), decode(src, fmt))
        u = wide.view(_U32)
        out = encode(u, fmt, nans=False)
        nan = _nan32(u)
        if nan.any():
            out[nan] = _nan_of(dst[nan], src[nan], fmt)
        dst[...] = out
    kernel.__name__ = f"{fmt}_{ufunc.__name__}_np"
    return kernel


def _select(fmt, less):
    def kernel(dst, src):
        x, y = decode(dst, fmt), decode(src, fmt)
        with np.errstate(invalid="ignore"):
            pick = np.where(less(x, y) | (x != x), x, y)
        dst[...] = encode(pick.view(_U32), fmt)
    kernel.__name__ = f"{fmt}_{less.__name__}_np"
    return kernel


def _scale(fmt):
    def kernel(dst, divisor):
        with np.errstate(all="ignore"):
            wide = decode(dst, fmt) / np.float32(divisor)
        u = wide.view(_U32)
        out = encode(u, fmt, nans=False)
        nan = _nan32(u)
        if nan.any():
            h = dst[nan]
            out[nan] = _nan_of(h, h, fmt)
        dst[...] = out
    kernel.__name__ = f"{fmt}_scale_np"
    return kernel


def _scaled(x, scale):
    """``x * scale``, a NaN passed on unchanged (half.scaled): ``x`` itself for a scale of 1,
    else a new array."""
    if scale == 1:
        return x
    with np.errstate(all="ignore"):
        out = x * np.float32(scale)
    nan = x != x
    if nan.any():
        out[nan] = x[nan]
    return out


def _compress(fmt):
    def kernel(dst, src, scale):
        dst[...] = encode(_scaled(src, scale).view(_U32), fmt)
    kernel.__name__ = f"{fmt}_compress_np"
    return kernel


def _decompress(fmt):
    def kernel(dst, src, scale):
        dst[...] = _scaled(decode(src, fmt), scale)
    kernel.__name__ = f"{fmt}_decompress_np"
    return kernel


def _send(fmt):
    def kernel(dst, src, scale, unscale, feedback):
        h = encode(_scaled(src, scale).view(_U32), fmt)
        dst[...] = h
        if feedback:
            with np.errstate(all="ignore"):
                src -= _scaled(decode(h, fmt), unscale)
    kernel.__name__ = f"{fmt}_send_np"
    return kernel


def _fold(fmt):
    def kernel(dst, src, scale, unscale, feedback):
        with np.errstate(all="ignore"):
            t = decode(dst, fmt) + _scaled(src, scale)
        u = t.view(_U32)
        out = encode(u, fmt)
        both = _nan32(u) & ((dst & 0x7FFF) > _INF16[fmt])
        if both.any():
            out[both] = _quiet(dst[both], fmt)
        dst[...] = out
        if feedback:
            with np.errstate(all="ignore"):
                src[...] = (t - decode(out, fmt)) * np.float32(unscale)
    kernel.__name__ = f"{fmt}_fold_np"
    return kernel


FMTS = ("bf16", "fp16")
REDUCE = {}
for _fmt in FMTS:
    REDUCE["sum", _fmt] = _arithmetic(_fmt, np.add)
    REDUCE["prod", _fmt] = _arithmetic(_fmt, np.multiply)
    REDUCE["min", _fmt] = _select(_fmt, np.less)
    REDUCE["max", _fmt] = _select(_fmt, np.greater)
SCALE = {f: _scale(f) for f in FMTS}
COMPRESS = {f: _compress(f) for f in FMTS}
DECOMPRESS = {f: _decompress(f) for f in FMTS}
RING = {(what, f): make(f) for f in FMTS for what, make in (("send", _send), ("fold", _fold))}
