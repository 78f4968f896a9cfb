"""What a training job keeps in memory to go on after losing a rank: :class:`State`.

Modelled on Horovod Elastic's ``State``: the training function changes the state in place,
calls :meth:`State.commit` every few steps (an in-memory copy, no communication), and after a
lost rank ``ringreduce.elastic.run`` calls :meth:`State.restore` (back to the last commit)
and :meth:`State.sync` (every survivor takes rank 0's state, since survivors may have
committed different steps when the failure hit in the middle of one).

What a state holds, and how each part is copied, restored and synchronised:

- ``params``, numpy arrays (a list, tuple or dict of them, or one array): commit copies
  them (``np.copyto``) into a spare set; restore copies back in place; sync is
  ``broadcast_parameters``;
- ``opt``, a ``ringreduce.training`` optimizer (SGD, Adam): commit keeps ``state_dict()``
  (copies), restore is ``load_state_dict``, sync broadcasts the state_dict's arrays and loads
  them;
- torch tensors, modules and optimizers (through ``ringreduce.torch``): commit keeps detached
  clones (a deep copy of an optimizer's ``state_dict()``), restore is ``copy_`` or
  ``load_state_dict``, sync is ``ringreduce.torch``'s ``broadcast_parameters`` or
  ``broadcast_optimizer_state``;
- ints (``epoch``, ``step``, any other keyword): commit and restore copy the values, sync
  is one small broadcast.

Arrays stay the same objects throughout (a model's own parameters keep working), and every
part is restored in place.
"""
import copy

import numpy as np

from ..errors import RingReduceError
from ..training.optim import _Optimizer
from ..training.sync import broadcast_parameters
from ..transport.comm import control_comm, detects_failures


def _is_torch(obj):
    return any(c.__module__.split(".")[0] == "torch" for c in type(obj).__mro__)


class _Arrays:
    """numpy arrays, copied into a spare set of the same shapes at each commit."""

    def __init__(self, arrays):
        self.arrays = arrays
        for i, a in enumerate(arrays):
            if not (a.flags.c_contiguous and a.flags.writeable):
                raise ValueError(f"State: params[{i}] must be a writable C-contiguous array, "
                                 f"got a {'read-only' if not a.flags.writeable else 'strided'} "
                                 f"{a.dtype}{a.shape}")
        self.saved = [np.empty_like(a) for a in arrays]

    def commit(self):
        for dst, src in zip(self.saved, self.arrays):
            np.copyto(dst, src)

    def restore(self):
        for dst, src in zip(self.arrays, self.saved):
            np.copyto(dst, src)

    def sync(self):
        broadcast_parameters(self.arrays, root=0)


class _Optim:
    """A ``ringreduce.training`` optimizer, through its state_dict."""

    def __init__(self, opt):
        self.opt = opt
        self.saved = None

    def commit(self):
        self.saved = self.opt.state_dict()  # copies of its buffers

    def restore(self):
        self.opt.load_state_dict(self.saved)  # copies in: the saved copy stays intact

    def sync(self):
        state = self.opt.state_dict()
        broadcast_parameters([np.ascontiguousarray(v) for v in state.values()], root=0)
        self.opt.load_state_dict(state)


class _Torch:
    """A torch tensor, module or optimizer (needs ``ringreduce.torch``)."""

    def __init__(self, obj, what):
        import torch
        from ..torch.state import broadcast_optimizer_state, broadcast_parameters as bcast
        self.torch, self.bcast, self.bcast_optimizer = torch, bcast, broadcast_optimizer_state
        self.obj, self.saved = obj, None
        self.kind = ("tensor" if isinstance(obj, torch.Tensor) else
                     "optimizer" if isinstance(obj, torch.optim.Optimizer) else
                     "module" if isinstance(obj, torch.nn.Module) else None)
        if self.kind is None:
            raise TypeError(f"State: {what} is a {type(obj).__name__}; of torch objects a "
                            f"State holds tensors, modules and optimizers")

    def commit(self):
        if self.kind == "tensor":
            self.saved = self.obj.detach().clone()
        elif self.kind == "module":
            self.saved = {k: v.detach().clone() for k, v in self.obj.state_dict().items()}
        else:
            self.saved = copy.deepcopy(self.obj.state_dict())

    def restore(self):
        with self.torch.no_grad():
            if self.kind == "tensor":
                self.obj.copy_(self.saved)
            elif self.kind == "module":
                self.obj.load_state_dict(self.saved)
            else:  # load_state_dict may keep the tensors it is given: give it a copy
                self.obj.load_state_dict(copy.deepcopy(self.saved))

    def sync(self):
        if self.kind == "optimizer":
            self.bcast_optimizer(self.obj, root_rank=0)
        elif self.kind == "module":
            self.bcast(self.obj.state_dict(), root_rank=0)
        else:
            self.bcast([self.obj], root_rank=0)


