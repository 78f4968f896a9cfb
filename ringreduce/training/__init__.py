"""Data-parallel training on top of ringreduce: the pieces any training loop needs.

- :func:`broadcast_parameters` (``sync.py``): every rank starts from the root's weights.
- :class:`DistributedSampler` (``sampler.py``): which samples each rank uses at each step, a
  pure function of ``(seed, epoch, step)``, with a global order that does not depend on the
  rank count.
- :class:`GradSync` (``sync.py``): gradient synchronisation in the spirit of PyTorch DDP:
  gradients live in flat per-bucket buffers, each bucket's allreduce starts as soon as its last
  gradient is ready, and :meth:`GradSync.wait` is called before the optimizer step.
- :class:`SGD`, :class:`Adam` (``optim.py``): optimizers that call the Numba kernels in
  ``ringreduce.kernels.optim`` (CPU ``@njit`` kernels, CUDA twins for device arrays).
- :func:`save_checkpoint`, :func:`load_checkpoint` (``checkpoint.py``): atomic ``.npz``
  checkpoints that are read without unpickling anything.

How N ranks compute exactly the global-batch gradient
-----------------------------------------------------
Take a global batch of ``B`` samples and loss ``L = (1/B) * sum_j loss_j``. The sampler gives
rank ``r`` a contiguous slice of the batch (the first ``B % p`` ranks get one sample more, the
chunk rule of the allreduce). Each rank computes the gradient of its *partial sum*
``(1/B) * sum_{j in slice r} loss_j`` (loss scaled by ``1/B``, the global batch size, not by its
own slice size) and the gradients are reduced with ``op="sum"``. The sum over ranks of the
partial sums is ``L`` itself, so the result is the gradient one rank would get from the whole
batch, whatever the slice sizes, including a last batch smaller than the rank count where some
ranks hold no sample at all. Dividing by the rank count after the reduction (what DDP does)
is only right when every slice has the same size. The remaining difference from one rank is
the order of floating-point additions (about 1e-16 relative per step in float64).

Randomness and checkpoints
--------------------------
Nothing here keeps a random generator between steps: the sampler draws epoch ``e``'s order from
``np.random.default_rng([seed, e])`` and the example model draws its initial weights from
``seed``. A checkpoint therefore needs only the integers ``seed``, ``epoch`` and ``step`` next
to the parameters and optimizer state to resume bit for bit; there is no generator state to
save.
"""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .optim import SGD, Adam, NonFiniteGradientError
from .sampler import DistributedSampler
from .sync import GradSync, broadcast_parameters

__all__ = [
    "broadcast_parameters",
    "DistributedSampler",
    "GradSync",
    "NonFiniteGradientError",
    "SGD",
    "Adam",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
]
