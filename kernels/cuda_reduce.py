"""CUDA reductions ``(dst, src)`` and the op="avg" scaling ``(dst, divisor)``.

The same shapes as the CPU kernels in ``cpu.py``: a reduction kernel computes ``dst op= src``
and is chosen once per allreduce call by :func:`reduce_kernel`; :func:`scale_kernel` divides
``dst`` by ``divisor`` (the number of ranks, for op="avg"). Both launchers also take
``stream=0``.

Semantics match ``cpu.py``: min/max let a NaN in either operand win, like numpy's
``minimum``/``maximum``; integer sums and products wrap; avg on integers divides in float64
and truncates toward zero, exactly as the CPU kernel does. float16 arithmetic runs natively
on devices of compute capability 5.3 or newer (all ops; scaling divides in float32, which
rounds to the same float16 as an exact division would).

The two kernels are unrolled by hand, alike on purpose: see ``UNROLL``.
"""
import functools

import numpy as np

from .cuda_launch import (as_vector, check_dtype, launch_config, numba_cuda, require_cuda,
                          vector_type)

OPS = ("sum", "min", "max", "prod")
DTYPES = tuple(np.dtype(name) for name in (
    "float16", "float32", "float64",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"))

# Elements each thread of the reduction and scaling kernels handles per loop trip (written out
# by hand in those kernels, hence fixed). On an H200, 256 MiB float32, against the copy's
# bandwidth: one element a trip gave sum 86% and scale 67%, four gave 89% and 90%
# (benchmarks/gpu.py rows "reduce sum", "scale (avg)"; the one-element variants were timed
# the same way beside it). The optimizer kernels already load 3-4 arrays a trip and reach
# 86-93% without unrolling. A grid of four waves instead of one moved no kernel consistently.
UNROLL = 4

# The combine functions are plain Python so that the simulator runs the same source; each
# becomes a device function inlined into its kernel.

def _sum(a, b):
    return a + b


def _prod(a, b):
    return a * b


def _min(a, b):
    # "b != b" is true only for NaN: a NaN in src wins, and one in dst stays (b < NaN is
    # false). The store is unconditional so that every element is written, as counted.
    return b if (b < a or b != b) else a


def _max(a, b):
    return b if (b > a or b != b) else a


_COMBINE = {"sum": _sum, "prod": _prod, "min": _min, "max": _max}


@functools.lru_cache(maxsize=None)
def _reduce_compiled(op, dtype):
    from numba import void

    combine = numba_cuda.jit(device=True)(_COMBINE[op])
    vec = vector_type(dtype)

    @numba_cuda.jit(void(vec, vec))
    def kernel(dst, src):
        n = dst.size
        stride = numba_cuda.gridsize(1)
        i = numba_cuda.grid(1)
        # UNROLL elements a trip, every load before any store. The compiler may not move a
        # load above a store to another, possibly aliased, array, so a one-element loop keeps
        # only two loads per thread in flight, too few to cover the memory latency.
        while i + (UNROLL - 1) * stride < n:
            i1 = i + stride
            i2 = i1 + stride
            i3 = i2 + stride
            a0 = dst[i]
            a1 = dst[i1]
            a2 = dst[i2]
            a3 = dst[i3]
            b0 = src[i]
            b1 = src[i1]
            b2 = src[i2]
            b3 = src[i3]
            dst[i] = combine(a0, b0)
            dst[i1] = combine(a1, b1)
            dst[i2] = combine(a2, b2)
            dst[i3] = combine(a3, b3)
            i = i3 + stride
        while i < n:
            dst[i] = combine(dst[i], src[i])
            i += stride

    return kernel


def reduce_kernel(op, dtype):
    """The ``(dst, src, stream=0)`` kernel computing ``dst op= src`` for ``op`` on ``dtype``.

    Compiles on the first request for an (op, dtype) pair; later requests reuse it.
    """
    if op not in _COMBINE:
        raise ValueError(f"unknown reduction op {op!r}; expected one of {', '.join(OPS)}")
    dtype = check_dtype(dtype, DTYPES, "reduce_kernel")
    require_cuda()
    kernel = _reduce_compiled(op, dtype)

    def reduce(dst, src, stream=0):
        dst = as_vector(dst, "dst", dtype)
        src = as_vector(src, "src", dtype, dst.size)
        if dst.size:
            blocks, threads = launch_config(dst.size)
            kernel[blocks, threads, stream](dst, src)

    reduce.__name__ = f"cuda_{op}_{dtype}"
    return reduce


@functools.lru_cache(maxsize=None)
def _scale_compiled(dtype):
    from numba import float32, float64, void

    # float16/float32 divide in float32 (both rounding steps together give the correctly
    # rounded result); float64 and the integers divide in float64 like the CPU kernel,
    # whose store then truncates integers toward zero.
    divisor_type = float32 if dtype.itemsize <= 4 and dtype.kind == "f" else float64

    @numba_cuda.jit(void(vector_type(dtype), divisor_type))
    def kernel(dst, divisor):
        n = dst.size
        stride = numba_cuda.gridsize(1)
        i = numba_cuda.grid(1)
        # Unrolled like the reduction: with one load per trip the loop would be latency-bound.
        while i + (UNROLL - 1) * stride < n:
            i1 = i + stride
            i2 = i1 + stride
            i3 = i2 + stride
            a0 = dst[i]
            a1 = dst[i1]
            a2 = dst[i2]
            a3 = dst[i3]
            dst[i] = a0 / divisor
            dst[i1] = a1 / divisor
            dst[i2] = a2 / divisor
            dst[i3] = a3 / divisor
            i = i3 + stride
        while i < n:
            dst[i] = dst[i] / divisor
            i += stride

    return kernel, divisor_type


def scale_kernel(dtype):
    """The ``(dst, divisor, stream=0)`` kernel behind op="avg": ``dst /= divisor``."""
    dtype = check_dtype(dtype, DTYPES, "scale_kernel")
    require_cuda()
    kernel, divisor_type = _scale_compiled(dtype)
    cast = np.float32 if divisor_type.bitwidth == 32 else np.float64

    def scale(dst, divisor, stream=0):
        dst = as_vector(dst, "dst", dtype)
        if dst.size:
            blocks, threads = launch_config(dst.size)
            kernel[blocks, threads, stream](dst, cast(divisor))

    scale.__name__ = f"cuda_scale_{dtype}"
    return scale
