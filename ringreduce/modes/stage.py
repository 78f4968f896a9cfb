"""One pipeline stage: a contiguous run of the MLP's layers, its initial weights
(:func:`mlp_layer_parameters`, without building the rest of the model) and its forward and
backward arithmetic (:class:`Stage`). Pure numpy: no MPI here."""
import numpy as np

__all__ = ["mlp_layer_parameters", "Stage"]


def mlp_layer_parameters(sizes, seed, dtype, layers):
    """``[W, b, ...]`` of the given ``layers`` of ``examples/mlp.py``'s ``MLP(sizes, dtype, seed)``,
    without allocating the others.

    The MLP draws every weight matrix in turn from ``np.random.default_rng([seed, 1])`` (He
    normal, std ``sqrt(2 / fan_in)``; biases zero). Replaying that stream and keeping only the
    wanted layers gives the same values while holding at most one other layer at a time: a
    stage of a model too large for one rank never builds the whole model. The pure tests check
    this against ``MLP`` itself.
    """
    dtype = np.dtype(dtype)
    keep = set(layers)
    rng = np.random.default_rng([seed, 1])
    out = []
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if layer > max(keep, default=-1):
            break
        w = rng.standard_normal((fan_in, fan_out))
        if layer in keep:
            w *= np.sqrt(2.0 / fan_in)
            out.append(np.ascontiguousarray(w, dtype=dtype))
            out.append(np.zeros(fan_out, dtype=dtype))
        del w
    return out


class Stage:
    """Layers ``[first, stop)`` of a ReLU MLP with sizes ``sizes``, with the arithmetic of
    ``examples/mlp.py`` (``h = relu(h @ W + b)``, no ReLU after the model's last layer), and
    the inputs of every micro-batch in flight kept for its backward.

    ``params`` is ``[W_first, b_first, ...]``. :meth:`backward` adds into ``grads`` (gradient
    accumulation over micro-batches) and returns the gradient with respect to the stage's
    input, or ``None`` on the stage that holds layer 0 (nobody needs the data's gradient).
    """

    def __init__(self, sizes, first, stop, params):
        if not 0 <= first < stop <= len(sizes) - 1:
            raise ValueError(f"Stage needs 0 <= first < stop <= {len(sizes) - 1} (layers), got "
                             f"first={first}, stop={stop}")
        if len(params) != 2 * (stop - first):
            raise ValueError(f"Stage of layers [{first}, {stop}) expected "
                             f"{2 * (stop - first)} parameters, got {len(params)}")
        self.sizes, self.first, self.stop, self.params = list(sizes), first, stop, list(params)
        self.num_model_layers = len(sizes) - 1
        self._inputs = {}  # micro-batch -> the input of each of this stage's layers

    def forward(self, x, micro):
        if x.ndim != 2 or x.shape[1] != self.sizes[self.first]:
            raise ValueError(f"stage of layers [{self.first}, {self.stop}) expected input of "
                             f"shape (batch, {self.sizes[self.first]}), got {x.shape}")
        if micro in self._inputs:
            raise RuntimeError(f"forward of micro-batch {micro} twice before its backward")
        inputs = []
        h = x
        for i, layer in enumerate(range(self.first, self.stop)):
            w, b = self.params[2 * i], self.params[2 * i + 1]
            inputs.append(h)
            h = h @ w
            h += b
            if layer < self.num_model_layers - 1:
                np.maximum(h, 0, out=h)
        self._inputs[micro] = inputs
        return h

    def backward(self, d, micro, grads):
        inputs = self._inputs.pop(micro)  # KeyError: backward without its forward
        for i in reversed(range(self.stop - self.first)):
            layer = self.first + i
            h_in = inputs[i]
            grads[2 * i + 1] += d.sum(axis=0)
            grads[2 * i] += h_in.T @ d
            if layer == 0:
                return None
            # The ReLU before this layer passed gradient only where its output was > 0.
            d = d @ self.params[2 * i].T
            d *= h_in > 0
        return d

    def forward_only(self, x):
        """Forward without keeping anything (evaluation)."""
        h = x
        for i, layer in enumerate(range(self.first, self.stop)):
            h = h @ self.params[2 * i]
            h += self.params[2 * i + 1]
            if layer < self.num_model_layers - 1:
                np.maximum(h, 0, out=h)
        return h
