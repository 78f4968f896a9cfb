"""The bfloat16 and float16 CPU kernels, Numba's (kernels/half.py) and their numpy twins
(kernels/half_np.py), against numpy's and ml_dtypes' casts.

Every kernel must give, bit for bit, what ``kernels.reference`` computes with the libraries'
own casts around one float32 operation. The reductions and the avg scaling are checked on all
65536 bit patterns of one operand (NaNs, infinities, subnormals and both zeros included)
against 1408 of the other (every exponent, the special values, random patterns), in both
operand orders; the codecs on every float32
upper half with the low halves that decide a rounding; then on random arrays and on slices
at every offset, since a kernel is element-wise and must not care where a chunk starts.
"""
import warnings

import numpy as np
import pytest

from _half_data import assert_bits_equal, other_operands, random_operands, rng_for
from ringreduce.kernels import cpu, half, reference as ref

DTYPES = (half.BFLOAT16, half.FLOAT16)
ALL_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
ROWS = 64   # other-operand values per block: 64 x 65536 elements, 8 MiB of uint16
# Numba's kernels (half.py) and their numpy twins (half_np.py): both must give these bits.
IMPLS = pytest.mark.parametrize("impl", ("numba", "numpy"))


def blocks(others):
    """(dst bits, src bits) pairs: every pattern against ROWS of ``others`` at a time."""
    for start in range(0, others.size, ROWS):
        rows = others[start:start + ROWS]
        yield np.tile(ALL_BITS, rows.size), np.repeat(rows, ALL_BITS.size)


@IMPLS
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", cpu.OPS)
def test_reduce_matches_the_float32_casts_on_every_bit_pattern(op, dtype, impl):
    kernel = cpu.reduce_kernel(op, dtype, impl)
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


@IMPLS
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("divisor", (2, 3, 7, 1000, 4097))
def test_avg_scaling_divides_in_float32_and_rounds_once(dtype, divisor, impl):
    dst = ALL_BITS.copy().view(dtype)
    cpu.scale_kernel(dtype, impl)(dst, divisor)
    assert_bits_equal(dst, ref.half_scale(ALL_BITS.view(dtype), divisor), f" (/{divisor})")


def float32_samples():
    """Every float32 upper half with the low halves at which bf16 and fp16 round: zero, one,
    ties at bit 15 and bit 12 with either parity of the kept bit, and their neighbours."""
    lows = np.array([0x0000, 0x0001, 0x0FFF, 0x1000, 0x1001, 0x2FFF, 0x3000, 0x3001, 0x7FFF,
                     0x8000, 0x8001, 0xFFFF, 0x5A5A], np.uint32)
    uppers = np.arange(1 << 16, dtype=np.uint32) << 16
    return (uppers[:, None] | lows[None, :]).ravel().view(np.float32)


@IMPLS
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", (1.0, 2.0 ** -12, 2.0 ** 10, 2.0 ** 100))
def test_compress_rounds_like_the_cast(dtype, scale, impl):
    x = float32_samples()
    out = np.empty(x.size, np.uint16)
    cpu.compress_kernel(dtype, impl)(out, x, scale)
    assert_bits_equal(out, ref.compress(x, dtype, scale), f" (scale {scale})")


@IMPLS
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", (1.0, 2.0 ** -10, 2.0 ** 12))
def test_decompress_widens_every_pattern_exactly(dtype, scale, impl):
    out = np.empty(ALL_BITS.size, np.float32)
    cpu.decompress_kernel(dtype, impl)(out, ALL_BITS.view(dtype), scale)
    expected = ref.decompress(ALL_BITS.view(dtype), scale)
    np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))


@IMPLS
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fp16_scale_keeps_large_gradients_finite_and_round_trips(dtype, impl):
    # Gradients of a few 1e6 overflow fp16 unscaled; scaled by 2**-7 they fit, and
    # decompressing by 2**7 gives back what one rounding of the scaled value allows.
    x = rng_for("big", dtype.name).standard_normal(4099).astype(np.float32) * 1e6
    wire = np.empty(x.size, dtype)
    cpu.compress_kernel(dtype, impl)(wire, x, 2.0 ** -7)
    back = np.empty_like(x)
    cpu.decompress_kernel(dtype, impl)(back, wire, 2.0 ** 7)
    assert np.isfinite(back).all()
    unit = 2.0 ** -8 if dtype == half.BFLOAT16 else 2.0 ** -11
    # Half an ulp relative, or half of fp16's subnormal step (2**-24, unscaled by 2**7).
    assert (np.abs(back - x) <= np.maximum(unit * np.abs(x), 2.0 ** -18)).all()
    unscaled = np.empty(x.size, dtype)
    cpu.compress_kernel(dtype, impl)(unscaled, x)
    assert np.isinf(unscaled.astype(np.float32)).any() == (dtype == half.FLOAT16)


