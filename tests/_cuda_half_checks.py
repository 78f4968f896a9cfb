"""The bfloat16 and float16 CUDA kernels against their CPU twins, bit for bit, in a child process.

Started like ``_cuda_sim_checks.py`` (whose small grid and helpers it shares) by
``jobs/test_cuda_kernels.py``: under the simulator, or on a real GPU. The twins compile the
same element functions (kernels/half.py), so every result must have the CPU kernel's bits,
which tests/unit/test_half_kernels.py checks against numpy's and ml_dtypes' casts on every bit
pattern; here the arrays stay small (the simulator runs each thread in Python) but hold every
special value, every exponent, and lengths that make the grid-stride loops wrap and unroll.
"""
import numpy as np
import pytest

from _cuda_sim_checks import (ADAM_VARIANTS, SGD_VARIANTS, assert_close, ck, cpu, cuda, f64,
                              optim, optim_data, rng_for)
from _cuda_sim_checks import small_grid  # noqa: F401 (the autouse fixture: a small grid)
from _half_data import other_operands, random_operands
from ringreduce.kernels.half import BFLOAT16, FLOAT16

HALVES = (BFLOAT16, FLOAT16)
# The simulator runs the element functions on numpy scalars, which warn where float32 overflows
# or makes a NaN on purpose (inf results, NaN operands); the bits are what is checked.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
LENGTHS = (0, 1, 97, 613)


def assert_bits_equal(out, expected):
    out, expected = np.asarray(out).view(np.uint16), np.asarray(expected).view(np.uint16)
    bad = np.flatnonzero(out != expected)
    assert bad.size == 0, (f"{bad.size} of {out.size} differ; first at {bad[0]}: "
                           f"{out[bad[0]]:#06x} != {expected[bad[0]]:#06x}")


def pattern_pair(dtype, n, key):
    """(a, b) bit patterns: every special value and exponent against a shuffled copy."""
    a = other_operands(dtype, n, key)[:n]
    return a, rng_for("shuffle", key).permutation(a)


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("op", ck.OPS)
def test_reduce_has_the_cpu_kernels_bits(op, dtype, n):
    a, b = pattern_pair(dtype, n, (op, dtype.name, n))
    dst, src = cuda.to_device(a.view(dtype)), cuda.to_device(b.view(dtype))
    ck.reduce_kernel(op, dtype)(dst, src)
    twin = a.copy()
    cpu.reduce_kernel(op, dtype)(twin, b)
    assert_bits_equal(dst.copy_to_host(), twin)
    assert_bits_equal(src.copy_to_host(), b)
    assert_bits_equal(twin, f64.half(op, a.view(dtype), b.view(dtype)))


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("bits", (np.uint16, np.int16), ids=("uint16", "int16"))
def test_reduce_takes_the_bits_as_16_bit_integers(dtype, bits):
    a, b = random_operands("sum", dtype, 211, rng_for("bits", dtype.name))
    dst = cuda.to_device(a.view(bits))
    ck.reduce_kernel("sum", dtype)(dst, cuda.to_device(b.view(bits)))
    assert_bits_equal(dst.copy_to_host(), f64.half("sum", a, b))


@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("divisor", (3, 4097))
def test_scale_has_the_cpu_kernels_bits(dtype, divisor):
    a = other_operands(dtype, 613, ("scale", divisor))
    dst = cuda.to_device(a)
    ck.scale_kernel(dtype)(dst, divisor)
    twin = a.copy()
    cpu.scale_kernel(dtype)(twin, divisor)
    assert_bits_equal(dst.copy_to_host(), twin)


def float32_inputs(dtype, n, key):
    """float32 values to compress: gradients at several magnitudes, and every half pattern's
    value with low bits set (ties, NaN payloads, subnormals, overflow)."""
    rng = rng_for("f32", dtype.name, n, key)
    wide = other_operands(dtype, n, key)[:n].astype(np.uint32) << 16
    wide |= rng.choice(np.array([0, 0x1000, 0x3000, 0x8000, 0x7FFF, 0xFFFF], np.uint32), n)
    wide = wide.view(np.float32)
    k = wide[::3].size
    wide[::3] = (rng.standard_normal(k) * 10.0 ** rng.integers(-8, 6, k)).astype(np.float32)
    return wide


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("scale", (1.0, 2.0 ** -9))
def test_compress_and_decompress_have_the_cpu_kernels_bits(dtype, n, scale):
    x = float32_inputs(dtype, n, scale)
    wire = cuda.device_array(n, dtype)
    ck.compress_kernel(dtype)(wire, cuda.to_device(x), scale)
    twin = np.empty(n, np.uint16)
    cpu.compress_kernel(dtype)(twin, x, scale)
    assert_bits_equal(wire.copy_to_host(), twin)

    back = cuda.device_array(n, np.float32)
    ck.decompress_kernel(dtype)(back, wire, 1 / scale)
    wide = np.empty(n, np.float32)
    cpu.decompress_kernel(dtype)(wide, twin, 1 / scale)
    np.testing.assert_array_equal(back.copy_to_host().view(np.uint32), wide.view(np.uint32))


