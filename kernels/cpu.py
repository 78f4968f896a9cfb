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

bfloat16 (``ml_dtypes.bfloat16``) and float16 have kernels of their own, on the uint16 bits,
computing in float32: Numba's in ``half.py`` (Numba cannot compile either type's arithmetic on
the CPU), 2.2-11x faster than numpy's float16 loop and ml_dtypes' ufuncs, and their numpy
twins in ``half_np.py``, which give the same bits and need neither Numba nor ml_dtypes. They
serve :func:`reduce_kernel` and :func:`scale_kernel` like every other dtype, and the gradient
codecs :func:`compress_kernel` and :func:`decompress_kernel`: the twins first, Numba's once
loading it pays (``HALF``, below). ``impl="numpy"`` names the twins.

NaN handling follows numpy's ``minimum``/``maximum``: a NaN in either operand wins, so a NaN
on any rank shows in the result (MPI leaves this unspecified).
"""
import time
import warnings

import numpy as np

from .half_checks import as_bits, check_scale, format_of, half_format


def _half():
    """kernels.half, Numba's half-precision kernels: imported once they pay (``HALF``)."""
    from . import half
    return half


def _is_half(dtype):
    return format_of(dtype) is not None


__all__ = ["BUY_SECONDS", "HALF", "OPS", "NUMBA_SERVES", "compress_kernel",
           "decompress_kernel", "first_kernel", "np_kernel", "reduce_kernel", "ring_kernel",
           "scale_kernel", "wire_reduce_kernel"]

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
    measured on this machine serves. For the half-precision dtypes "numpy" is half_np's
    twins, and the default the rent-or-buy choice below (``HALF``).
    """
    dtype = np.dtype(dtype)
    if op not in _UFUNC:
        raise ValueError(f"unknown reduction op {op!r}; expected one of {', '.join(OPS)}")
    if _is_half(dtype):
        return half_reduce_kernel(op, dtype, impl and _impl(impl, True))
    if _impl(impl, (op, dtype.char) in NUMBA_SERVES) == "numpy":
        return _NP[op]
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
    if _is_half(dtype):
        return half_scale_kernel(dtype, impl and _impl(impl, True))
    if _impl(impl, dtype.kind == "c") == "numpy":
        return _np_scale
    from .loops import nb_scale
    return nb_scale


# ---------------------------------------------------------------------------------------
# bfloat16 and float16: launchers that accept arrays of the half dtype or of its uint16 bits,
# served by half_np.py's numpy twins or half.py's Numba kernels (the same bits either way).
#
# Which serves by default is a rent-or-buy choice. Importing Numba and loading its first
# cached kernel costs about a second here (docs/benchmarks.md, "Start-up"), more than the
# whole rest of a first collective; the twins need nothing loaded but take 2.7-30x Numba's
# time (docs/benchmarks.md, "Half-precision kernels": 7x for a bf16 sum of 1 MiB, 30x at
# 16 MiB, where their temporaries leave the cache). So the twins serve until
# they have spent BUY_SECONDS, what the load costs, and Numba's kernels from then on: a
# process that reduces little half-precision data never loads Numba, and one that reduces
# much pays at most twice the load in all (the rent-or-buy bound). Each rank decides by its
# own clock; since both give the same bits, ranks that switch at different calls still
# agree on every result.
BUY_SECONDS = 1.0


class _HalfServer:
    """Which module serves the default (``impl=None``) half-precision kernels."""

    def __init__(self):
        self.numba = None      # kernels.half once loaded
        self.rented = 0.0      # seconds the twins have served
        self.failed = None     # why loading Numba failed, if it did

    def module(self, impl):
        """half_np or half for ``impl`` ("numpy", "numba", None), and whether to time it."""
        if impl == "numpy":
            return _twins(), False
        if impl == "numba" or self.numba is not None:
            return self.load(), False
        if self.failed is None and self.rented >= BUY_SECONDS:
            # The switch comes inside a collective, where an error on one rank would leave
            # the others waiting: if Numba cannot load, say so once and keep the twins,
            # which give the same bits.
            try:
                return self.load(), False
            except Exception as exc:  # noqa: BLE001 - any failure to load: stay correct
                self.failed = exc
                warnings.warn(f"ringreduce: Numba's half-precision kernels failed to load "
                              f"({type(exc).__name__}: {exc}); numpy's serve on",
                              RuntimeWarning, stacklevel=2)
        return _twins(), self.failed is None

    def load(self):
        if self.numba is None:
            self.numba = _half()
        return self.numba

    def reset(self):
        """Back to the twins (tests)."""
        self.numba, self.rented, self.failed = None, 0.0, None


HALF = _HalfServer()


def _twins():
    from . import half_np
    return half_np


def _served(impl, table, key):
    """A callable that runs ``table[key]`` of the module serving ``impl`` at call time."""
    server = HALF

    def run(*args):
        module, timed = server.module(impl)
        if not timed:
            getattr(module, table)[key](*args)
            return
        t0 = time.perf_counter()
        getattr(module, table)[key](*args)
        server.rented += time.perf_counter() - t0

    return run


def half_reduce_kernel(op, dtype, impl=None):
    """The ``(dst, src)`` kernel computing ``dst op= src`` on bfloat16 or float16 arrays."""
    return wire_reduce_kernel(op, half_format(dtype, "reduce_kernel"), impl)


def wire_reduce_kernel(op, fmt, impl=None):
    """``half_reduce_kernel`` for the format "bf16" or "fp16" by name: no dtype needed, so
    float32 data compressed to bfloat16 never imports ml_dtypes."""
    kernel = _served(impl, "REDUCE", (op, fmt))

    def reduce(dst, src):
        kernel(as_bits(dst, "dst"), as_bits(src, "src"))

    reduce.__name__ = f"{fmt}_{op}"
    return reduce


def half_scale_kernel(dtype, impl=None):
    """The ``(dst, divisor)`` kernel behind op="avg": divide in float32, round once."""
    fmt = half_format(dtype, "scale_kernel")
    kernel = _served(impl, "SCALE", fmt)

    def scale(dst, divisor):
        kernel(as_bits(dst, "dst"), np.float32(divisor))

    scale.__name__ = f"{fmt}_scale"
    return scale


def compress_kernel(wire_dtype, impl=None):
    """The ``(dst, src, scale=1.0)`` kernel: float32 ``src`` -> ``round(src * scale)`` in
    ``wire_dtype`` (bfloat16 or float16, or its name "bf16"/"fp16"; dst of that dtype or its
    uint16 bits)."""
    return _codec("compress", wire_dtype, impl)


def decompress_kernel(wire_dtype, impl=None):
    """The ``(dst, src, scale=1.0)`` kernel: ``wire_dtype`` ``src`` -> float32 ``src *
    scale`` (pass ``1 / s`` to undo a compression by ``s``)."""
    return _codec("decompress", wire_dtype, impl)


def ring_kernel(what, fmt, impl=None):
    """The compressed ring's kernels, unchecked (the ring's buffers are its own): ``what``
    "send" or "fold", ``(dst, src, scale, unscale, feedback)`` on uint16 ``dst`` and float32
    ``src`` (``half.RING``); "widen", ``(dst, src, scale)``, the decompress kernel."""
    if what == "widen":
        return _served(impl, "DECOMPRESS", fmt)
    return _served(impl, "RING", (what, fmt))


def _codec(what, wire, impl):
    fmt = wire if wire in ("bf16", "fp16") else half_format(wire, f"{what}_kernel")
    compress = what == "compress"
    kernel = _served(impl, "COMPRESS" if compress else "DECOMPRESS", fmt)

    def codec(dst, src, scale=1.0):
        if compress:
            dst = as_bits(dst, "dst")
            _check_float32(src, "src", dst)
        else:
            src = as_bits(src, "src")
            _check_float32(dst, "dst", src)
        kernel(dst, src, check_scale(scale))

    codec.__name__ = f"{fmt}_{what}"
    return codec


def _check_float32(wide, what, bits):
    if wide.dtype != np.float32:
        raise TypeError(f"{what}: expected float32, got {wide.dtype}")
    if wide.shape != bits.shape:
        raise ValueError(f"{what}: shape {wide.shape} differs from the 16-bit array's "
                         f"{bits.shape}")
