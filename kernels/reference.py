"""Float64 references of the kernels, in numpy: what the CPU and CUDA kernels are checked
against (the tests, and ``benchmarks/gpu.py`` on a real GPU).

- :func:`reduce`: ``a op b`` rounded once to a's dtype.
- :func:`half`, :func:`half_scale`, :func:`compress`, :func:`decompress`: what the
  half-precision kernels (bfloat16, float16) compute, written with numpy and ml_dtypes casts:
  widen to float32, compute there, round once; the kernels must give these bits exactly.
- :func:`sgd`, :func:`adam`: ``torch.optim.SGD`` (dampening 0) and ``torch.optim.Adam``
  (amsgrad off) applied step by step, in float64, with the kernels' optional ``grad_scale``
  multiplying each gradient first.
"""
import ml_dtypes
import numpy as np

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
_UFUNCS = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}


def reduce(op, a, b):
    """``a op b`` rounded to a's dtype: computed in float64 for floats (one correctly rounded
    operation equals the float64 result rounded once, so a kernel must match it exactly), in
    the integers' own dtype otherwise (exact, wrapping as the kernels do)."""
    ufunc = _UFUNCS[op]
    if a.dtype.kind == "f" or a.dtype == BFLOAT16:
        return ufunc(a.astype(np.float64), b.astype(np.float64)).astype(a.dtype)
    return ufunc(a, b)


def half(op, a, b):
    """``(a.astype(float32) op b.astype(float32)).astype(a.dtype)`` for bfloat16 or float16
    ``a`` and ``b``: numpy's and ml_dtypes' own casts around one float32 operation."""
    with np.errstate(all="ignore"):
        wide = _UFUNCS[op](a.astype(np.float32), b.astype(np.float32))
        return wide.astype(a.dtype)


def half_scale(a, divisor):
    """op="avg"'s division of a half-precision ``a``, in float32, rounded once."""
    with np.errstate(all="ignore"):
        return (a.astype(np.float32) / np.float32(divisor)).astype(a.dtype)


def compress(x, dtype, scale=1.0):
    """float32 ``x`` times ``scale`` (a NaN left as it is), cast to ``dtype``."""
    with np.errstate(all="ignore"):
        return np.where(np.isnan(x), x, x * np.float32(scale)).astype(dtype)


def decompress(h, scale=1.0):
    """Half-precision ``h`` cast to float32, times ``scale`` (a NaN left as it is)."""
    wide = h.astype(np.float32)
    with np.errstate(all="ignore"):
        return np.where(np.isnan(wide), wide, wide * np.float32(scale))


def sgd(param, grads, lr, momentum=0.0, weight_decay=0.0, nesterov=False, grad_scale=1.0):
    """``(param, momentum buffer or None)`` after one step per gradient in ``grads``; the
    buffer starts as the first gradient, as in PyTorch."""
    param = param.astype(np.float64)
    buf = None
    for grad in grads:
        g = grad.astype(np.float64) * grad_scale
        if weight_decay != 0:
            g = g + weight_decay * param
        if momentum != 0:
            buf = g.copy() if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        param = param - lr * g
    return param, buf


def adam(param, grads, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
         grad_scale=1.0):
    """``(param, m, v)`` after one step per gradient in ``grads`` (steps 1, 2, ...)."""
    param = param.astype(np.float64)
    m = np.zeros_like(param)
    v = np.zeros_like(param)
    for step, grad in enumerate(grads, start=1):
        g = grad.astype(np.float64) * grad_scale
        if weight_decay != 0:
            g = g + weight_decay * param
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        denom = np.sqrt(v) / np.sqrt(1 - beta2**step) + eps
        param = param - lr / (1 - beta1**step) * m / denom
    return param, m, v
