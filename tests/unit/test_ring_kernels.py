"""The compressed ring's kernels (kernels/half.py ``RING``, and half_np.py's twins) against
numpy's and ml_dtypes' casts, bit for bit: ``send`` is the compress kernel with an optional residual, ``fold`` sums a
16-bit partial and a float32 input in float32 and rounds once. ``fold`` is checked on all 65536
patterns of the 16-bit operand against float32 values of every class (both zeros, subnormals,
infinities, NaNs with payloads, values near fp16's overflow), at several power-of-two scales,
with and without error feedback."""
import numpy as np
import pytest

from _half_data import assert_bits_equal, rng_for
from ringreduce.kernels import half, half_np, reference as ref

DTYPES = (half.BFLOAT16, half.FLOAT16)
ALL_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
QUIET32 = np.uint32(0x00400000)
# Numba's kernels and their numpy twins, which serve until Numba is loaded (kernels/cpu.py).
MODULES = pytest.mark.parametrize("kernels", (half, half_np), ids=("numba", "numpy"))


def float32_values(key):
    """Special float32 values and random ones of every magnitude, both signs."""
    special = np.array([0.0, 2.0 ** -149, 2.0 ** -126, 2.0 ** -24, 1.0, 65504.0, 65519.0,
                        65520.0, 3.0e38, np.inf], np.float32)
    nans = np.array([0x7FC00000, 0x7FA00001, 0x7F800001, 0x7FFFFFFF], np.uint32).view(np.float32)
    rng = rng_for("ring values", key)
    wide = (rng.standard_normal(24) * 10.0 ** rng.integers(-40, 38, 24)).astype(np.float32)
    pos = np.concatenate([special, nans, np.abs(wide)])
    return np.concatenate([pos, -pos])


def scaled(x, scale):
    with np.errstate(all="ignore"):
        return np.where(np.isnan(x), x, x * np.float32(scale)).astype(np.float32)


def fold_reference(h, x, dtype, scale):
    """``(bits, t)``: t = widen(h) + x * scale in float32, rounded by the cast; where h and t
    are both NaN, h's NaN quietened (x86 adds with the first operand's NaN)."""
    wide = h.view(dtype).astype(np.float32)
    with np.errstate(all="ignore"):
        t = wide + scaled(x, scale)
    quiet_h = (wide.view(np.uint32) | QUIET32).view(np.float32)
    pick = np.where(np.isnan(t) & np.isnan(wide), quiet_h, t)
    with np.errstate(all="ignore"):
        return pick.astype(dtype).view(np.uint16), t


def assert_same_residual(got, expected):
    """Equal bits, but any NaN for a NaN (its payload is the hardware's)."""
    nan = np.isnan(expected)
    np.testing.assert_array_equal(got.view(np.uint32)[~nan], expected.view(np.uint32)[~nan])
    assert np.isnan(got[nan]).all()


@MODULES
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", (1.0, 2.0 ** -12, 2.0 ** 10))
def test_fold_sums_in_float32_and_rounds_once_on_every_pattern(dtype, scale, kernels):
    fmt = half.FORMATS[dtype]
    kernel = kernels.RING["fold", fmt]
    xs = float32_values(fmt)
    h = np.tile(ALL_BITS, xs.size)
    x = np.repeat(xs, ALL_BITS.size)
    expected, t = fold_reference(h, x, dtype, scale)
    dst = h.copy()
    kernel(dst, x, np.float32(scale), np.float32(1 / scale), False)
    assert_bits_equal(dst, expected, f" (fold {dtype}, scale {scale})")
    # With feedback the input is replaced by what the rounding removed, unscaled.
    dst, res = h.copy(), x.copy()
    kernel(dst, res, np.float32(scale), np.float32(1 / scale), True)
    assert_bits_equal(dst, expected, " with feedback")
    with np.errstate(all="ignore"):
        removed = (t - expected.view(dtype).astype(np.float32)) * np.float32(1 / scale)
    assert_same_residual(res, removed)


@MODULES
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", (1.0, 2.0 ** -7, 2.0 ** 12))
def test_send_compresses_like_the_cast_and_keeps_the_residual(dtype, scale, kernels):
    fmt = half.FORMATS[dtype]
    kernel = kernels.RING["send", fmt]
    x = np.concatenate([float32_values("send"),
                        rng_for("send", fmt).standard_normal(4099).astype(np.float32) * 1e3])
    expected = ref.compress(x, dtype, scale).view(np.uint16)
    dst = np.empty(x.size, np.uint16)
    src = x.copy()
    kernel(dst, src, np.float32(scale), np.float32(1 / scale), False)
    assert_bits_equal(dst, expected)
    np.testing.assert_array_equal(src.view(np.uint32), x.view(np.uint32))  # read only
    kernel(dst, src, np.float32(scale), np.float32(1 / scale), True)
    assert_bits_equal(dst, expected, " with feedback")
    with np.errstate(all="ignore"):
        removed = x - ref.decompress(expected.view(dtype), 1 / scale)
    assert_same_residual(src, removed)


@MODULES
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fold_of_a_slice_gives_the_same_bits(dtype, kernels):
    fmt = half.FORMATS[dtype]
    kernel = kernels.RING["fold", fmt]
    rng = rng_for("slices", fmt)
    x = (rng.standard_normal(1500) * 100).astype(np.float32)
    h = (rng.standard_normal(1500) * 100).astype(dtype).view(np.uint16)
    whole = h.copy()
    kernel(whole, x, np.float32(1), np.float32(1), False)
    for start in range(0, 40, 3):
        for stop in (start + 1, start + 17, start + 333, 1500 - start % 7):
            part = h[start:stop].copy()
            kernel(part, x[start:stop], np.float32(1), np.float32(1), False)
            assert_bits_equal(part, whole[start:stop], f" in [{start}:{stop}]")
