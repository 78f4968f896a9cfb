"""The half-precision dtypes and what the launchers (``cpu.py``, the CUDA modules) check
their arguments with: plain Python, no Numba, so a caller that only needs a dtype or a check
does not compile kernels. ``half.py`` re-exports every name."""
import math

import ml_dtypes
import numpy as np

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT16 = np.dtype(np.float16)
# The wire dtype's name in the element tables.
FORMATS = {BFLOAT16: "bf16", FLOAT16: "fp16"}
BITS = np.dtype(np.uint16)


def half_format(dtype, what):
    """"bf16" or "fp16" for a half-precision dtype; TypeError otherwise."""
    fmt = FORMATS.get(np.dtype(dtype))
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
        return FORMATS.get(grad.dtype)
    fmt = half_format(grad_dtype, "grad_dtype")
    if grad.dtype.itemsize != 2:
        raise TypeError(f"grad: expected the 16-bit bits of {np.dtype(grad_dtype)}, got "
                        f"{grad.dtype}")
    return fmt
