"""CPU reduction kernels: ``dst op= src`` on 1-D contiguous arrays of one dtype.

Every kernel has the signature ``(dst, src) -> None`` and is picked once per allreduce call
by :func:`reduce_kernel`; the algorithms never dispatch on the op again.

Two implementations exist for each case, a Numba ``@njit(nogil=True)`` loop and numpy's own
ufunc with ``out=dst``. Both release the GIL. Which one serves a case is decided by
``benchmarks/kernels_cpu.py`` on the development machine (2-core x86-64, numpy 2.4, numba
0.68); the figures behind each choice are in ``docs/benchmarks.md`` ("CPU reduction kernels").

bfloat16 (``ml_dtypes.bfloat16``) and float16 have Numba kernels of their own in ``half.py``
(Numba cannot compile either type's arithmetic on the CPU, so they work on the uint16 bits and
compute in float32), served here by :func:`reduce_kernel` and :func:`scale_kernel` like every
other dtype, and so do the gradient codecs :func:`compress_kernel` and
:func:`decompress_kernel`. numpy's ufuncs (ml_dtypes' for bfloat16) remain as
``impl="numpy"``.

NaN handling follows numpy's ``minimum``/``maximum``: a NaN in either operand wins, so a NaN
on any rank shows in the result (MPI leaves this unspecified).
"""
import numpy as np
from numba import njit


def _half():
    """kernels.half, imported at the first half-precision call: it imports ml_dtypes, which
    costs more than all the rest of a first small collective (about 1 s here)."""
    from . import half
    return half


def _is_half(dtype):
    return dtype == np.float16 or (dtype.kind == "V" and dtype.name == "bfloat16")

__all__ = ["OPS", "NUMPY_FASTER", "compress_kernel", "decompress_kernel", "np_kernel",
           "reduce_kernel", "scale_kernel"]

OPS = ("sum", "min", "max", "prod")


@njit(nogil=True, cache=True)
def nb_sum(dst, src):
    for i in range(dst.size):
        dst[i] += src[i]


@njit(nogil=True, cache=True)
def nb_prod(dst, src):
    for i in range(dst.size):
        dst[i] *= src[i]


@njit(nogil=True, cache=True)
def nb_min(dst, src):
    for i in range(dst.size):
        s = src[i]
        # "s != s" is true only for NaN: propagate it as numpy.minimum does.
        if s < dst[i] or s != s:
            dst[i] = s


@njit(nogil=True, cache=True)
def nb_max(dst, src):
    for i in range(dst.size):
        s = src[i]
        if s > dst[i] or s != s:
            dst[i] = s


@njit(nogil=True, cache=True)
def nb_scale(dst, divisor):
    for i in range(dst.size):
        dst[i] /= divisor


_NUMBA = {"sum": nb_sum, "prod": nb_prod, "min": nb_min, "max": nb_max}
_UFUNC = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}


def np_kernel(op):
    """numpy's ufunc as a ``(dst, src)`` kernel."""
    ufunc = _UFUNC[op]

    def kernel(dst, src):
        ufunc(dst, src, out=dst)

    kernel.__name__ = "np_" + op
    return kernel


_NP = {op: np_kernel(op) for op in OPS}

# Cases where numpy's ufunc beat the Numba loop in benchmarks/kernels_cpu.py (1 MiB and
# 16 MiB arrays, median of 20): filled in from that table. Keys are (op, dtype.char).
# float16 is not among them: its Numba kernel (half.py) against numpy's float16 loop, the
# former fallback, GB/s numba / numpy (that table on the 2-core VM, quiet, median of 20):
#   1 MiB:  sum 6.09 / 0.97, prod 6.27 / 0.91, min 5.96 / 1.92, max 6.23 / 2.79
#   16 MiB: sum 6.30 / 1.02, prod 5.95 / 0.91, min 5.71 / 1.99, max 5.73 / 1.92
# so Numba serves float16, 2.2-6.9x faster; bfloat16 too (6.6-11x over ml_dtypes' ufunc).
NUMPY_FASTER = frozenset()


