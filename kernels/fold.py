"""The first step of the shared-memory allreduce's fold (``algorithms/shm.py``), fused.

``out = x0 op x1`` in one pass instead of a copy and a reduce: the same arithmetic as copying
x0 and applying the library's ``dst op= src`` kernel, so the same bits (NaN included for min
and max), one pass over the slice fewer. These are the twins of the Numba loops; numpy's
kernels have theirs in ``cpu.py`` (the ufunc with three operands), and the half-precision ones
none (the fold copies, then reduces). ``cpu.first_kernel`` imports this module only for a Numba
loop, so a fold that numpy serves never imports Numba.
"""
from numba import njit

from .loops import nb_max, nb_min, nb_prod, nb_sum


@njit(nogil=True, cache=True)
def _sum_first(out, a, b):
    for i in range(out.size):
        out[i] = a[i] + b[i]


@njit(nogil=True, cache=True)
def _prod_first(out, a, b):
    for i in range(out.size):
        out[i] = a[i] * b[i]


@njit(nogil=True, cache=True)
def _min_first(out, a, b):
    for i in range(out.size):
        x, y = a[i], b[i]
        out[i] = y if (y < x or y != y) else x


@njit(nogil=True, cache=True)
def _max_first(out, a, b):
    for i in range(out.size):
        x, y = a[i], b[i]
        out[i] = y if (y > x or y != y) else x


FIRST = {nb_sum: _sum_first, nb_prod: _prod_first, nb_min: _min_first, nb_max: _max_first}
