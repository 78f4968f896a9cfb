"""The half-precision dtypes and what the launchers (``cpu.py``, the CUDA modules) check
their arguments with: plain Python, no Numba, so a caller that only needs a dtype or a check
does not compile kernels. ``half.py`` re-exports every name.

No ml_dtypes either, whose import costs more than a whole first collective (0.8-1 s here with
ml_dtypes 0.7): bfloat16 is told by its name, and ``BFLOAT16`` and ``FORMATS``, which hold
ml_dtypes' dtype, are made at their first use."""
import math

import numpy as np

FLOAT16 = np.dtype(np.float16)
BITS = np.dtype(np.uint16)


def __getattr__(name):
    # BFLOAT16 (ml_dtypes' dtype) and FORMATS (each half dtype's name in the kernel tables).
    if name == "BFLOAT16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    if name == "FORMATS":
        return {__getattr__("BFLOAT16"): "bf16", FLOAT16: "fp16"}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def format_of(dtype):
    """"bf16", "fp16" or None: bfloat16 by name (an array of it means its owner has imported
    ml_dtypes already), so telling needs no import."""
    if dtype == FLOAT16:
        return "fp16"
    if dtype.kind == "V" and dtype.name == "bfloat16":
        return "bf16"
    return None


def half_format(dtype, what):
    """"bf16" or "fp16" for a half-precision dtype; TypeError otherwise."""
    fmt = format_of(np.dtype(dtype))
    if fmt is None:
        raise TypeError(f"{what}: expected bfloat16 or float16, got {np.dtype(dtype)}")
    return fmt


def as_bits(a, what):
    """The uint16 view of a 1-D array of 16-bit values (the half dtype or its bits)."""
    if a.dtype.itemsize != 2:
        raise TypeError(f"{what}: expected 16-bit elements (bfloat16, float16 or their uint16 "
                        f"bits), got {a.dtype}")
    return a if a.dtype == BITS else a.view(BITS)


def check_scale(scale):
    """float32 ``scale``; ValueError unless a positive power of two (exact scaling)."""
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0 and math.frexp(scale)[0] == 0.5):
        raise ValueError(f"scale must be a positive power of two (exact in float32), got "
                         f"{scale!r}")
    return np.float32(scale)


def grad_format(grad, grad_dtype=None):
    """The optimizers' gradient format: None for a full-precision gradient, "bf16" / "fp16"
    for a bfloat16 / float16 one (of that dtype, or its 16-bit bits with ``grad_dtype``)."""
    if grad_dtype is None:
        return format_of(grad.dtype)
    fmt = half_format(grad_dtype, "grad_dtype")
    if grad.dtype.itemsize != 2:
        raise TypeError(f"grad: expected the 16-bit bits of {np.dtype(grad_dtype)}, got "
                        f"{grad.dtype}")
    return fmt
