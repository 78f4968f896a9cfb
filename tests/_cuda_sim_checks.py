"""Checks of kernels/cuda.py against numpy references, run in a child process.

Numba reads NUMBA_ENABLE_CUDASIM when it is first imported, so test_cuda_kernels.py starts
``python -m pytest tests/_cuda_sim_checks.py`` with the variable set (the simulator) or, on a
machine with a GPU, unset (the real device). The leading underscore keeps plain ``pytest``
from collecting this file in the parent process, where numba may already be loaded without
the simulator.

The grid is forced to 2 blocks of 32 threads, so every length above 64 makes the grid-stride
loops wrap, lengths above 4 * 64 run the unrolled trips, and the simulator (one Python thread
per CUDA thread) stays fast.
"""
import zlib

import numpy as np
import pytest

from ringreduce.kernels import cpu, cuda as ck, optim, reference as f64
from ringreduce.kernels.half import BFLOAT16

try:
    from numba import cuda
except ImportError:  # test_cuda_kernels.py imports this module without numba-cuda, to load ck
    cuda = None

FORCED_BLOCKS, FORCED_THREADS = 2, 32
# 0 and 1: edge cases; 7, 31: below one grid; 97, 211: the loop wraps; 389, 613 (primes):
# several unrolled trips plus a remainder.
LENGTHS = (0, 1, 7, 31, 97, 211, 389, 613)
FLOATS = [d for d in ck.DTYPES if d.kind == "f" or d == BFLOAT16]
INTS = [d for d in ck.DTYPES if d.kind in "iu"]


@pytest.fixture(autouse=True)
def small_grid():
    previous = ck.set_launch_config(FORCED_BLOCKS, FORCED_THREADS)
    yield
    ck.set_launch_config(**previous)


