"""CPU reduction kernels: ``dst op= src`` on 1-D contiguous arrays of one dtype.

Every kernel has the signature ``(dst, src) -> None`` and is picked once per allreduce call
by :func:`reduce_kernel`; the algorithms never dispatch on the op again.

Two implementations exist for each case, numpy's own ufunc with ``out=dst`` and a Numba
``@njit(nogil=True)`` loop (``loops.py``). Both release the GIL and both are memory-bound:
``benchmarks/kernels_cpu.py`` found them within about 10% of each other in every case but
integer ``prod``, where the Numba loop vectorises and numpy's does not (docs/benchmarks.md,
"CPU reduction kernels"). So numpy serves every full-precision case but integer ``prod``: a
process whose collectives numpy serves never imports Numba, whose import and first cached
kernel cost about a second of the first collective. Every rank picks by the same table, so
every rank computes the same bits.

bfloat16 (``ml_dtypes.bfloat16``) and float16 have Numba kernels of their own in ``half.py``
(Numba cannot compile either type's arithmetic on the CPU, so they work on the uint16 bits and
compute in float32), served here by :func:`reduce_kernel` and :func:`scale_kernel` like every
other dtype, 2.2-11x faster than numpy's float16 loop and ml_dtypes' ufuncs; so do the
gradient codecs :func:`compress_kernel` and :func:`decompress_kernel`. numpy's ufuncs (ml_dtypes'
for bfloat16) remain as ``impl="numpy"``.

NaN handling follows numpy's ``minimum``/``maximum``: a NaN in either operand wins, so a NaN
on any rank shows in the result (MPI leaves this unspecified).
"""
import numpy as np


def _half():
    """kernels.half, imported at the first half-precision call: it imports ml_dtypes, which
    costs more than all the rest of a first small collective (about 1 s here)."""
    from . import half
    return half


def _is_half(dtype):
    return dtype == np.float16 or (dtype.kind == "V" and dtype.name == "bfloat16")


__all__ = ["OPS", "NUMBA_SERVES", "compress_kernel", "decompress_kernel", "first_kernel",
           "np_kernel", "reduce_kernel", "scale_kernel"]

OPS = ("sum", "min", "max", "prod")
_UFUNC = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}


def np_kernel(op):
    """numpy's ufunc as a ``(dst, src)`` kernel."""
    ufunc = _UFUNC[op]
    if op in _BY_KEYWORD:
        def kernel(dst, src):
            ufunc(dst, src, out=dst)
    else:
        def kernel(dst, src):
            ufunc(dst, src, dst)  # out passed by position: 35 ns less a call than out=

    kernel.__name__ = "np_" + op
    return kernel


def _np_first(op):
    ufunc = _UFUNC[op]
    if op in _BY_KEYWORD:
        def first(out, a, b):
            ufunc(a, b, out=out)
    else:
        def first(out, a, b):
            ufunc(a, b, out)

    first.__name__ = "np_first_" + op
    return first


# numpy 2.4 deprecates a third positional argument (the output) to minimum and maximum.
_BY_KEYWORD = ("min", "max")
_NP = {op: np_kernel(op) for op in OPS}
_NP_FIRST = {_NP[op]: _np_first(op) for op in OPS}

# Full-precision cases the Numba loop serves, keys (op, dtype.char); numpy's ufunc serves the
# rest. Integer prod, because the loop was reliably faster in benchmarks/kernels_cpu.py (1 MiB:
# 98-109 GB/s against numpy's 78-80). Complex prod, because numpy's complex multiply rounds
# differently depending on which of its inner loops runs (a SIMD one with fused multiply-adds,
# or the scalar one), which depends on the arrays' layout: the shared-memory fold and a plain
# fold of the same operands differed in the last bit; the Numba loop is one formula. The
# complex avg scaling (a complex division) is the Numba loop's for the same reason.
NUMBA_SERVES = frozenset([("prod", np.dtype(t).char) for t in (
    "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "complex64", "complex128")])


def reduce_kernel(op, dtype, impl=None):
    """The ``(dst, src)`` kernel for ``op`` on ``dtype``.

    ``impl`` forces "numba" or "numpy" (benchmarks and tests); by default the faster one
    measured on this machine serves (the half-precision dtypes: always Numba's).
    """
    dtype = np.dtype(dtype)
    if op not in _UFUNC:
        raise ValueError(f"unknown reduction op {op!r}; expected one of {', '.join(OPS)}")
    impl = _impl(impl, _is_half(dtype) or (op, dtype.char) in NUMBA_SERVES)
    if impl == "numpy":
        return _NP[op]
    if _is_half(dtype):
        return half_reduce_kernel(op, dtype)
    from .loops import NUMBA
    return NUMBA[op]


def first_kernel(kernel):
    """The fused ``(out, a, b)``: ``out = a op b`` in one pass, for the ``(dst, src)`` kernel
    ``kernel`` (the same bits as copying ``a`` to ``out`` and applying ``kernel``), or None
    where there is none (the half-precision kernels): the shared-memory fold's first step."""
    got = _NP_FIRST.get(kernel)
    if got is None and kernel.__module__.endswith("loops"):
        from .fold import FIRST
        got = FIRST.get(kernel)
    return got


def _impl(impl, numba_faster):
    if impl is None:
        return "numba" if numba_faster else "numpy"
    if impl not in ("numba", "numpy"):
        raise ValueError(f"unknown kernel implementation {impl!r}; expected 'numba' or 'numpy'")
    return impl


def _np_scale(dst, divisor):
    np.divide(dst, divisor, out=dst, casting="unsafe")


def scale_kernel(dtype, impl=None):
    """The ``(dst, divisor)`` kernel behind op="avg": ``dst /= divisor`` in dst's dtype."""
    dtype = np.dtype(dtype)
    if _impl(impl, _is_half(dtype) or dtype.kind == "c") == "numpy":
        return _np_scale
    if _is_half(dtype):
        return half_scale_kernel(dtype)
    from .loops import nb_scale
    return nb_scale


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