def _parts(params, opt):
    """The copy-restore-sync parts of a state's ``params`` and ``opt``."""
    parts = []
    if isinstance(params, dict):
        params = list(params.values())
    elif isinstance(params, np.ndarray) or _is_torch(params):
        params = [params]
    arrays = []
    for i, p in enumerate(params):
        if isinstance(p, np.ndarray):
            arrays.append(p)
        elif _is_torch(p):
            parts.append(_Torch(p, f"params[{i}]"))
        else:
            raise TypeError(f"State: params[{i}] is a {type(p).__name__}; expected numpy "
                            f"arrays (or torch tensors or modules)")
    if arrays:
        parts.insert(0, _Arrays(arrays))
    for i, o in enumerate([] if opt is None else opt if isinstance(opt, (list, tuple))
                          else [opt]):
        if isinstance(o, _Optimizer):
            parts.append(_Optim(o))
        elif _is_torch(o):
            parts.append(_Torch(o, "opt"))
        else:
            raise TypeError(f"State: opt is a {type(o).__name__}; expected a "
                            f"ringreduce.training optimizer (SGD, Adam) or a torch optimizer")
    return parts


class State:
    """The state of a training function that ``ringreduce.elastic.run`` recovers::

        state = rr.elastic.State(params=model.parameters(), opt=opt, epoch=0, step=0)

    ``params``: numpy arrays (a list, tuple or dict of them, or one), torch tensors or
    modules; ``opt``: a ``ringreduce.training`` optimizer or a torch optimizer (or a list);
    every other keyword is an int, read and set as an attribute (``state.step += 1``). The
    constructor commits, so there is always a state to go back to. ``recoveries`` lists
    what each recovery did (filled in by ``run``).
    """

    def __init__(self, params=(), opt=None, epoch=0, step=0, **ints):
        object.__setattr__(self, "_parts", _parts(params, opt))
        object.__setattr__(self, "_ints", {})
        object.__setattr__(self, "_saved_ints", {})
        object.__setattr__(self, "_callbacks", [])
        self.params, self.opt, self.recoveries = params, opt, []
        for name, value in dict(epoch=epoch, step=step, **ints).items():
            self._ints[name] = self._check_int(name, value)
        self.commit()

    @staticmethod
    def _check_int(name, value):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"State.{name} must be an int, got {type(value).__name__} "
                            f"{value!r}")
        return int(value)

    def __getattr__(self, name):  # only called for names that are not plain attributes
        ints = object.__getattribute__(self, "_ints")
        if name in ints:
            return ints[name]
        raise AttributeError(f"State has no {name!r}; its ints are {sorted(ints)}")

    def __setattr__(self, name, value):
        if name in self._ints:
            self._ints[name] = self._check_int(name, value)
        else:
            object.__setattr__(self, name, value)

    def commit(self):
        """Keep a copy of the whole state in memory: local, no communication. Each part is
        copied into its own spare, then the ints; a state interrupted here (an exception)
        keeps its previous commit of the ints it had not reached."""
        for part in self._parts:
            part.commit()
        self._saved_ints.update(self._ints)

    def restore(self):
        """Go back to the last commit, in place (local)."""
        for part in self._parts:
            part.restore()
        self._ints.update(self._saved_ints)

    @detects_failures
    def sync(self):
        """Every rank takes rank 0's state (collective over the world). Raises
        RankFailedError if a rank is lost meanwhile."""
        for part in self._parts:
            part.sync()
        got = control_comm().bcast(self._ints, root=0)
        if sorted(got) != sorted(self._ints):
            raise RingReduceError(f"State.sync: rank 0's state holds the ints {sorted(got)}, "
                                  f"this rank's {sorted(self._ints)}; every rank must make "
                                  f"the same State")
        self._ints.update(got)

    def register_reset_callbacks(self, callbacks):
        """Functions ``run`` calls, without arguments, after each recovery and before it
        calls the training function again (Horovod's name)."""
        self._callbacks.extend(callbacks)

    def on_reset(self):
        for fn in self._callbacks:
            fn()

    def __repr__(self):
        ints = ", ".join(f"{k}={v}" for k, v in self._ints.items())
        return f"State({ints}, {len(self._parts)} part(s))"
