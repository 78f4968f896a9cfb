"""Fused optimizer updates on the CPU, twins of the CUDA kernels in ``cuda_optim.py``.

``optim.py`` chooses between the two for a device; this module knows only the CPU, so the
CUDA side imports its element functions without importing the choice, and no cycle forms.

The per-element arithmetic is written once, as plain Python functions (``sgd_element``,
``adam_element``), and compiled twice: with ``@njit`` here and with
``@cuda.jit(device=True)`` in ``cuda_optim.py``. The twins therefore cannot drift apart; they
differ only where the CUDA compiler fuses a multiply and an add into one FMA. The element
functions stay in this file, beside the kernels that inline them, because ``cache=True``
checks only the source file of the cached function: element functions kept in a module of
their own could change while these kernels still load their old machine code from the cache.

``grad_scale`` multiplies the gradient before anything else, so the allreduce's averaging
(``grad_scale = 1 / world_size``) and the optimizer step are one pass over memory instead of
two.

Arithmetic is done in the parameters' dtype (float32 or float64), as PyTorch does: scalar
hyperparameters are rounded to that dtype once per call, and Adam's bias corrections are
computed in float64 first, like PyTorch's Python-float scalars.

Half-precision gradients (mixed precision: bfloat16 or float16 gradients, float32 master
weights and optimizer state): :func:`sgd_update` and :func:`adam_update` dispatch on the
gradient's dtype. A bfloat16/float16 gradient, or its uint16 bits with ``grad_dtype=``, is
widened to float32 by ``half.py``'s decompress kernel a block of ``HALF_BLOCK`` elements at a
time, into a buffer that stays in cache, and each block is stepped by the full-precision
kernel: one pass over memory, and by construction the bits of the full-precision step on
``grad.astype(float32)``. The blocks are driven from Python, not from a kernel, so that no
cached kernel inlines another file's element functions (``cache=True`` would not notice
those change).
"""
import math

import numpy as np
from numba import njit

from .half import BITS, DECOMPRESS, grad_format

_ONE = np.float32(1.0)


def sgd_element(p, g, b, lr, momentum, weight_decay, nesterov, grad_scale):
    """One element of ``torch.optim.SGD`` with dampening 0; returns (param, momentum_buf).

    PyTorch starts the momentum buffer as a copy of the first gradient; with dampening 0 a
    zeroed buffer gives the same first step (``momentum * 0 + g == g``), so callers start
    ``momentum_buf`` at zeros and no first-step flag is needed.
    """
    g = g * grad_scale
    if weight_decay != 0:
        g = g + weight_decay * p
    if momentum != 0:
        b = momentum * b + g
        if nesterov:
            g = g + momentum * b
        else:
            g = b
    return p - lr * g, b


def adam_element(p, g, m, v, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay,
                 grad_scale, step_size, bias_correction2_sqrt):
    """One element of ``torch.optim.Adam`` (amsgrad off, L2 weight decay); returns (p, m, v).

    The order of operations follows PyTorch's single-tensor implementation: ``m.lerp_(g,
    1 - beta1)``, ``v.mul_(beta2).addcmul_(g, g, 1 - beta2)``, ``denom = sqrt(v) / sqrt(bc2)
    + eps``, ``p.addcdiv_(m, denom, -lr / bc1)``.
    """
    g = g * grad_scale
    if weight_decay != 0:
        g = g + weight_decay * p
    m = m + one_minus_beta1 * (g - m)
    v = v * beta2 + one_minus_beta2 * (g * g)
    denom = math.sqrt(v) / bias_correction2_sqrt + eps
    return p - step_size * (m / denom), m, v


def adam_scalars(lr, beta1, beta2, step):
    """Adam's per-step scalars in float64: (step_size, sqrt(bias_correction2))."""
    if step < 1:
        raise ValueError("adam_update: step counts from 1 (PyTorch's bias correction)")
    bias_correction1 = 1.0 - float(beta1) ** step
    bias_correction2 = 1.0 - float(beta2) ** step
    return float(lr) / bias_correction1, math.sqrt(bias_correction2)


_sgd_element = njit(inline="always")(sgd_element)
_adam_element = njit(inline="always")(adam_element)
_adam_scalars = njit(adam_scalars)

# Elements widened per block: 64 KiB of float32, which stays in the L2 cache between being
# written and read, and is below glibc's 128 KiB mmap threshold, so the buffer costs a plain
# malloc. Long enough that the two kernel calls a block (~1 us each) are small beside it.
HALF_BLOCK = 16384