@IMPLS
@pytest.mark.parametrize("n", (1, 7, 31, 100, 1001, 65537))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", cpu.OPS)
def test_random_arrays_match_the_reference(op, dtype, n, impl):
    a, b = random_operands(op, dtype, n, rng_for(op, dtype.name, n))
    dst = a.copy()
    cpu.reduce_kernel(op, dtype, impl)(dst, b)
    assert_bits_equal(dst, ref.half(op, a, b))
    # The float64 reference (one rounding of the exact result) agrees away from NaN: for two
    # 16-bit operands, float32 first and then the half type is still one correct rounding.
    finite = np.isfinite(a.astype(np.float32)) & np.isfinite(b.astype(np.float32))
    assert_bits_equal(dst[finite], ref.reduce(op, a[finite], b[finite]))


@IMPLS
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", cpu.OPS)
def test_any_slice_gives_the_same_bits(op, dtype, impl):
    a, b = random_operands(op, dtype, 1500, rng_for("slices", op, dtype.name))
    whole = a.copy()
    kernel = cpu.reduce_kernel(op, dtype, impl)
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


@IMPLS
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_uint16_bits_are_accepted_as_the_half_type(dtype, impl):
    a, b = random_operands("sum", dtype, 97, rng_for("bits", dtype.name))
    typed, bits = a.copy(), a.copy().view(np.uint16)
    cpu.reduce_kernel("sum", dtype, impl)(typed, b)
    cpu.reduce_kernel("sum", dtype, impl)(bits, b.view(np.uint16))
    assert_bits_equal(bits, typed)


@pytest.mark.parametrize("n", (1, 3, 1001))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", cpu.OPS)
def test_the_twins_and_numba_give_the_same_bits(op, dtype, n):
    """Where neither is forced, either may serve a call (kernels/cpu.py's HALF): every value,
    NaN and inf included, must come out the same from both."""
    a, b = random_operands(op, dtype, n, rng_for("twins", op, dtype.name, n))
    numba_out, twin_out = a.copy(), a.copy()
    cpu.reduce_kernel(op, dtype, "numba")(numba_out, b)
    cpu.reduce_kernel(op, dtype, "numpy")(twin_out, b)
    assert_bits_equal(twin_out, numba_out)
    empty = a[:0].copy()
    cpu.reduce_kernel(op, dtype, "numpy")(empty, b[:0])
    assert empty.size == 0


class _Clock:
    """perf_counter advancing ``step`` seconds a reading."""

    def __init__(self, step):
        self.now, self.step = 0.0, step

    def perf_counter(self):
        self.now += self.step
        return self.now


def test_the_twins_serve_until_they_have_spent_the_load_then_numba(monkeypatch):
    """The default kernels (kernels/cpu.py's HALF): numpy's twins, timed, until their time
    reaches BUY_SECONDS; from then on Numba's, untimed. Forced twins are not counted; Numba
    loaded by a forced call is used from then on (its cost is spent)."""
    monkeypatch.setattr(cpu, "time", _Clock(0.25))  # every timed call "takes" 0.25 s
    cpu.HALF.reset()
    try:
        a, b = random_operands("sum", half.BFLOAT16, 999, rng_for("rent"))
        expected = ref.half("sum", a, b)
        kernel, scale = cpu.reduce_kernel("sum", a.dtype), cpu.scale_kernel(a.dtype)
        cpu.reduce_kernel("sum", a.dtype, "numpy")(a.copy(), b)  # forced: not rent
        assert (cpu.HALF.rented, cpu.HALF.numba) == (0.0, None)
        served = []
        for _ in range(6):
            dst = a.copy()
            kernel(dst, b)
            assert_bits_equal(dst, expected)
            served.append((cpu.HALF.rented, cpu.HALF.numba is not None))
        scale(a.copy(), 3)
        assert cpu.BUY_SECONDS == 1.0
        assert served == [(0.25, False), (0.5, False), (0.75, False), (1.0, False),
                          (1.0, True), (1.0, True)]
        assert cpu.HALF.numba is half
        cpu.HALF.reset()
        cpu.reduce_kernel("sum", a.dtype, "numba")(a.copy(), b)
        kernel(a.copy(), b)
        assert (cpu.HALF.rented, cpu.HALF.numba) == (0.0, half)
    finally:
        cpu.HALF.reset()


def test_numba_failing_to_load_leaves_the_twins_serving(monkeypatch):
    """The switch to Numba happens inside a collective: a load that fails must not raise
    there (the other ranks would wait), but warn once and keep the twins."""
    def broken():
        raise ImportError("no numba here")

    monkeypatch.setattr(cpu, "_half", broken)
    monkeypatch.setattr(cpu, "BUY_SECONDS", 0.0)
    cpu.HALF.reset()
    try:
        a, b = random_operands("sum", np.dtype(np.float16), 301, rng_for("broken"))
        kernel = cpu.reduce_kernel("sum", a.dtype)
        with pytest.warns(RuntimeWarning, match="failed to load .*no numba here.*numpy's "
                                                "serve on"):
            dst = a.copy()
            kernel(dst, b)
        assert_bits_equal(dst, ref.half("sum", a, b))
        dst = a.copy()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a second warning would raise here
            kernel(dst, b)
        assert_bits_equal(dst, ref.half("sum", a, b))
        assert isinstance(cpu.HALF.failed, ImportError) and cpu.HALF.numba is None
        with pytest.raises(ImportError, match="no numba here"):
            cpu.reduce_kernel("sum", a.dtype, "numba")(a.copy(), b)  # forced: raises
    finally:
        cpu.HALF.reset()


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
