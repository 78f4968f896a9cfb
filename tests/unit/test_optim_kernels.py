"""CPU optimizer kernels (kernels/optim.py) against float64 reimplementations of PyTorch's rules,
with full-precision gradients and with bfloat16/float16 ones (float32 master weights).

The references are ringreduce.kernels.reference's; the data helpers live in
_cuda_sim_checks.py, which checks the CUDA twins against the same references and against
these CPU kernels.
"""
import numpy as np
import pytest

from _cuda_sim_checks import ADAM_VARIANTS, SGD_VARIANTS, assert_close, f64, optim_data
from ringreduce.kernels import optim
from ringreduce.kernels.cpu_optim import HALF_BLOCK
from ringreduce.kernels.half import BFLOAT16

DTYPES = (np.float32, np.float64)
LENGTHS = (0, 1, 7, 211)


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("variant", SGD_VARIANTS)
def test_sgd_matches_pytorch_rule(variant, dtype, n):
    hp = SGD_VARIANTS[variant]
    param, grads = optim_data(n, dtype, ("cpu-sgd", variant, np.dtype(dtype).name, n))
    p, buf = param.copy(), np.zeros(n, dtype)
    for grad in grads:
        optim.sgd_update(p, grad, buf, hp["lr"], hp["momentum"], hp["weight_decay"],
                         hp["nesterov"], hp["grad_scale"])
    ref_param, ref_buf = f64.sgd(param, grads, **hp)
    assert_close(p, ref_param, dtype)
    if hp["momentum"]:
        assert_close(buf, ref_buf, dtype)


def test_zeroed_momentum_buffer_reproduces_pytorchs_first_step_exactly():
    # PyTorch sets buf = g on the first step; momentum * 0 + g must give the same bits.
    param, grads = optim_data(211, np.float32, ("first-step",))
    buf = np.zeros_like(param)
    scale, decay = np.float32(0.25), np.float32(0.01)
    g = grads[0] * scale + decay * param
    optim.sgd_update(param, grads[0], buf, 0.1, 0.9, 0.01, False, 0.25)
    np.testing.assert_array_equal(buf, g)


def test_sgd_without_momentum_takes_an_empty_buffer_and_leaves_a_full_one_alone():
    param, grads = optim_data(31, np.float64, ("no-momentum",))
    p = param.copy()
    optim.sgd_update(p, grads[0], np.empty(0), 0.1, 0.0, 0.0, False, 1.0)
    sentinel = np.full(31, 7.0)
    optim.sgd_update(p, grads[1], sentinel, 0.1, 0.0, 0.0, False, 1.0)
    assert_close(p, f64.sgd(param, grads[:2], 0.1, 0.0, 0.0, False, 1.0)[0], np.float64)
    assert (sentinel == 7.0).all()


def test_sgd_rejects_bad_arguments():
    p = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="grad and param differ"):
        optim.sgd_update(p, np.zeros(4, np.float32), p, 0.1, 0.0, 0.0, False, 1.0)
    with pytest.raises(ValueError, match="momentum_buf and param differ"):
        optim.sgd_update(p, p.copy(), np.zeros(4, np.float32), 0.1, 0.9, 0.0, False, 1.0)
    with pytest.raises(ValueError, match="nesterov needs momentum"):
        optim.sgd_update(p, p.copy(), p.copy(), 0.1, 0.0, 0.0, True, 1.0)


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("variant", ADAM_VARIANTS)
def test_adam_matches_pytorch_rule(variant, dtype, n):
    hp = ADAM_VARIANTS[variant]
    param, grads = optim_data(n, dtype, ("cpu-adam", variant, np.dtype(dtype).name, n))
    p, m, v = param.copy(), np.zeros(n, dtype), np.zeros(n, dtype)
    for step, grad in enumerate(grads, start=1):
        optim.adam_update(p, grad, m, v, hp["lr"], hp["beta1"], hp["beta2"], hp["eps"],
                          hp["weight_decay"], step, hp["grad_scale"])
    ref_param, ref_m, ref_v = f64.adam(param, grads, **hp)
    assert_close(p, ref_param, dtype)
    assert_close(m, ref_m, dtype)
    assert_close(v, ref_v, dtype)


def test_adam_rejects_bad_arguments():
    p = np.zeros(5)
    with pytest.raises(ValueError, match="step counts from 1"):
        optim.adam_update(p, p.copy(), p.copy(), p.copy(), 1e-3, 0.9, 0.999, 1e-8, 0.0, 0, 1.0)
    with pytest.raises(ValueError, match="must have param's length"):
        optim.adam_update(p, p.copy(), np.zeros(4), p.copy(), 1e-3, 0.9, 0.999, 1e-8, 0.0, 1,
                          1.0)


def test_selector():
    kernels = optim.get_optimizer_kernels("cpu")
    assert kernels.sgd_update is optim.sgd_update
    assert kernels.adam_update is optim.adam_update
    with pytest.raises(ValueError, match="unknown device 'tpu'; expected one of cpu, cuda"):
        optim.get_optimizer_kernels("tpu")


