"""CPU reduction kernels: ``dst op= src`` on 1-D contiguous arrays of one dtype.

Every kernel has the signature ``(dst, src) -> None`` and is picked once per allreduce call
by :func:`reduce_kernel`; the algorithms never dispatch on the op again.

Two implementations exist for each case, a Numba ``@njit(nogil=True)`` loop and numpy's own
ufunc with ``out=dst``. Both release the GIL. Which one serves a case is decided by
``benchmarks/kernels_cpu.py`` on the development machine (2-core x86-64, numpy 2.4, numba
0.68); the figures behind each choice are in ``docs/benchmarks.md`` ("CPU reduction kernels").

bfloat16 (``ml_dtypes.bfloat16``) and float16 have Numba kernels of their own in ``half.py``
(Numba cannot compile either type's arithmetic on the CPU, so they work on the uint16 bits and
compute in float32), as do the gradient codecs :func:`compress_kernel` and
:func:`decompress_kernel` re-exported here. numpy's ufuncs (ml_dtypes' for bfloat16) remain
as ``impl="numpy"``.

NaN handling follows numpy's ``minimum``/``maximum``: a NaN in either operand wins, so a NaN
on any rank shows in the result (MPI leaves this unspecified).
"""
import numpy as np
from numba import njit

from .half import (FORMATS, compress_kernel, decompress_kernel, half_reduce_kernel,
                   half_scale_kernel)

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
    if dtype in FORMATS:
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
    return half_scale_kernel(dtype) if dtype in FORMATS else nb_scale