def reduce_kernel(op, dtype, impl=None):
    """The ``(dst, src)`` kernel for ``op`` on ``dtype``.

    ``impl`` forces "numba" or "numpy" (benchmarks and tests); by default the faster one
    measured on this machine serves.
    """
    dtype = np.dtype(dtype)
    if op not in _NUMBA:
        raise ValueError(f"unknown reduction op {op!r}; expected one of {', '.join(OPS)}")
    impl = _impl(impl, (op, dtype.char) in NUMPY_FASTER)
    if impl == "numpy":
        return _NP[op]
    if _is_half(dtype):
        return half_reduce_kernel(op, dtype)
    return _NUMBA[op]


def _impl(impl, numpy_faster):
    if impl is None:
        return "numpy" if numpy_faster else "numba"
    if impl not in ("numba", "numpy"):
        raise ValueError(f"unknown kernel implementation {impl!r}; expected 'numba' or 'numpy'")
    return impl


def _np_scale(dst, divisor):
    np.divide(dst, divisor, out=dst, casting="unsafe")


def scale_kernel(dtype, impl=None):
    """The ``(dst, divisor)`` kernel behind op="avg": ``dst /= divisor`` in dst's dtype."""
    dtype = np.dtype(dtype)
    if _impl(impl, False) == "numpy":
        return _np_scale
    return half_scale_kernel(dtype) if _is_half(dtype) else nb_scale


# ---------------------------------------------------------------------------------------
# bfloat16 and float16: the Numba kernels of half.py on the uint16 bits, behind launchers
# that accept arrays of the half dtype or of its bits.

def half_reduce_kernel(op, dtype):
    """The ``(dst, src)`` kernel computing ``dst op= src`` on bfloat16 or float16 arrays."""
    half = _half()
    kernel = half.REDUCE[op, half.half_format(dtype, "reduce_kernel")]

    def reduce(dst, src):
        kernel(half.as_bits(dst, "dst"), half.as_bits(src, "src"))

    reduce.__name__ = kernel.__name__
    return reduce


def half_scale_kernel(dtype):
    """The ``(dst, divisor)`` kernel behind op="avg": divide in float32, round once."""
    half = _half()
    kernel = half.SCALE[half.half_format(dtype, "scale_kernel")]

    def scale(dst, divisor):
        kernel(half.as_bits(dst, "dst"), np.float32(divisor))

    scale.__name__ = kernel.__name__
    return scale


def compress_kernel(wire_dtype):
    """The ``(dst, src, scale=1.0)`` kernel: float32 ``src`` -> ``round(src * scale)`` in
    ``wire_dtype`` (bfloat16 or float16; dst of that dtype or its uint16 bits)."""
    return _codec("compress", wire_dtype)


def decompress_kernel(wire_dtype):
    """The ``(dst, src, scale=1.0)`` kernel: ``wire_dtype`` ``src`` -> float32 ``src *
    scale`` (pass ``1 / s`` to undo a compression by ``s``)."""
    return _codec("decompress", wire_dtype)


def _codec(what, wire_dtype):
    half = _half()
    fmt = half.half_format(wire_dtype, f"{what}_kernel")
    compress = what == "compress"
    kernel = (half.COMPRESS if compress else half.DECOMPRESS)[fmt]

    def codec(dst, src, scale=1.0):
        if compress:
            dst = half.as_bits(dst, "dst")
            _check_float32(src, "src", dst)
        else:
            src = half.as_bits(src, "src")
            _check_float32(dst, "dst", src)
        kernel(dst, src, half.check_scale(scale))

    codec.__name__ = kernel.__name__
    return codec


def _check_float32(wide, what, bits):
    if wide.dtype != np.float32:
        raise TypeError(f"{what}: expected float32, got {wide.dtype}")
    if wide.shape != bits.shape:
        raise ValueError(f"{what}: shape {wide.shape} differs from the 16-bit array's "
                         f"{bits.shape}")