def rng_for(*key):
    """A generator seeded by the test's parameters: different data per case, reproducible."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def operands(op, dtype, n, rng):
    """Random (a, b) of ``dtype`` for which ``a op b`` cannot overflow (numpy warns there)."""
    if dtype in FLOATS:
        a = rng.standard_normal(n) * 4
        b = rng.standard_normal(n) * 4
        if n >= 7 and op in ("min", "max"):
            a[2] = np.nan   # a NaN in dst must stay
            b[5] = np.nan   # a NaN in src must win
        return a.astype(dtype), b.astype(dtype)
    info = np.iinfo(dtype)
    if op == "prod":
        bound = int(np.sqrt(min(info.max, 2**62))) // 2
    elif op == "sum":
        bound = info.max // 4
    else:
        bound = info.max
    low = 0 if info.min == 0 else -bound
    return (rng.integers(low, bound, n, dtype=dtype, endpoint=True),
            rng.integers(low, bound, n, dtype=dtype, endpoint=True))


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("dtype", ck.DTYPES, ids=str)
@pytest.mark.parametrize("op", ck.OPS)
def test_reduce_matches_reference_and_cpu(op, dtype, n):
    a, b = operands(op, dtype, n, rng_for(op, dtype, n))
    dst, src = cuda.to_device(a), cuda.to_device(b)
    ck.reduce_kernel(op, dtype)(dst, src)
    out = dst.copy_to_host()
    np.testing.assert_array_equal(out, f64.reduce(op, a, b))
    np.testing.assert_array_equal(src.copy_to_host(), b)
    twin = a.copy()
    cpu.reduce_kernel(op, dtype)(twin, b)
    np.testing.assert_array_equal(out, twin)


@pytest.mark.parametrize("n", (0, 7, 613))
@pytest.mark.parametrize("dtype", ck.DTYPES, ids=str)
@pytest.mark.parametrize("divisor", (3, 7))
def test_scale_matches_reference_and_cpu(dtype, n, divisor):
    rng = rng_for("scale", dtype, n, divisor)
    if dtype in FLOATS:
        a = (rng.standard_normal(n) * 100).astype(dtype)
        expected = (a.astype(np.float64) / divisor).astype(dtype)
    else:
        info = np.iinfo(dtype)
        # Up to 2**52, where float64 holds every integer: the quotient truncates exactly.
        bound = min(info.max, 2**52)
        a = rng.integers(max(info.min, -bound), bound, n, dtype=dtype, endpoint=True)
        expected = np.trunc(a.astype(np.float64) / divisor).astype(dtype)
    dst = cuda.to_device(a)
    ck.scale_kernel(dtype)(dst, divisor)
    out = dst.copy_to_host()
    np.testing.assert_array_equal(out, expected)
    twin = a.copy()
    cpu.scale_kernel(dtype)(twin, divisor)
    np.testing.assert_array_equal(out, twin)


def test_reduce_on_a_stream():
    a, b = operands("sum", np.dtype(np.float32), 211, rng_for("stream"))
    stream = cuda.stream()
    dst, src = cuda.to_device(a, stream=stream), cuda.to_device(b, stream=stream)
    ck.reduce_kernel("sum", np.float32)(dst, src, stream=stream)
    ck.scale_kernel(np.float32)(dst, 3, stream=stream)
    out = dst.copy_to_host(stream=stream)
    stream.synchronize()
    expected = ((a.astype(np.float64) + b).astype(np.float32).astype(np.float64) / 3)
    np.testing.assert_array_equal(out, expected.astype(np.float32))


def test_reduce_rejects_bad_arguments():
    f32 = ck.reduce_kernel("sum", np.float32)
    with pytest.raises(ValueError, match="unknown reduction op 'mean'"):
        ck.reduce_kernel("mean", np.float32)
    with pytest.raises(TypeError, match="unsupported dtype complex64"):
        ck.reduce_kernel("sum", np.complex64)
    with pytest.raises(TypeError, match="expected dtype float32, got float64"):
        f32(cuda.to_device(np.zeros(3)), cuda.to_device(np.zeros(3)))
    with pytest.raises(ValueError, match="expected 3 elements, got 4"):
        f32(cuda.to_device(np.zeros(3, np.float32)), cuda.to_device(np.zeros(4, np.float32)))
    with pytest.raises(ValueError, match="1-D contiguous"):
        f32(cuda.to_device(np.zeros((2, 2), np.float32)),
            cuda.to_device(np.zeros((2, 2), np.float32)))
    with pytest.raises(TypeError, match="expected a CUDA device array, got ndarray"):
        f32(np.zeros(3, np.float32), np.zeros(3, np.float32))


def test_launch_config_caps_the_grid_at_what_the_array_needs():
    assert ck.launch_config(1) == (1, FORCED_THREADS)
    assert ck.launch_config(FORCED_THREADS + 1) == (2, FORCED_THREADS)
    assert ck.launch_config(10**9) == (FORCED_BLOCKS, FORCED_THREADS)
    previous = ck.set_launch_config()
    try:
        blocks, threads = ck.launch_config(10**9)
        assert threads == ck.THREADS_PER_BLOCK and blocks >= 1
    finally:
        ck.set_launch_config(**previous)


# ---------------------------------------------------------------------------------------
# Optimizers: the CUDA kernels against the float64 reference and against the CPU twins.

SGD_VARIANTS = {
    "plain": dict(lr=0.1, momentum=0.0, weight_decay=0.0, nesterov=False, grad_scale=1.0),
    "momentum": dict(lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=False, grad_scale=1.0),
    "nesterov": dict(lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=True, grad_scale=1.0),
    "weight_decay": dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=False,
                         grad_scale=1.0),
    "grad_scale": dict(lr=0.05, momentum=0.8, weight_decay=0.01, nesterov=True,
                       grad_scale=0.25),
    "plain_scaled": dict(lr=0.1, momentum=0.0, weight_decay=0.001, nesterov=False,
                         grad_scale=1 / 3),
}
ADAM_VARIANTS = {
    "plain": dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, grad_scale=1.0),
    "weight_decay": dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-6, weight_decay=0.01,
                         grad_scale=1.0),
    "grad_scale": dict(lr=3e-3, beta1=0.8, beta2=0.999, eps=1e-8, weight_decay=0.001,
                       grad_scale=0.25),
}
# Relative error bound, in the norm, after STEPS steps: a few roundings per element per step.
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-13}
STEPS = 4


def assert_close(out, ref, dtype):
    ref = np.asarray(ref, np.float64)
    err = np.linalg.norm(out.astype(np.float64) - ref) / max(np.linalg.norm(ref), 1e-30)
    assert err < TOLERANCE[np.dtype(dtype)], f"relative error {err:.3g}"


def optim_data(n, dtype, key):
    rng = rng_for(*key)
    param = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(STEPS)]
    return param, grads


@pytest.mark.parametrize("n", (0, 1, 7, 613))
@pytest.mark.parametrize("dtype", ck.OPTIM_DTYPES, ids=str)
@pytest.mark.parametrize("variant", SGD_VARIANTS)
def test_sgd_matches_reference_and_cpu_twin(variant, dtype, n):
    hp = SGD_VARIANTS[variant]
    param, grads = optim_data(n, dtype, ("sgd", variant, dtype, n))
    d_param = cuda.to_device(param)
    d_buf = cuda.to_device(np.zeros(n, dtype))
    h_param, h_buf = param.copy(), np.zeros(n, dtype)
    for grad in grads:
        ck.sgd_update(d_param, cuda.to_device(grad), d_buf, **hp)
        optim.sgd_update(h_param, grad, h_buf, *hp.values())
    ref_param, ref_buf = f64.sgd(param, grads, **hp)
    out = d_param.copy_to_host()
    assert_close(out, ref_param, dtype)
    assert_close(out, h_param, dtype)
    if hp["momentum"]:
        assert_close(d_buf.copy_to_host(), ref_buf, dtype)
        assert_close(d_buf.copy_to_host(), h_buf, dtype)


def test_sgd_without_momentum_takes_any_buffer_and_leaves_it_alone():
    param, grads = optim_data(97, np.float32, ("sgd-nobuf",))
    d_param = cuda.to_device(param)
    ck.sgd_update(d_param, cuda.to_device(grads[0]), cuda.device_array(0, np.float32),
                  0.1, 0.0, 0.0, False, 1.0)
    sentinel = cuda.to_device(np.full(97, 7.0, np.float32))
    ck.sgd_update(d_param, cuda.to_device(grads[1]), sentinel, 0.1, 0.0, 0.0, False, 1.0)
    assert_close(d_param.copy_to_host(),
                 f64.sgd(param, grads[:2], 0.1, 0.0, 0.0, False, 1.0)[0], np.float32)
    assert (sentinel.copy_to_host() == 7.0).all()


def test_sgd_rejects_bad_arguments():
    p = cuda.to_device(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="nesterov needs momentum"):
        ck.sgd_update(p, p, p, 0.1, 0.0, 0.0, True, 1.0)
    with pytest.raises(ValueError, match="momentum_buf: expected 5 elements, got 4"):
        ck.sgd_update(p, p, cuda.to_device(np.zeros(4, np.float32)), 0.1, 0.9, 0.0, False, 1.0)
    with pytest.raises(TypeError, match="unsupported dtype int32"):
        q = cuda.to_device(np.zeros(5, np.int32))
        ck.sgd_update(q, q, q, 0.1, 0.9, 0.0, False, 1.0)


@pytest.mark.parametrize("n", (0, 1, 7, 613))
@pytest.mark.parametrize("dtype", ck.OPTIM_DTYPES, ids=str)
@pytest.mark.parametrize("variant", ADAM_VARIANTS)
def test_adam_matches_reference_and_cpu_twin(variant, dtype, n):
    hp = ADAM_VARIANTS[variant]
    param, grads = optim_data(n, dtype, ("adam", variant, dtype, n))
    d_param, d_m, d_v = (cuda.to_device(x) for x in (param, np.zeros(n, dtype),
                                                      np.zeros(n, dtype)))
    h_param, h_m, h_v = param.copy(), np.zeros(n, dtype), np.zeros(n, dtype)
    for step, grad in enumerate(grads, start=1):
        ck.adam_update(d_param, cuda.to_device(grad), d_m, d_v, hp["lr"], hp["beta1"],
                       hp["beta2"], hp["eps"], hp["weight_decay"], step, hp["grad_scale"])
        optim.adam_update(h_param, grad, h_m, h_v, hp["lr"], hp["beta1"], hp["beta2"],
                          hp["eps"], hp["weight_decay"], step, hp["grad_scale"])
    ref_param, ref_m, ref_v = f64.adam(param, grads, **hp)
    for out, twin, ref in ((d_param, h_param, ref_param), (d_m, h_m, ref_m), (d_v, h_v, ref_v)):
        assert_close(out.copy_to_host(), ref, dtype)
        assert_close(out.copy_to_host(), twin, dtype)


def test_adam_rejects_step_zero():
    p = cuda.to_device(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="step counts from 1"):
        ck.adam_update(p, p, p, p, 1e-3, 0.9, 0.999, 1e-8, 0.0, 0, 1.0)


def test_optimizer_selector_gives_the_cuda_twins():
    kernels = optim.get_optimizer_kernels("cuda")
    assert kernels.sgd_update is ck.sgd_update
    assert kernels.adam_update is ck.adam_update


# ---------------------------------------------------------------------------------------
# Fusion buffer.

SHAPES = [(3, 4), (0,), (7,), (2, 3, 5), (1,), (97,)]


@pytest.mark.parametrize("dtype", (np.float32, np.float16, np.int64), ids=str)
def test_pack_then_unpack_round_trips(dtype):
    rng = rng_for("pack", dtype)
    tensors = [(rng.standard_normal(shape) * 50).astype(dtype) for shape in SHAPES]
    # Gaps of 3 elements between windows: whatever pack must not touch stays poisoned.
    offsets, position = [], 5
    for t in tensors:
        offsets.append(position)
        position += t.size + 3
    poison = np.array(-77, dtype)
    fusion = np.full(position, poison, dtype)
    d_fusion = cuda.to_device(fusion)
    stream = cuda.stream()
    ck.pack([cuda.to_device(t) for t in tensors], d_fusion, offsets, stream=stream)
    stream.synchronize()
    packed = d_fusion.copy_to_host()
    expected = fusion.copy()
    for t, offset in zip(tensors, offsets):
        expected[offset:offset + t.size] = t.ravel()
    np.testing.assert_array_equal(packed, expected)

    targets = [cuda.to_device(np.full(t.shape, poison, dtype)) for t in tensors]
    ck.unpack(d_fusion, targets, offsets)
    for t, target in zip(tensors, targets):
        np.testing.assert_array_equal(target.copy_to_host(), t)


def test_pack_rejects_bad_layouts():
    d_fusion = cuda.to_device(np.zeros(10, np.float32))
    t = cuda.to_device(np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"tensor 0: elements \[8, 12\) lie outside"):
        ck.pack([t], d_fusion, [8])
    with pytest.raises(ValueError, match="2 tensors but 1 offsets"):
        ck.pack([t, t], d_fusion, [0])
    with pytest.raises(TypeError, match="tensor 0: dtype float64 differs"):
        ck.unpack(d_fusion, [cuda.to_device(np.ones(4))], [0])
