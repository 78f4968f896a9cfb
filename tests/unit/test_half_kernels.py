"""The bfloat16 and float16 CPU kernels (kernels/half.py) against numpy's and ml_dtypes' casts.

Every kernel must give, bit for bit, what ``kernels.reference`` computes with the libraries'
own casts around one float32 operation. The reductions and the avg scaling are checked on all
65536 bit patterns of one operand (NaNs, infinities, subnormals and both zeros included)
against 1408 of the other (every exponent, the special values, random patterns), in both
operand orders; the codecs on every float32
upper half with the low halves that decide a rounding; then on random arrays and on slices
at every offset, since a kernel is element-wise and must not care where a chunk starts.
"""
import numpy as np
import pytest

from _half_data import assert_bits_equal, other_operands, random_operands, rng_for
from ringreduce.kernels import cpu, half, reference as ref

DTYPES = (half.BFLOAT16, half.FLOAT16)
ALL_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
ROWS = 64   # other-operand values per block: 64 x 65536 elements, 8 MiB of uint16


def blocks(others):
    """(dst bits, src bits) pairs: every pattern against ROWS of ``others`` at a time."""
    for start in range(0, others.size, ROWS):
        rows = others[start:start + ROWS]
        yield np.tile(ALL_BITS, rows.size), np.repeat(rows, ALL_BITS.size)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", cpu.OPS)
def test_reduce_matches_the_float32_casts_on_every_bit_pattern(op, dtype):
    kernel = cpu.reduce_kernel(op, dtype)
    # Every pattern as dst against 1024 others, and as src against 384 (the order decides
    # which NaN wins and which zero min and max return).
    for others, every_pattern_first in ((other_operands(dtype, 1024, op), True),
                                        (other_operands(dtype, 384, op + "-src"), False)):
        for every, rows in blocks(others):
            a, b = (every, rows) if every_pattern_first else (rows, every)
            dst = a.copy()
            kernel(dst.view(dtype), b.view(dtype))
            assert_bits_equal(dst, ref.half(op, a.view(dtype), b.view(dtype)),
                              f" ({op} {dtype}, dst first: {every_pattern_first})")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("divisor", (2, 3, 7, 1000, 4097))
def test_avg_scaling_divides_in_float32_and_rounds_once(dtype, divisor):
    dst = ALL_BITS.copy().view(dtype)
    cpu.scale_kernel(dtype)(dst, divisor)
    assert_bits_equal(dst, ref.half_scale(ALL_BITS.view(dtype), divisor), f" (/{divisor})")