def sgd_update(param, grad, momentum_buf, lr, momentum, weight_decay, nesterov, grad_scale,
               *, grad_dtype=None):
    """In place: one SGD step on 1-D contiguous float32/float64 ``param`` (see
    :func:`sgd_kernel`); ``grad`` of param's dtype, or bfloat16/float16 (or their uint16 bits,
    ``grad_dtype`` naming the type), widened to float32 in the same pass."""
    fmt = grad_format(grad, grad_dtype)
    if fmt is None:
        sgd_kernel(param, grad, momentum_buf, lr, momentum, weight_decay, nesterov, grad_scale)
        return
    for start, stop, wide in _widened(param, grad, fmt, "sgd_update"):
        buf = momentum_buf[start:stop] if momentum != 0 else momentum_buf
        sgd_kernel(param[start:stop], wide, buf, lr, momentum, weight_decay, nesterov,
                   grad_scale)


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, grad_scale, *,
                grad_dtype=None):
    """In place: one Adam step (see :func:`adam_kernel`); ``grad`` as in :func:`sgd_update`."""
    fmt = grad_format(grad, grad_dtype)
    if fmt is None:
        adam_kernel(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, grad_scale)
        return
    for start, stop, wide in _widened(param, grad, fmt, "adam_update"):
        adam_kernel(param[start:stop], wide, m[start:stop], v[start:stop], lr, beta1, beta2,
                    eps, weight_decay, step, grad_scale)


def _widened(param, grad, fmt, what):
    """(start, stop, float32 gradient block) over ``param``, each block widened from the half
    gradient ``grad`` just before it is used."""
    n = param.size
    if grad.size != n:
        raise ValueError(f"{what}: grad and param differ in length")
    bits, widen = grad.view(BITS), DECOMPRESS[fmt]
    block = np.empty(min(n, HALF_BLOCK), np.float32)
    for start in range(0, n, HALF_BLOCK):
        stop = min(start + HALF_BLOCK, n)
        wide = block[:stop - start]
        widen(wide, bits[start:stop], _ONE)
        yield start, stop, wide


@njit(nogil=True, cache=True)
def sgd_kernel(param, grad, momentum_buf, lr, momentum, weight_decay, nesterov, grad_scale):
    """In place: one SGD step on 1-D contiguous float32/float64 ``param``.

    g = grad * grad_scale + weight_decay * param; with momentum: buf = momentum * buf + g,
    then g = g + momentum * buf (nesterov) or g = buf; finally param -= lr * g.
    ``momentum_buf`` starts at zeros; with momentum == 0 it is never touched and may be empty.
    """
    n = param.size
    if grad.size != n:
        raise ValueError("sgd_update: grad and param differ in length")
    if nesterov and momentum == 0:
        # PyTorch refuses this too: without momentum, Nesterov's look-ahead is undefined.
        raise ValueError("sgd_update: nesterov needs momentum != 0")
    t = param.dtype.type
    lr_t = t(lr)
    momentum_t = t(momentum)
    weight_decay_t = t(weight_decay)
    grad_scale_t = t(grad_scale)
    if momentum != 0:
        if momentum_buf.size != n:
            raise ValueError("sgd_update: momentum_buf and param differ in length")
        for i in range(n):
            p, b = _sgd_element(param[i], grad[i], momentum_buf[i], lr_t, momentum_t,
                                weight_decay_t, nesterov, grad_scale_t)
            param[i] = p
            momentum_buf[i] = b
    else:
        for i in range(n):
            # momentum_t is zero here: it stands in for the unused buffer value.
            p, _ = _sgd_element(param[i], grad[i], momentum_t, lr_t, momentum_t,
                                weight_decay_t, nesterov, grad_scale_t)
            param[i] = p


@njit(nogil=True, cache=True)
def adam_kernel(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, grad_scale):
    """In place: one Adam step (PyTorch semantics) on 1-D contiguous float32/float64 arrays.

    ``m`` and ``v`` start at zeros; ``step`` is the number of this step, counting from 1.
    """
    n = param.size
    if grad.size != n or m.size != n or v.size != n:
        raise ValueError("adam_update: grad, m and v must have param's length")
    step_size, bias_correction2_sqrt = _adam_scalars(lr, beta1, beta2, step)
    t = param.dtype.type
    one_minus_beta1 = t(1.0 - float(beta1))
    beta2_t = t(beta2)
    one_minus_beta2 = t(1.0 - float(beta2))
    eps_t = t(eps)
    weight_decay_t = t(weight_decay)
    grad_scale_t = t(grad_scale)
    step_size_t = t(step_size)
    bc2_sqrt_t = t(bias_correction2_sqrt)
    for i in range(n):
        p, mi, vi = _adam_element(param[i], grad[i], m[i], v[i], one_minus_beta1, beta2_t,
                                  one_minus_beta2, eps_t, weight_decay_t, grad_scale_t,
                                  step_size_t, bc2_sqrt_t)
        param[i] = p
        m[i] = mi
        v[i] = vi
