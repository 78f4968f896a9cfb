"""Test data for the bfloat16 and float16 kernels, shared by tests/unit/test_half_kernels.py
(CPU) and tests/_cuda_half_checks.py (the CUDA twins): bit patterns that cover every class of
value, and random arrays with the special values sprinkled in."""
import zlib

import numpy as np

from ringreduce.kernels.half import BFLOAT16


def assert_bits_equal(out, expected, where=""):
    """The two arrays' 16-bit patterns are equal; else the first difference."""
    out, expected = out.view(np.uint16), expected.view(np.uint16)
    bad = np.flatnonzero(out != expected)
    assert bad.size == 0, (f"{bad.size} of {out.size} differ{where}; first at {bad[0]}: "
                           f"{out[bad[0]]:#06x} != {expected[bad[0]]:#06x}")


def rng_for(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def special_bits(dtype):
    """Both signs of: zero, the smallest and largest subnormal, the smallest normal, one,
    the largest finite value, inf, quiet and signalling NaNs with payloads."""
    if dtype == BFLOAT16:
        patterns = [0x0000, 0x0001, 0x007F, 0x0080, 0x3F80, 0x7F7F, 0x7F80, 0x7FC0, 0x7FC1,
                    0x7F81, 0x7FFF, 0x4780]
    else:
        patterns = [0x0000, 0x0001, 0x03FF, 0x0400, 0x3C00, 0x7BFF, 0x7C00, 0x7E00, 0x7E01,
                    0x7C01, 0x7FFF, 0x5BFF]
    return np.array(patterns + [p | 0x8000 for p in patterns], np.uint16)


def other_operands(dtype, count, key):
    """``count`` patterns: the specials, one of every exponent (random sign and mantissa),
    and random patterns for the rest."""
    rng = rng_for("others", dtype.name, count, key)
    mantissa_bits = 7 if dtype == BFLOAT16 else 10
    exponents = np.arange(1 << (15 - mantissa_bits), dtype=np.uint32)
    every_exponent = ((exponents << mantissa_bits)
                      | rng.integers(0, 1 << mantissa_bits, exponents.size)
                      | (rng.integers(0, 2, exponents.size) << 15))
    picked = np.concatenate([special_bits(dtype), every_exponent.astype(np.uint16)])
    return np.concatenate([picked, rng.integers(0, 1 << 16, max(count - picked.size, 0),
                                                dtype=np.uint16)])


def random_operands(op, dtype, n, rng):
    """Random arrays at a few magnitudes with NaN, inf and zeros sprinkled in."""
    a = rng.standard_normal(n) * 10.0 ** rng.integers(-6, 5, n)
    b = rng.standard_normal(n) * 10.0 ** rng.integers(-6, 5, n)
    for arr in (a, b):
        where = rng.integers(0, n, max(n // 50, 1))
        arr[where] = rng.choice([np.nan, np.inf, -np.inf, 0.0, -0.0], where.size)
    if op == "prod":
        a, b = np.sign(a) * np.abs(a) ** 0.5, np.sign(b) * np.abs(b) ** 0.5
    return a.astype(dtype), b.astype(dtype)