def test_half_kernels_refuse_bad_arguments():
    bf16 = ck.reduce_kernel("sum", BFLOAT16)
    f32 = cuda.to_device(np.zeros(4, np.float32))
    with pytest.raises(TypeError, match=r"expected dtype bfloat16 \(or its bits as uint16 or "
                                        "int16\\), got float32"):
        bf16(f32, f32)
    with pytest.raises(ValueError, match="expected 4 elements, got 5"):
        bf16(cuda.to_device(np.zeros(4, BFLOAT16)), cuda.to_device(np.zeros(5, BFLOAT16)))
    with pytest.raises(TypeError, match="compress_kernel: expected bfloat16 or float16"):
        ck.compress_kernel(np.float32)
    compress = ck.compress_kernel(FLOAT16)
    wire = cuda.to_device(np.zeros(4, FLOAT16))
    with pytest.raises(ValueError, match="positive power of two"):
        compress(wire, f32, 0.3)
    with pytest.raises(TypeError, match="src: expected dtype float32, got float64"):
        compress(wire, cuda.to_device(np.zeros(4)))


# ---------------------------------------------------------------------------------------
# Optimizers with half-precision gradients and float32 master weights: against the CPU twins
# and the float64 reference, within float32 tolerance (the CUDA compiler may fuse an FMA).

@pytest.mark.parametrize("n", (0, 7, 613))
@pytest.mark.parametrize("half", HALVES, ids=str)
@pytest.mark.parametrize("variant", ("momentum", "grad_scale"))
def test_sgd_with_half_gradients_matches_the_cpu_twin(variant, half, n):
    hp = SGD_VARIANTS[variant]
    param, grads = optim_data(n, np.float32, ("half-sgd", variant, half.name, n))
    grads = [g.astype(half) for g in grads]
    d_param, d_buf = cuda.to_device(param), cuda.to_device(np.zeros(n, np.float32))
    h_param, h_buf = param.copy(), np.zeros(n, np.float32)
    for k, grad in enumerate(grads):
        # As the half dtype, and as its int16 bits naming the dtype (as torch hands bf16 over).
        d_grad = cuda.to_device(grad) if k % 2 else cuda.to_device(grad.view(np.int16))
        ck.sgd_update(d_param, d_grad, d_buf, **hp, grad_dtype=None if k % 2 else half)
        optim.sgd_update(h_param, grad, h_buf, *hp.values())
    out = d_param.copy_to_host()
    assert_close(out, h_param, np.float32)
    assert_close(out, f64.sgd(param, grads, **hp)[0], np.float32)
    assert_close(d_buf.copy_to_host(), h_buf, np.float32)


@pytest.mark.parametrize("n", (0, 7, 613))
@pytest.mark.parametrize("half", HALVES, ids=str)
def test_adam_with_half_gradients_matches_the_cpu_twin(half, n):
    hp = ADAM_VARIANTS["weight_decay"]
    param, grads = optim_data(n, np.float32, ("half-adam", half.name, n))
    grads = [g.astype(half) for g in grads]
    device = [cuda.to_device(x) for x in (param, np.zeros(n, np.float32),
                                          np.zeros(n, np.float32))]
    host = [param.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)]
    scalars = [hp[k] for k in ("lr", "beta1", "beta2", "eps", "weight_decay")]
    for step, grad in enumerate(grads, start=1):
        ck.adam_update(device[0], cuda.to_device(grad), *device[1:], *scalars, step,
                       hp["grad_scale"])
        optim.adam_update(host[0], grad, *host[1:], *scalars, step, hp["grad_scale"])
    for d, h, ref in zip(device, host, f64.adam(param, grads, **hp)):
        assert_close(d.copy_to_host(), h, np.float32)
        assert_close(d.copy_to_host(), ref, np.float32)


def test_half_gradients_refuse_a_float32_array_named_half():
    p = cuda.to_device(np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="grad: expected the 16-bit bits of float16"):
        ck.sgd_update(p, p, p, 0.1, 0.0, 0.0, False, 1.0, grad_dtype=FLOAT16)
    with pytest.raises(ValueError, match="grad: expected 5 elements, got 4"):
        ck.adam_update(p, cuda.to_device(np.zeros(4, BFLOAT16)), p, p, 1e-3, 0.9, 0.999, 1e-8,
                       0.0, 1, 1.0)

