"""CUDA twins of the CPU optimizer kernels: ``sgd_update`` and ``adam_update``.

They take the arguments of their twins in ``cpu_optim.py``, plus ``stream=0``, and compile
the same element functions (``sgd_element``, ``adam_element``) as device functions, so the
two devices share one source of the arithmetic. ``optim.get_optimizer_kernels`` hands out
either pair.

Each thread walks the grid-stride loop one element a trip, unlike the reductions in
``cuda_reduce.py``: these kernels already keep 3-4 loads a trip in flight (the measurement is
beside ``cuda_reduce.UNROLL``).

Half-precision gradients, as on the CPU: a bfloat16/float16 ``grad`` (or its 16-bit bits with
``grad_dtype=``) is widened to float32 as each element is loaded, by ``half.py``'s decoders
compiled as device functions, and the step runs in the parameters' dtype (float32 master
weights and state).
"""
import functools

import numpy as np

from .cpu_optim import adam_element, adam_scalars, sgd_element
from .cuda_launch import (as_bits_vector, as_device, as_vector, check_dtype, half_elements,
                          launch_config, numba_cuda, require_cuda, vector_type)
from .half import BITS, grad_format

OPTIM_DTYPES = (np.dtype("float32"), np.dtype("float64"))


def _same(g):
    return g


def _grad_loader(dtype, fmt):
    """(device function widening a gradient element, the gradient's vector type)."""
    if fmt is None:
        return numba_cuda.jit(device=True)(_same), vector_type(dtype)
    return half_elements()["decode", fmt], vector_type(BITS)


def _gradient(grad, dtype, fmt, size, grad_dtype):
    if fmt is None:
        return as_vector(grad, "grad", dtype, size)
    half = grad.dtype if grad_dtype is None else np.dtype(grad_dtype)
    return as_bits_vector(grad, "grad", half, size)


@functools.lru_cache(maxsize=None)
def _sgd_compiled(dtype, fmt=None):
    from numba import boolean, from_dtype, void

    element = numba_cuda.jit(device=True)(sgd_element)
    widen, grad_vec = _grad_loader(dtype, fmt)
    vec = vector_type(dtype)
    s = from_dtype(dtype)

    @numba_cuda.jit(void(vec, grad_vec, vec, s, s, s, boolean, s))
    def kernel(param, grad, buf, lr, momentum, weight_decay, nesterov, grad_scale):
        start = numba_cuda.grid(1)
        stride = numba_cuda.gridsize(1)
        if momentum != 0:
            for i in range(start, param.size, stride):
                p, b = element(param[i], widen(grad[i]), buf[i], lr, momentum, weight_decay,
                               nesterov, grad_scale)
                param[i] = p
                buf[i] = b
        else:
            for i in range(start, param.size, stride):
                # momentum is zero here: it stands in for the unused buffer value.
                p, _ = element(param[i], widen(grad[i]), momentum, lr, momentum,
                               weight_decay, nesterov, grad_scale)
                param[i] = p

    return kernel


def sgd_update(param, grad, momentum_buf, lr, momentum, weight_decay, nesterov, grad_scale,
               stream=0, *, grad_dtype=None):
    """CUDA twin of ``optim.sgd_update`` (same arguments, same semantics)."""
    require_cuda()
    param = as_vector(param, "param")
    dtype = check_dtype(param.dtype, OPTIM_DTYPES, "sgd_update")
    grad = as_device(grad, "grad")
    fmt = grad_format(grad, grad_dtype)
    grad = _gradient(grad, dtype, fmt, param.size, grad_dtype)
    if nesterov and momentum == 0:
        raise ValueError("sgd_update: nesterov needs momentum != 0")
    if momentum != 0:
        momentum_buf = as_vector(momentum_buf, "momentum_buf", dtype, param.size)
    else:
        # Never read or written without momentum; param fills the slot so any buffer,
        # even an empty one, is accepted, as on the CPU.
        momentum_buf = param
    if not param.size:
        return
    t = dtype.type
    blocks, threads = launch_config(param.size)
    _sgd_compiled(dtype, fmt)[blocks, threads, stream](
        param, grad, momentum_buf, t(lr), t(momentum), t(weight_decay), bool(nesterov),
        t(grad_scale))


@functools.lru_cache(maxsize=None)
def _adam_compiled(dtype, fmt=None):
    from numba import from_dtype, void

    element = numba_cuda.jit(device=True)(adam_element)
    widen, grad_vec = _grad_loader(dtype, fmt)
    vec = vector_type(dtype)
    s = from_dtype(dtype)

    @numba_cuda.jit(void(vec, grad_vec, vec, vec, s, s, s, s, s, s, s, s))
    def kernel(param, grad, m, v, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay,
               grad_scale, step_size, bias_correction2_sqrt):
        for i in range(numba_cuda.grid(1), param.size, numba_cuda.gridsize(1)):
            p, mi, vi = element(param[i], widen(grad[i]), m[i], v[i], one_minus_beta1, beta2,
                                one_minus_beta2, eps, weight_decay, grad_scale, step_size,
                                bias_correction2_sqrt)
            param[i] = p
            m[i] = mi
            v[i] = vi

    return kernel


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, grad_scale,
                stream=0, *, grad_dtype=None):
    """CUDA twin of ``optim.adam_update`` (same arguments, same semantics)."""
    require_cuda()
    param = as_vector(param, "param")
    dtype = check_dtype(param.dtype, OPTIM_DTYPES, "adam_update")
    grad = as_device(grad, "grad")
    fmt = grad_format(grad, grad_dtype)
    grad = _gradient(grad, dtype, fmt, param.size, grad_dtype)
    m = as_vector(m, "m", dtype, param.size)
    v = as_vector(v, "v", dtype, param.size)
    # Host-side float64 scalars, rounded to dtype once, exactly as the CPU twin does.
    step_size, bias_correction2_sqrt = adam_scalars(lr, beta1, beta2, step)
    if not param.size:
        return
    t = dtype.type
    blocks, threads = launch_config(param.size)
    _adam_compiled(dtype, fmt)[blocks, threads, stream](
        param, grad, m, v, t(1.0 - float(beta1)), t(beta2), t(1.0 - float(beta2)), t(eps),
        t(weight_decay), t(grad_scale), t(step_size), t(bias_correction2_sqrt))
