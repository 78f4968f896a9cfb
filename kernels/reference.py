"""Float64 references of the kernels, in numpy: what the CPU and CUDA kernels are checked
against (the tests, and ``benchmarks/gpu.py`` on a real GPU).

- :func:`reduce`: ``a op b`` rounded once to a's dtype.
- :func:`sgd`, :func:`adam`: ``torch.optim.SGD`` (dampening 0) and ``torch.optim.Adam``
  (amsgrad off) applied step by step, in float64, with the kernels' optional ``grad_scale``
  multiplying each gradient first.
"""
import numpy as np

_UFUNCS = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}


def reduce(op, a, b):
    """``a op b`` rounded to a's dtype: computed in float64 for floats (one correctly rounded
    operation equals the float64 result rounded once, so a kernel must match it exactly), in
    the integers' own dtype otherwise (exact, wrapping as the kernels do)."""
    ufunc = _UFUNCS[op]
    if a.dtype.kind == "f":
        return ufunc(a.astype(np.float64), b.astype(np.float64)).astype(a.dtype)
    return ufunc(a, b)


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
