"""horovod.torch's ``DistributedOptimizer``: gradients are reduced while backward runs.

    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    loss.backward()       # each gradient starts its allreduce as soon as it is accumulated
    optimizer.step()      # waits for them, then the wrapped optimizer's step

Each parameter gets a post-accumulate-grad hook. After ``backward_passes_per_step``
backward passes it hands the gradient to its bucket (``buckets.py``): the parameters are cut
into buckets of about 25 MiB in the reverse of their order (or by Horovod's ``groups`` /
``num_groups``), and each bucket is reduced as one ``grouped_allreduce`` on the optimizer's
thread as soon as all of its gradients are in, in bucket order, so ranks may finish their
gradients in any order. ``step()`` (or ``synchronize()``) hands in any gradient whose hook
did not fire (an unused parameter gets a zero gradient, as in Horovod, so every rank reduces
the same tensors), waits for every bucket and writes the results back into ``p.grad``.

Averaging: ``op=Average`` is ringreduce's ``avg`` (sum, then divide by the rank count);
with ``gradient_predivide_factor=f`` the gradient is divided by f before the sum and
multiplied by f / size after it, as Horovod does. ``compression=Compression.fp16`` or
``.bf16``: float32 gradients take ringreduce's wire compression, others the cast
(``compression.py``).
"""
import contextlib
import warnings

import torch

from . import buckets as _buckets
from .compression import Compression
from .horovod import Average, Sum, _check_process_set, op_of, size