def test_matches_torch_optim():
    """Where PyTorch is installed, the kernels against torch.optim itself, in float32."""
    torch = pytest.importorskip("torch")
    n = 211
    for variant, hp in SGD_VARIANTS.items():
        param, grads = optim_data(n, np.float32, ("torch-sgd", variant))
        p, buf = param.copy(), np.zeros(n, np.float32)
        tp = torch.nn.Parameter(torch.from_numpy(param.copy()))
        opt = torch.optim.SGD([tp], lr=hp["lr"], momentum=hp["momentum"],
                              weight_decay=hp["weight_decay"], nesterov=hp["nesterov"])
        for grad in grads:
            optim.sgd_update(p, grad, buf, hp["lr"], hp["momentum"], hp["weight_decay"],
                             hp["nesterov"], hp["grad_scale"])
            # PyTorch has no grad_scale: hand it the scaled gradient, as averaging would.
            tp.grad = torch.from_numpy(grad * np.float32(hp["grad_scale"]))
            opt.step()
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-6, atol=1e-7,
                                   err_msg=variant)
    for variant, hp in ADAM_VARIANTS.items():
        param, grads = optim_data(n, np.float32, ("torch-adam", variant))
        p, m, v = param.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
        tp = torch.nn.Parameter(torch.from_numpy(param.copy()))
        opt = torch.optim.Adam([tp], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]),
                               eps=hp["eps"], weight_decay=hp["weight_decay"], foreach=False)
        for step, grad in enumerate(grads, start=1):
            optim.adam_update(p, grad, m, v, hp["lr"], hp["beta1"], hp["beta2"], hp["eps"],
                              hp["weight_decay"], step, hp["grad_scale"])
            tp.grad = torch.from_numpy(grad * np.float32(hp["grad_scale"]))
            opt.step()
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=variant)


# ---------------------------------------------------------------------------------------
# Half-precision gradients with float32 master weights: widened exactly, so the step is the
# float32 step on grad.astype(float32), bit for bit, and close to the float64 reference.

HALVES = (BFLOAT16, np.dtype(np.float16))
# Past two of the blocks the half path widens at a time, with a partial last one.
HALF_LENGTHS = (0, 1, 211, 2 * HALF_BLOCK + 5)


def half_grads(grads, dtype):
    return [g.astype(dtype) for g in grads]


@pytest.mark.parametrize("n", HALF_LENGTHS)
@pytest.mark.parametrize("half", HALVES, ids=str)
@pytest.mark.parametrize("variant", SGD_VARIANTS)
def test_sgd_with_half_gradients_is_the_float32_step_on_the_widened_gradients(variant, half,
                                                                              n):
    hp = SGD_VARIANTS[variant]
    param, grads = optim_data(n, np.float32, ("half-sgd", variant, half.name, n))
    grads = half_grads(grads, half)
    p, buf = param.copy(), np.zeros(n, np.float32)
    p32, buf32 = param.copy(), np.zeros(n, np.float32)
    for k, grad in enumerate(grads):
        # Alternately as the half dtype and as its uint16 bits naming the dtype.
        extra = {} if k % 2 else {"grad_dtype": half}
        optim.sgd_update(p, grad if k % 2 else grad.view(np.uint16), buf, *hp.values(), **extra)
        optim.sgd_update(p32, grad.astype(np.float32), buf32, *hp.values())
    np.testing.assert_array_equal(p.view(np.uint32), p32.view(np.uint32))
    np.testing.assert_array_equal(buf.view(np.uint32), buf32.view(np.uint32))
    assert_close(p, f64.sgd(param, grads, **hp)[0], np.float32)


@pytest.mark.parametrize("n", HALF_LENGTHS)
@pytest.mark.parametrize("half", HALVES, ids=str)
@pytest.mark.parametrize("variant", ADAM_VARIANTS)
def test_adam_with_half_gradients_is_the_float32_step_on_the_widened_gradients(variant, half,
                                                                               n):
    hp = ADAM_VARIANTS[variant]
    param, grads = optim_data(n, np.float32, ("half-adam", variant, half.name, n))
    grads = half_grads(grads, half)
    state = [param.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)]
    state32 = [param.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)]
    scalars = [hp[k] for k in ("lr", "beta1", "beta2", "eps", "weight_decay")]
    for step, grad in enumerate(grads, start=1):
        optim.adam_update(*state[:1], grad, *state[1:], *scalars, step, hp["grad_scale"])
        optim.adam_update(*state32[:1], grad.astype(np.float32), *state32[1:], *scalars, step,
                          hp["grad_scale"])
    for ours, theirs, reference in zip(state, state32, f64.adam(param, grads, **hp)):
        np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))
        assert_close(ours, reference, np.float32)


def test_half_gradients_refuse_bad_arguments():
    p = np.zeros(5, np.float32)
    with pytest.raises(TypeError, match="grad_dtype: expected bfloat16 or float16, got "
                                        "float32"):
        optim.sgd_update(p, p.copy(), p, 0.1, 0.0, 0.0, False, 1.0, grad_dtype=np.float32)
    with pytest.raises(TypeError, match="grad: expected the 16-bit bits of bfloat16, got "
                                        "float32"):
        optim.adam_update(p, p.copy(), p.copy(), p.copy(), 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, 1.0,
                          grad_dtype=BFLOAT16)
    with pytest.raises(ValueError, match="sgd_update: grad and param differ in length"):
        optim.sgd_update(p, np.zeros(4, BFLOAT16), p, 0.1, 0.0, 0.0, False, 1.0)
