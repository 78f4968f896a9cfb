"""The Numba CPU loops ``dst op= src`` and ``dst /= divisor`` on 1-D contiguous arrays.

A module of its own so that a collective served by numpy's ufuncs never imports Numba, whose
import and first cached-kernel load cost about a second of a process's first collective
(``kernels/cpu.py`` says which kernel serves which case).

NaN handling follows numpy's ``minimum``/``maximum``: a NaN in either operand wins.
"""
from numba import njit


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


NUMBA = {"sum": nb_sum, "prod": nb_prod, "min": nb_min, "max": nb_max}