class _DistributedOptimizer(torch.optim.Optimizer):
    def __init__(self, params, named_parameters, compression, backward_passes_per_step, op,
                 gradient_predivide_factor, sparse_as_dense, original, num_groups, groups):
        super(self.__class__, self).__init__(params)
        if original.state:
            self.load_state_dict(original.state_dict())
        self._compression = compression
        self._sparse_as_dense = sparse_as_dense
        if not (isinstance(backward_passes_per_step, int) and backward_passes_per_step >= 1):
            raise ValueError(f"backward_passes_per_step must be an int >= 1, got "
                             f"{backward_passes_per_step!r}")
        self.backward_passes_per_step = backward_passes_per_step
        if op not in (Average, Sum):
            op_of(op, what="DistributedOptimizer")  # names Adasum and unknown ops
            raise ValueError(f"DistributedOptimizer: op must be Average or Sum, got {op!r}")
        if gradient_predivide_factor != 1.0 and op != Average:
            raise ValueError("gradient_predivide_factor needs op=Average, got op=Sum")
        self._op, self._predivide = op, float(gradient_predivide_factor)
        all_params = [p for g in self.param_groups for p in g["params"]]
        self._names = self._parameter_names(named_parameters, all_params)
        self._requires_update = [p for p in all_params if p.requires_grad]
        self._delay = {p: backward_passes_per_step for p in self._requires_update}
        rop = "avg" if op == Average and self._predivide == 1.0 else "sum"
        self._buckets = _buckets.Buckets(  # collective: duplicates the world communicator
            _buckets.plan(self._requires_update, groups, num_groups), rop)
        self._synchronized = False
        self._should_synchronize = True
        self._hooks = [p.register_post_accumulate_grad_hook(self._hook)
                       for p in self._requires_update]

    @staticmethod
    def _parameter_names(named_parameters, all_params):
        if named_parameters is None:
            return {p: f"grad.{i}" for i, p in enumerate(all_params)}
        named = list(named_parameters)
        if any(not (isinstance(x, tuple) and len(x) == 2) for x in named):
            raise ValueError("named_parameters must be (name, parameter) pairs, as "
                             "model.named_parameters() gives")
        names = [n for n, _ in named]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"named_parameters has duplicate names {dup}; every parameter "
                             "needs a name of its own")
        by_param = {p: f"grad.{n}" for n, p in named}
        unnamed = [i for i, p in enumerate(all_params) if p not in by_param]
        if unnamed:
            raise ValueError(f"named_parameters was given, but the optimizer's parameters "
                             f"{unnamed} (by position in its param_groups) are not in it")
        return by_param

    # -- during backward -------------------------------------------------------------------
    def _hook(self, p):
        if self._buckets.has(p):
            raise AssertionError(
                f"the gradient of {self._names[p]!r} was computed more than "
                f"backward_passes_per_step={self.backward_passes_per_step} times before "
                "step(); raise backward_passes_per_step to accumulate locally")
        self._delay[p] -= 1
        if self._delay[p] == 0:
            self._submit(p)

    def _submit(self, p):
        """Hand ``p``'s gradient to its bucket; a local failure goes to the bucket too (its
        collective raises it on every rank), then raises here."""
        try:
            self._hand_in(p)
        except Exception as exc:
            self._buckets.fail(p, exc)
            raise

    def _hand_in(self, p):
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        if p.grad.layout != torch.strided:
            if not self._sparse_as_dense:
                raise TypeError(f"the gradient of {self._names[p]!r} is sparse; pass "
                                "sparse_as_dense=True to reduce it as a dense tensor")
            p.grad = p.grad.to_dense()
        # (a predivide factor other than 1 needs op=Average: checked in __init__)
        self._buckets.add(p, p.grad.detach(), self._compression, self._predivide)

    # -- step ------------------------------------------------------------------------------
    def synchronize(self):
        """Wait for every gradient's allreduce (handing in the ones whose hook did not
        fire) and write the results into ``p.grad``."""
        error = None
        for p in self._requires_update:
            if not self._buckets.has(p):
                try:
                    self._submit(p)
                except Exception as exc:  # noqa: BLE001 - its bucket raises it everywhere
                    error = error or exc
        post = self._predivide / size() if self._op == Average and self._predivide != 1.0 else 1.0
        try:
            self._buckets.finish(post)
        finally:
            for p in self._requires_update:
                self._delay[p] = self.backward_passes_per_step
        if error is not None:
            raise error
        self._synchronized = True

    @contextlib.contextmanager
    def skip_synchronize(self):
        """Inside, ``step()`` does not synchronize: for calling ``synchronize()`` yourself
        first (gradient clipping, AMP's ``unscale_``)."""
        self._should_synchronize = False
        try:
            yield
        finally:
            self._should_synchronize = True

    def step(self, closure=None):
        if self._should_synchronize:
            if self._synchronized and not self._buckets.pending():
                warnings.warn("optimizer.step() called after optimizer.synchronize() without "
                              "skip_synchronize(): the gradients are reduced again only if a "
                              "backward pass ran in between", stacklevel=2)
            self.synchronize()
        self._synchronized = False
        return super(self.__class__, self).step(closure)

    def zero_grad(self, set_to_none=True):
        if self._buckets.pending():
            raise AssertionError("optimizer.zero_grad() was called after loss.backward() but "
                                 "before optimizer.step() or optimizer.synchronize(): the "
                                 "gradients are still being reduced")
        return super(self.__class__, self).zero_grad(set_to_none=set_to_none)


def DistributedOptimizer(optimizer, named_parameters=None, compression=Compression.none,
                         backward_passes_per_step=1, op=Average, gradient_predivide_factor=1.0,
                         num_groups=0, groups=None, sparse_as_dense=False, process_set=None):
    """Wrap ``optimizer`` so that its gradients are averaged over all ranks during backward
    (module docstring). Returns an optimizer of the same class (a subclass made on the fly,
    as Horovod does). ``groups`` (lists of parameters reduced together, the others one by
    one) or ``num_groups`` (that many buckets of consecutive parameters) replace the default
    buckets of about 25 MiB, as in Horovod."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"DistributedOptimizer wraps a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    _check_process_set(process_set)
    cls = type(optimizer.__class__.__name__, (optimizer.__class__,),
               dict(_DistributedOptimizer.__dict__))
    return cls(optimizer.param_groups, named_parameters, compression, backward_passes_per_step,
               op, gradient_predivide_factor, sparse_as_dense, optimizer, num_groups, groups)
