"""CPU reduction kernels: ``dst op= src`` on 1-D contiguous arrays of one dtype.

Every kernel has the signature ``(dst, src) -> None`` and is picked once per allreduce call
by :func:`reduce_kernel`; the algorithms never dispatch on the op again.

Two implementations exist for each case, a Numba ``@njit(nogil=True)`` loop and numpy's own
ufunc with ``out=dst``. Both release the GIL. Which one serves a case is decided by
``benchmarks/kernels_cpu.py`` on the development machine (2-core x86-64, numpy 2.4, numba
0.68); the figures behind each choice are in ``docs/benchmarks.md`` ("CPU reduction kernels").
Numba cannot compile float16 arithmetic on the CPU, so float16 always uses numpy.

NaN handling follows numpy's ``minimum``/``maximum``: a NaN in either operand wins, so a NaN
on any rank shows in the result (MPI leaves this unspecified).
"""
import numpy as np
from numba import njit

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
    if impl is None:
        impl = "numpy" if dtype == np.float16 or (op, dtype.char) in NUMPY_FASTER else "numba"
    if impl == "numpy":
        return _NP[op]
    if impl != "numba":
        raise ValueError(f"unknown kernel implementation {impl!r}; expected 'numba' or 'numpy'")
    if dtype == np.float16:
        raise TypeError("Numba has no float16 arithmetic on the CPU; use impl='numpy'")
    return _NUMBA[op]


def _np_scale(dst, divisor):
    np.divide(dst, divisor, out=dst, casting="unsafe")


def scale_kernel(dtype, impl=None):
    """The ``(dst, divisor)`` kernel behind op="avg": ``dst /= divisor`` in dst's dtype."""
    dtype = np.dtype(dtype)
    if impl is None:
        impl = "numpy" if dtype == np.float16 else "numba"
    return _np_scale if impl == "numpy" else nb_scale
