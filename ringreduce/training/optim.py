"""Optimizers over a fixed list of parameters, updated in place by the Numba kernels in
``ringreduce.kernels.optim`` (CPU ``@njit`` kernels for numpy arrays, their CUDA twins, same
signature and per-element code, for device arrays)."""
import numpy as np

from ..gpu import is_device_array

__all__ = ["NonFiniteGradientError", "SGD", "Adam"]


class NonFiniteGradientError(FloatingPointError):
    """The reduced gradient holds NaN or Inf (raised by training loops that choose to stop)."""


def _flat(a, what):
    """1-D view of a C-contiguous array (the kernels update in place, so a copy would be lost)."""
    if is_device_array(a):
        from numba import cuda
        if not cuda.devicearray.is_cuda_ndarray(a):
            a = cuda.as_cuda_array(a)  # a view of the same device memory, no copy
        if not a.is_c_contiguous():
            raise ValueError(f"{what} must be a C-contiguous device array, got strides "
                             f"{a.strides}")
        return a.reshape(a.size)
    if not a.flags.c_contiguous:
        raise ValueError(f"{what} must be a C-contiguous array, got strides {a.strides}")
    return a.reshape(-1)


class _Optimizer:
    """Shared plumbing: parameters, per-parameter state buffers, step count, state_dict."""

    _state_names = ()

    def __init__(self, params):
        from ..kernels.optim import get_optimizer_kernels

        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__} needs at least one parameter")
        self._flat_params = [_flat(p, f"parameter {i}") for i, p in enumerate(self.params)]
        # One kernel pair for the whole model: CPU @njit for numpy arrays, the CUDA twins
        # (same signature, same per-element code) for Numba device arrays.
        kinds = {is_device_array(p) for p in self.params}
        if len(kinds) > 1:
            raise ValueError(f"{type(self).__name__}: parameters mix numpy and device arrays")
        self.device = "cuda" if kinds == {True} else "cpu"
        self.kernels = get_optimizer_kernels(self.device)
        self.state = {name: [self._zeros(p) for p in self.params] for name in self._state_names}
        self.steps = 0

    def _zeros(self, p, shape=None):
        shape = p.shape if shape is None else shape
        if self.device == "cuda":
            from numba import cuda
            return cuda.to_device(np.zeros(shape, dtype=p.dtype))
        return np.zeros(shape, dtype=p.dtype)

    def _check_grads(self, grads):
        grads = list(grads)
        if len(grads) != len(self.params):
            raise ValueError(f"{type(self).__name__}.step expected {len(self.params)} "
                             f"gradients, got {len(grads)}")
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(f"{type(self).__name__}.step: gradient {i} is "
                                 f"{g.dtype}{tuple(g.shape)}, parameter {i} is "
                                 f"{p.dtype}{tuple(p.shape)}")
        return [_flat(g, f"gradient {i}") for i, g in enumerate(grads)]

    def state_dict(self):
        """Plain numpy arrays: ``step`` (0-d int64) and ``<buffer>.<i>`` per parameter."""
        out = {"step": np.array(self.steps, dtype=np.int64)}
        for name, buffers in self.state.items():
            for i, b in enumerate(buffers):
                out[f"{name}.{i}"] = b.copy_to_host() if is_device_array(b) else b.copy()
        return out

    def load_state_dict(self, state):
        """Restore from :meth:`state_dict` output; shapes and dtypes must match exactly."""
        expected = {"step"} | {f"{n}.{i}" for n in self.state for i in range(len(self.params))}
        missing, extra = expected - set(state), set(state) - expected
        if missing or extra:
            raise ValueError(f"{type(self).__name__}.load_state_dict: missing entries "
                             f"{sorted(missing)}, unexpected entries {sorted(extra)}")
        for name, buffers in self.state.items():
            for i, b in enumerate(buffers):
                src = np.asarray(state[f"{name}.{i}"])
                if src.shape != b.shape or src.dtype != b.dtype:
                    raise ValueError(f"{type(self).__name__}.load_state_dict: '{name}.{i}' is "
                                     f"{src.dtype}{src.shape}, expected {b.dtype}{b.shape}")
        for name, buffers in self.state.items():
            for i, b in enumerate(buffers):
                src = np.asarray(state[f"{name}.{i}"])
                if is_device_array(b):
                    b.copy_to_device(np.ascontiguousarray(src))
                else:
                    b[...] = src
        self.steps = int(state["step"])


class SGD(_Optimizer):
    """SGD with momentum, Nesterov momentum and (coupled, L2) weight decay: PyTorch semantics
    with ``dampening=0``, done by ``kernels.optim.sgd_update`` on each parameter in place::

        g = grad_scale * grad + weight_decay * param
        buf = momentum * buf + g                  (buf starts at zero, so step 1 gives buf = g)
        d = g + momentum * buf if nesterov else buf
        param -= lr * d
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD needs lr, momentum and weight_decay >= 0, got lr={lr}, "
                             f"momentum={momentum}, weight_decay={weight_decay}")
        if nesterov and momentum <= 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self._state_names = ("momentum_buffer",) if momentum > 0 else ()
        super().__init__(params)
        self.lr, self.momentum = float(lr), float(momentum)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)
        if momentum > 0:
            self._buffers = [_flat(b, "momentum buffer") for b in self.state["momentum_buffer"]]
        else:
            # Without momentum the kernel never touches the buffer, which may be empty.
            self._buffers = [self._zeros(p, (0,)) for p in self.params]

    def step(self, grads, grad_scale=1.0):
        """One update from ``grads`` (same shapes as the parameters), times ``grad_scale``."""
        flat_grads = self._check_grads(grads)
        for p, g, b in zip(self._flat_params, flat_grads, self._buffers):
            self.kernels.sgd_update(p, g, b, self.lr, self.momentum, self.weight_decay,
                                    self.nesterov, float(grad_scale))
        self.steps += 1


class Adam(_Optimizer):
    """Adam (PyTorch semantics, L2 weight decay added to the gradient), done by
    ``kernels.optim.adam_update`` with 1-based ``step`` for the bias corrections."""

    _state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Adam needs lr, eps, weight_decay >= 0 and betas in [0, 1), got "
                             f"lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params)
        self.lr, self.eps, self.weight_decay = float(lr), float(eps), float(weight_decay)
        self.beta1, self.beta2 = (float(b) for b in betas)

    def step(self, grads, grad_scale=1.0):
        """One update from ``grads`` (same shapes as the parameters), times ``grad_scale``."""
        flat_grads = self._check_grads(grads)
        step = self.steps + 1
        for p, g, m, v in zip(self._flat_params, flat_grads, self.state["exp_avg"],
                              self.state["exp_avg_sq"]):
            self.kernels.adam_update(p, g, _flat(m, "exp_avg"), _flat(v, "exp_avg_sq"), self.lr,
                                     self.beta1, self.beta2, self.eps, self.weight_decay, step,
                                     float(grad_scale))
        self.steps = step
