"""CUDA reductions ``(dst, src)``, the op="avg" scaling ``(dst, divisor)`` and the gradient
codecs ``(dst, src, scale)``.

The same shapes as the CPU kernels in ``cpu.py``: a reduction kernel computes ``dst op= src``
and is chosen once per allreduce call by :func:`reduce_kernel`; :func:`scale_kernel` divides
``dst`` by ``divisor`` (the number of ranks, for op="avg"); :func:`compress_kernel` and
:func:`decompress_kernel` move float32 to bfloat16/float16 and back. Every launcher also takes
``stream=0``.

Semantics match ``cpu.py``: min/max let a NaN in either operand win, like numpy's
``minimum``/``maximum``; integer sums and products wrap; avg on integers divides in float64
and truncates toward zero, exactly as the CPU kernel does. bfloat16 and float16 run as uint16
bits through the element functions of ``half.py``, compiled here as device functions: float32
arithmetic, one rounding to nearest even, NaNs chosen explicitly rather than by the hardware,
so every bit equals the CPU kernels' (numba-cuda has no bfloat16, and its native float16
would make its own NaNs). Arrays of those dtypes may also come as their uint16 or int16 bits.

The kernels are two templates unrolled by hand, alike on purpose: see ``UNROLL``.
"""
import functools

import numpy as np

from .cuda_launch import (as_bits_vector, as_vector, check_dtype, half_elements, half_format,
                          launch_config, numba_cuda, require_cuda, vector_type)
from .half import BFLOAT16, BITS, check_scale

OPS = ("sum", "min", "max", "prod")
DTYPES = tuple(np.dtype(name) for name in (
    "float16", "float32", "float64",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")) + (BFLOAT16,)

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

    fmt = half_format(dtype)
    if fmt is None:
        combine, vec = numba_cuda.jit(device=True)(_COMBINE[op]), vector_type(dtype)
    else:
        combine, vec = half_elements()[op, fmt], vector_type(BITS)

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


def _vectors(dtype, dst, src):
    """dst and src as the kernel's vectors (uint16 bits for the half types), same length."""
    if half_format(dtype) is None:
        dst = as_vector(dst, "dst", dtype)
        return dst, as_vector(src, "src", dtype, dst.size)
    dst = as_bits_vector(dst, "dst", dtype)
    return dst, as_bits_vector(src, "src", dtype, dst.size)


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
        dst, src = _vectors(dtype, dst, src)
        if dst.size:
            blocks, threads = launch_config(dst.size)
            kernel[blocks, threads, stream](dst, src)

    reduce.__name__ = f"cuda_{op}_{dtype}"
    return reduce


@functools.lru_cache(maxsize=None)
def _map_compiled(element, dst_type, src_type, arg_type):
    """``dst[i] = element(src[i], arg)`` for every i; dst and src may be one array."""
    from numba import void

    @numba_cuda.jit(void(dst_type[::1], src_type[::1], arg_type))
    def kernel(dst, src, arg):
        n = dst.size
        stride = numba_cuda.gridsize(1)
        i = numba_cuda.grid(1)
        # Unrolled like the reduction: with one load per trip the loop would be latency-bound.
        while i + (UNROLL - 1) * stride < n:
            i1 = i + stride
            i2 = i1 + stride
            i3 = i2 + stride
            a0 = src[i]
            a1 = src[i1]
            a2 = src[i2]
            a3 = src[i3]
            dst[i] = element(a0, arg)
            dst[i1] = element(a1, arg)
            dst[i2] = element(a2, arg)
            dst[i3] = element(a3, arg)
            i = i3 + stride
        while i < n:
            dst[i] = element(src[i], arg)
            i += stride

    return kernel


def _divide(a, divisor):
    return a / divisor


@functools.lru_cache(maxsize=None)
def _scale_compiled(dtype):
    from numba import float32, float64, from_dtype

    fmt = half_format(dtype)
    if fmt is not None:  # float32 division, one rounding: half.py's element
        return _map_compiled(half_elements()["scale", fmt], from_dtype(BITS),
                             from_dtype(BITS), float32), np.float32
    # float32 divides in float32; float64 and the integers divide in float64 like the CPU
    # kernel, whose store then truncates integers toward zero.
    divisor_type = float32 if dtype == np.float32 else float64
    element = numba_cuda.jit(device=True)(_divide)
    return (_map_compiled(element, from_dtype(dtype), from_dtype(dtype), divisor_type),
            np.float32 if divisor_type.bitwidth == 32 else np.float64)


def scale_kernel(dtype):
    """The ``(dst, divisor, stream=0)`` kernel behind op="avg": ``dst /= divisor``."""
    dtype = check_dtype(dtype, DTYPES, "scale_kernel")
    require_cuda()
    kernel, cast = _scale_compiled(dtype)
    half = half_format(dtype) is not None

    def scale(dst, divisor, stream=0):
        dst = as_bits_vector(dst, "dst", dtype) if half else as_vector(dst, "dst", dtype)
        if dst.size:
            blocks, threads = launch_config(dst.size)
            kernel[blocks, threads, stream](dst, dst, cast(divisor))

    scale.__name__ = f"cuda_scale_{dtype}"
    return scale


def compress_kernel(wire_dtype):
    """The ``(dst, src, scale=1.0, stream=0)`` kernel: float32 ``src`` -> ``round(src *
    scale)`` in ``wire_dtype``; the CPU twin's rules (``cpu.compress_kernel``)."""
    return _codec("compress", wire_dtype)


def decompress_kernel(wire_dtype):
    """The ``(dst, src, scale=1.0, stream=0)`` kernel: ``wire_dtype`` ``src`` -> float32
    ``src * scale``; the CPU twin's rules (``cpu.decompress_kernel``)."""
    return _codec("decompress", wire_dtype)


def _codec(what, wire_dtype):
    fmt = half_format(wire_dtype)
    if fmt is None:
        raise TypeError(f"{what}_kernel: expected bfloat16 or float16, got "
                        f"{np.dtype(wire_dtype)}")
    require_cuda()
    from numba import float32, uint16

    wire, f32 = np.dtype(wire_dtype), np.dtype(np.float32)
    compress = what == "compress"
    kernel = _map_compiled(half_elements()[what, fmt], *((uint16, float32) if compress
                                                         else (float32, uint16)), float32)

    def codec(dst, src, scale=1.0, stream=0):
        if compress:
            dst = as_bits_vector(dst, "dst", wire)
            src = as_vector(src, "src", f32, dst.size)
        else:
            src = as_bits_vector(src, "src", wire)
            dst = as_vector(dst, "dst", f32, src.size)
        scale = check_scale(scale)
        if dst.size:
            blocks, threads = launch_config(dst.size)
            kernel[blocks, threads, stream](dst, src, scale)

    codec.__name__ = f"cuda_{what}_{wire}"
    return codec