def float32_samples():
    """Every float32 upper half with the low halves at which bf16 and fp16 round: zero, one,
    ties at bit 15 and bit 12 with either parity of the kept bit, and their neighbours."""
    lows = np.array([0x0000, 0x0001, 0x0FFF, 0x1000, 0x1001, 0x2FFF, 0x3000, 0x3001, 0x7FFF,
                     0x8000, 0x8001, 0xFFFF, 0x5A5A], np.uint32)
    uppers = np.arange(1 << 16, dtype=np.uint32) << 16
    return (uppers[:, None] | lows[None, :]).ravel().view(np.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", (1.0, 2.0 ** -12, 2.0 ** 10, 2.0 ** 100))
def test_compress_rounds_like_the_cast(dtype, scale):
    x = float32_samples()
    out = np.empty(x.size, np.uint16)
    cpu.compress_kernel(dtype)(out, x, scale)
    assert_bits_equal(out, ref.compress(x, dtype, scale), f" (scale {scale})")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", (1.0, 2.0 ** -10, 2.0 ** 12))
def test_decompress_widens_every_pattern_exactly(dtype, scale):
    out = np.empty(ALL_BITS.size, np.float32)
    cpu.decompress_kernel(dtype)(out, ALL_BITS.view(dtype), scale)
    expected = ref.decompress(ALL_BITS.view(dtype), scale)
    np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fp16_scale_keeps_large_gradients_finite_and_round_trips(dtype):
    # Gradients of a few 1e6 overflow fp16 unscaled; scaled by 2**-7 they fit, and
    # decompressing by 2**7 gives back what one rounding of the scaled value allows.
    x = rng_for("big", dtype.name).standard_normal(4099).astype(np.float32) * 1e6
    wire = np.empty(x.size, dtype)
    cpu.compress_kernel(dtype)(wire, x, 2.0 ** -7)
    back = np.empty_like(x)
    cpu.decompress_kernel(dtype)(back, wire, 2.0 ** 7)
    assert np.isfinite(back).all()
    unit = 2.0 ** -8 if dtype == half.BFLOAT16 else 2.0 ** -11
    # Half an ulp relative, or half of fp16's subnormal step (2**-24, unscaled by 2**7).
    assert (np.abs(back - x) <= np.maximum(unit * np.abs(x), 2.0 ** -18)).all()
    unscaled = np.empty(x.size, dtype)
    cpu.compress_kernel(dtype)(unscaled, x)
    assert np.isinf(unscaled.astype(np.float32)).any() == (dtype == half.FLOAT16)


@pytest.mark.parametrize("n", (1, 7, 31, 100, 1001, 65537))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", cpu.OPS)
def test_random_arrays_match_the_reference(op, dtype, n):
    a, b = random_operands(op, dtype, n, rng_for(op, dtype.name, n))
    dst = a.copy()
    cpu.reduce_kernel(op, dtype)(dst, b)
    assert_bits_equal(dst, ref.half(op, a, b))
    # The float64 reference (one rounding of the exact result) agrees away from NaN: for two
    # 16-bit operands, float32 first and then the half type is still one correct rounding.
    finite = np.isfinite(a.astype(np.float32)) & np.isfinite(b.astype(np.float32))
    assert_bits_equal(dst[finite], ref.reduce(op, a[finite], b[finite]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", cpu.OPS)
def test_any_slice_gives_the_same_bits(op, dtype):
    a, b = random_operands(op, dtype, 1500, rng_for("slices", op, dtype.name))
    whole = a.copy()
    kernel = cpu.reduce_kernel(op, dtype)
    kernel(whole, b)
    for start in range(40):
        for stop in (start + 1, start + 17, start + 333, 1500 - (start % 7)):
            part = a[start:stop].copy()
            kernel(part, b[start:stop])
            assert_bits_equal(part, whole[start:stop], f" in [{start}:{stop}]")
    for step in (2, 3, 7):
        strided = a.copy()
        kernel(strided[1::step], b[1::step])
        assert_bits_equal(strided[1::step], whole[1::step], f" with step {step}")
        assert_bits_equal(strided[0::step], a[0::step])  # what the slice skips stays


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_uint16_bits_are_accepted_as_the_half_type(dtype):
    a, b = random_operands("sum", dtype, 97, rng_for("bits", dtype.name))
    typed, bits = a.copy(), a.copy().view(np.uint16)
    cpu.reduce_kernel("sum", dtype)(typed, b)
    cpu.reduce_kernel("sum", dtype)(bits, b.view(np.uint16))
    assert_bits_equal(bits, typed)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", cpu.OPS)
def test_numpy_ufunc_path_agrees_on_finite_values(op, dtype):
    a, b = random_operands(op, dtype, 1001, rng_for("numpy", op, dtype.name))
    keep = np.isfinite(a.astype(np.float32)) & np.isfinite(b.astype(np.float32))
    a, b = a[keep], b[keep]
    ours, theirs = a.copy(), a.copy()
    cpu.reduce_kernel(op, dtype)(ours, b)
    with np.errstate(all="ignore"):
        cpu.reduce_kernel(op, dtype, impl="numpy")(theirs, b)
    assert_bits_equal(ours, theirs)


def test_bad_arguments_are_refused_loudly():
    bf16 = half.BFLOAT16
    with pytest.raises(TypeError, match="expected 16-bit elements .* got float32"):
        cpu.reduce_kernel("sum", bf16)(np.zeros(4, np.float32), np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="compress_kernel: expected bfloat16 or float16, got "
                                        "float32"):
        cpu.compress_kernel(np.float32)
    compress = cpu.compress_kernel(np.float16)
    with pytest.raises(ValueError, match="positive power of two .* got 3.0"):
        compress(np.zeros(4, np.float16), np.zeros(4, np.float32), 3)
    with pytest.raises(TypeError, match="src: expected float32, got float64"):
        compress(np.zeros(4, np.float16), np.zeros(4))
    with pytest.raises(ValueError, match=r"dst: shape \(3,\) differs"):
        cpu.decompress_kernel(bf16)(np.zeros(3, np.float32), np.zeros(4, bf16))
    with pytest.raises(ValueError, match="unknown kernel implementation 'c'"):
        cpu.reduce_kernel("sum", bf16, impl="c")
