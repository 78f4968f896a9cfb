"""A multi-layer perceptron with a hand-written backward pass, in plain numpy.

    model = MLP([64, 128, 10], dtype=np.float64, seed=0)
    logits = model.forward(x)                                  # caches what backward needs
    loss, dlogits = softmax_cross_entropy(logits, y, scale=1 / B)
    model.backward(dlogits, grads, on_ready=sync.mark_ready)   # writes into grads

Layers are ``h = relu(h @ W + b)`` with no ReLU after the last one. ``parameters()`` is
``[W0, b0, W1, b1, ...]`` (``W`` of shape ``(fan_in, fan_out)``), and ``backward`` writes the
gradient of each parameter into the buffer of the same index, last layer first, bias before
weight: exactly the reverse of ``parameters()``, the order in which a gradient synchroniser
such as :class:`ringreduce.training.GradSync` fills its buckets.

The loss is scaled by the caller (``scale``) rather than averaged here, because in data
parallel training the right divisor is the *global* batch size, which one rank does not see.
"""
import numpy as np


class MLP:
    """ReLU MLP with layer sizes ``sizes = [inputs, hidden..., classes]``.

    Weights start from He-normal values (std ``sqrt(2 / fan_in)``), biases from zero, drawn
    from ``np.random.default_rng([seed, 1])``: a pure function of ``seed``, so every rank builds
    the same model without a broadcast (the training script broadcasts anyway, as a check
    that costs one collective).
    """

    def __init__(self, sizes, dtype=np.float64, seed=0):
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"MLP needs at least two layer sizes, all >= 1; got {sizes}")
        self.sizes = sizes
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"MLP dtype must be float32 or float64, got {self.dtype}")
        rng = np.random.default_rng([seed, 1])
        self.params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            w = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
            self.params.append(np.ascontiguousarray(w, dtype=self.dtype))
            self.params.append(np.zeros(fan_out, dtype=self.dtype))
        self._inputs = None  # per layer: the input it saw, kept by forward for backward

    def parameters(self):
        """``[W0, b0, W1, b1, ...]``: the arrays themselves, updated in place by optimizers."""
        return self.params

    @property
    def num_layers(self):
        return len(self.sizes) - 1

    def forward(self, x):
        """Logits for ``x`` of shape ``(batch, sizes[0])``; keeps the layer inputs for backward."""
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(f"MLP.forward expected input of shape (batch, {self.sizes[0]}), "
                             f"got {x.shape}")
        inputs = []
        h = x
        for layer in range(self.num_layers):
            w, b = self.params[2 * layer], self.params[2 * layer + 1]
            inputs.append(h)
            h = h @ w
            h += b
            if layer < self.num_layers - 1:
                np.maximum(h, 0, out=h)
        self._inputs = inputs
        return h

    def backward(self, dlogits, grads, on_ready=None, accumulate=False):
        """Write d(loss)/d(param) into ``grads`` (same order and shapes as ``parameters()``).

        ``dlogits`` is d(loss)/d(logits) from the last :meth:`forward`. ``on_ready(i)`` is called
        as soon as ``grads[i]`` is final, so a synchroniser can start sending it while the
        earlier layers are still being differentiated. ``accumulate=True`` adds to ``grads``
        instead of overwriting them (gradient accumulation over micro-batches).
        """
        if self._inputs is None:
            raise RuntimeError("MLP.backward called before forward")
        if len(grads) != len(self.params):
            raise ValueError(f"MLP.backward expected {len(self.params)} gradient buffers, "
                             f"got {len(grads)}")
        d = np.asarray(dlogits, dtype=self.dtype)
        for layer in reversed(range(self.num_layers)):
            iw, ib = 2 * layer, 2 * layer + 1
            h_in = self._inputs[layer]
            if accumulate:
                grads[ib] += d.sum(axis=0)
                if on_ready is not None:
                    on_ready(ib)
                grads[iw] += h_in.T @ d
            else:
                np.sum(d, axis=0, out=grads[ib])
                if on_ready is not None:
                    on_ready(ib)
                np.matmul(h_in.T, d, out=grads[iw])
            if on_ready is not None:
                on_ready(iw)
            if layer > 0:
                # The ReLU passed gradient only where its output (this layer's input) was > 0.
                d = d @ self.params[iw].T
                d *= h_in > 0
        self._inputs = None  # one backward per forward: a second one would reuse stale inputs


def softmax_cross_entropy(logits, labels, scale=1.0):
    """``(scale * sum of per-sample cross-entropy, d(that)/d(logits))``.

    Summed, not averaged: pass ``scale = 1 / global_batch_size`` so that the per-rank sums
    add up, across ranks, to the global mean loss and its gradient. Works for an empty batch
    (a rank that got no sample of a small last batch): loss 0, empty gradient.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"softmax_cross_entropy expected logits (batch, classes) and labels "
                         f"(batch,), got {logits.shape} and {labels.shape}")
    # Subtracting the row maximum keeps exp() from overflowing; it cancels in the softmax.
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sums = exp.sum(axis=1, keepdims=True)
    rows = np.arange(len(labels))
    loss = float(np.sum(np.log(sums[:, 0]) - shifted[rows, labels])) * scale
    grad = exp / sums
    grad[rows, labels] -= 1
    grad *= scale
    return loss, grad.astype(logits.dtype, copy=False)


def evaluate_shard(model, x, y, rank, world, allreduce):
    """``(accuracy, mean loss)`` over ``(x, y)``, each of ``world`` ranks scoring a contiguous
    shard: the correct count and the loss are summed with ``allreduce(array, "sum")``."""
    start, stop = (len(x) * rank) // world, (len(x) * (rank + 1)) // world
    logits = model.forward(x[start:stop])
    loss, _ = softmax_cross_entropy(logits, y[start:stop])
    correct = float(np.sum(np.argmax(logits, axis=1) == y[start:stop]))
    total = allreduce(np.array([correct, loss]), "sum")
    return total[0] / len(x), total[1] / len(x)
