"""horovod.torch's ``DistributedOptimizer``: gradients are reduced while backward runs.

    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    loss.backward()       # each gradient starts its allreduce as soon as it is accumulated
    optimizer.step()      # waits for them, then the wrapped optimizer's step

Each parameter gets a post-accumulate-grad hook. After ``backward_passes_per_step``
backward passes it hands the gradient to the background engine (``rr.allreduce_async``,
named after the parameter, so ranks may finish their gradients in any order); the engine
fuses the gradients that arrive within one cycle into few messages. ``step()`` (or
``synchronize()``) submits any gradient whose hook did not fire (an unused parameter gets a
zero gradient, as in Horovod, so every rank submits the same names), waits for all of them
and writes the results back into ``p.grad``.

Averaging: ``op=Average`` is ringreduce's ``avg`` (sum, then divide by the rank count);
with ``gradient_predivide_factor=f`` the gradient is divided by f before the sum and
multiplied by f / size after it, as Horovod does. ``compression=Compression.fp16`` or
``.bf16``: float32 gradients take ringreduce's wire compression, others the cast
(``compression.py``).
"""
import contextlib
import warnings

import torch

from ..engine.api import allreduce_async as _allreduce_async
from ..engine.api import init as _init
from .compression import Compression, split
from .horovod import Average, Sum, _check_process_set, op_of, size
from .tensors import view


class _DistributedOptimizer(torch.optim.Optimizer):
    def __init__(self, params, named_parameters, compression, backward_passes_per_step, op,
                 gradient_predivide_factor, sparse_as_dense, original):
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
        self._handles = {}
        self._synchronized = False
        self._should_synchronize = True
        _init()  # collective: the engine's channel exists before the first hook fires
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
        if p in self._handles:
            raise AssertionError(
                f"the gradient of {self._names[p]!r} was computed more than "
                f"backward_passes_per_step={self.backward_passes_per_step} times before "
                "step(); raise backward_passes_per_step to accumulate locally")
        self._delay[p] -= 1
        if self._delay[p] == 0:
            self._handles[p] = self._submit(p)

    def _submit(self, p):
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        if p.grad.layout != torch.strided:
            if not self._sparse_as_dense:
                raise TypeError(f"the gradient of {self._names[p]!r} is sparse; pass "
                                "sparse_as_dense=True to reduce it as a dense tensor")
            p.grad = p.grad.to_dense()
        grad = p.grad.detach()
        rop = "avg" if self._op == Average and self._predivide == 1.0 else "sum"
        wire, compression = split(self._compression, grad, rop)
        x, ctx = compression.compress(grad)
        if self._op == Average and self._predivide != 1.0:
            x = x / self._predivide  # a copy: the gradient itself is rewritten at the end
        if not x.is_contiguous():
            x = x.contiguous()
        v = view(x)
        handle = _allreduce_async(v, rop, name=self._names[p], out=v, compression=wire)
        return handle, x, ctx, compression

    # -- step ------------------------------------------------------------------------------
    def synchronize(self):
        """Wait for every gradient's allreduce (submitting the ones whose hook did not
        fire) and write the results into ``p.grad``."""
        for p in self._requires_update:
            if p not in self._handles:
                self._handles[p] = self._submit(p)
        post = self._predivide / size() if self._op == Average and self._predivide != 1.0 else 1.0
        try:
            for p, (handle, x, ctx, compression) in self._handles.items():
                handle.wait()
                result = compression.decompress(x, ctx)
                if post != 1.0:
                    result = result * post
                if result.data_ptr() != p.grad.data_ptr():
                    p.grad.copy_(result)
        finally:
            self._handles.clear()
            for p in self._requires_update:
                self._delay[p] = self.backward_passes_per_step
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
            if self._synchronized and not self._handles:
                warnings.warn("optimizer.step() called after optimizer.synchronize() without "
                              "skip_synchronize(): the gradients are reduced again only if a "
                              "backward pass ran in between", stacklevel=2)
            self.synchronize()
        self._synchronized = False
        return super(self.__class__, self).step(closure)

    def zero_grad(self, set_to_none=True):
        if self._handles:
            raise AssertionError("optimizer.zero_grad() was called after loss.backward() but "
                                 "before optimizer.step() or optimizer.synchronize(): the "
                                 "gradients are still being reduced")
        return super(self.__class__, self).zero_grad(set_to_none=set_to_none)


def DistributedOptimizer(optimizer, named_parameters=None, compression=Compression.none,
                         backward_passes_per_step=1, op=Average, gradient_predivide_factor=1.0,
                         num_groups=0, groups=None, sparse_as_dense=False, process_set=None):
    """Wrap ``optimizer`` so that its gradients are averaged over all ranks during backward
    (module docstring). Returns an optimizer of the same class (a subclass made on the fly,
    as Horovod does). ``num_groups`` and ``groups`` are accepted for compatibility; fusion is
    the engine's (tensors that are ready within one cycle travel together)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"DistributedOptimizer wraps a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    _check_process_set(process_set)
    cls = type(optimizer.__class__.__name__, (optimizer.__class__,),
               dict(_DistributedOptimizer.__dict__))
    return cls(optimizer.param_groups, named_parameters, compression, backward_passes_per_step,
               op, gradient_predivide_factor, sparse_as_dense, optimizer)
