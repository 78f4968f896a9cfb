"""Which samples each rank uses at each step: a pure function of ``(seed, epoch, step)``, with
a global order that does not depend on the rank count."""
import numpy as np

from ..core.schedule import chunk_bounds

__all__ = ["DistributedSampler"]


class DistributedSampler:
    """Per-rank sample indices for each step of each epoch.

    Global order: epoch ``e`` visits ``np.random.default_rng([seed, e]).permutation(n)``
    (``arange(n)`` with ``shuffle=False``), a pure function of ``(seed, epoch)``, identical on
    every rank and for every rank count. Step ``s`` of an epoch is the global batch
    ``order[s*B:(s+1)*B]``.

    Split: rank ``r`` takes the contiguous slice ``chunk_bounds(len(batch), size)[r]`` of each
    global batch: the first ``len(batch) % size`` ranks get one sample more, the same rule the
    allreduce uses for chunks. Concatenating the slices in rank order gives the global batch
    back, so N ranks see exactly the samples of one rank's batch (see the package docstring
    for why the loss must be scaled by the global batch size).

    Tail rule, when ``n % B != 0``:

    - ``drop_last=False`` (default): the last step of an epoch is a smaller global batch of the
      ``n % B`` remaining samples, split by the same rule. If it holds fewer samples than there
      are ranks, some ranks get none; they still take part in the allreduce (with zero
      gradients), so no rank waits on another.
    - ``drop_last=True``: those samples are skipped for this epoch (the next epoch's shuffle
      puts other samples at the end); every step has exactly ``B`` samples.

    Use :meth:`global_batch_size` as the loss divisor. No MPI here: ``rank`` and ``size`` are
    given, so the sampler can be checked for every rank in one process.
    """

    def __init__(self, num_samples, batch_size, *, rank, size, seed=0, shuffle=True,
                 drop_last=False):
        num_samples, batch_size, rank, size = map(int, (num_samples, batch_size, rank, size))
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"DistributedSampler needs num_samples >= 1 and batch_size >= 1, "
                             f"got num_samples={num_samples}, batch_size={batch_size}")
        if not 0 <= rank < size:
            raise ValueError(f"DistributedSampler needs 0 <= rank < size, got rank={rank}, "
                             f"size={size}")
        if int(seed) < 0:
            raise ValueError(f"DistributedSampler needs seed >= 0 (numpy seeds), got {seed}")
        if drop_last and num_samples < batch_size:
            raise ValueError(f"drop_last=True with {num_samples} samples and batch size "
                             f"{batch_size} leaves no step in an epoch")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.size = size
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self._order_epoch = None
        self._order = None

    def __len__(self):
        """Steps per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def order(self, epoch):
        """The global visiting order of epoch ``epoch`` (an int64 permutation of ``range(n)``)."""
        epoch = int(epoch)
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if self._order_epoch != epoch:
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, epoch]).permutation(
                    self.num_samples)
            else:
                self._order = np.arange(self.num_samples)
            self._order_epoch = epoch
        return self._order

    def _check_step(self, step):
        step = int(step)
        if not 0 <= step < len(self):
            raise IndexError(f"step must be in [0, {len(self)}) (steps per epoch), got {step}")
        return step

    def global_batch(self, epoch, step):
        """Indices of the whole global batch of ``step`` in ``epoch`` (all ranks together)."""
        step = self._check_step(step)
        return self.order(epoch)[step * self.batch_size:(step + 1) * self.batch_size]

    def global_batch_size(self, step):
        """Samples in the global batch of ``step``: ``B``, or less for a short last batch."""
        step = self._check_step(step)
        return min(self.batch_size, self.num_samples - step * self.batch_size)

    def local_batch(self, epoch, step):
        """This rank's indices for ``step`` in ``epoch`` (possibly empty in a short last batch)."""
        batch = self.global_batch(epoch, step)
        start, stop = chunk_bounds(len(batch), self.size)[self.rank]
        return batch[start:stop]

    def batches(self, epoch, start_step=0):
        """Yield ``(step, local_indices, global_batch_size)`` from ``start_step`` to the epoch's
        end; ``start_step > 0`` resumes in the middle of an epoch."""
        for step in range(int(start_step), len(self)):
            yield step, self.local_batch(epoch, step), self.global_batch_size(step)

    def steps(self, total_steps):
        """Yield ``(step, local_indices, global_batch_size)`` for ``total_steps`` steps,
        counted across epochs 0, 1, ... (each epoch shuffled anew, as :meth:`batches`)."""
        step = epoch = 0
        while step < total_steps:
            for _, idx, batch_size in self.batches(epoch):
                if step == total_steps:
                    return
                yield step, idx, batch_size
                step += 1
            epoch += 1
