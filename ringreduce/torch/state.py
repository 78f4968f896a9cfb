"""Starting every rank from the same state, as horovod.torch does it:
:func:`broadcast_parameters` (a model's parameters or state_dict) and
:func:`broadcast_optimizer_state` (an optimizer's state and hyper-parameters).

Tensors travel packed: one flat buffer per (dtype, device), one ``rr.broadcast`` each, so a
ResNet's ~120 tensors cost one or two tree broadcasts rather than 120 header passes. Ranks
whose tensors differ in number, shapes or dtypes get a ``MismatchError`` on every rank from
the broadcast's header.
"""
import torch

from ..collectives.moves import broadcast as _broadcast
from .horovod import broadcast_object, rank
from .tensors import check_tensor, flat_view


def _items(params):
    if isinstance(params, dict):
        return sorted(params.items(), key=lambda kv: str(kv[0]))
    try:
        items = list(params)
    except TypeError:
        raise TypeError(f"broadcast_parameters takes a dict (state_dict()), or a list of "
                        f"tensors or (name, tensor) pairs (named_parameters()), got "
                        f"{type(params).__name__}") from None
    return [p if isinstance(p, tuple) else (None, p) for p in items]


def broadcast_tensors(tensors, root_rank):
    """Overwrite every tensor of the list with the root's, in place (packed per dtype)."""
    groups = {}
    for i, t in enumerate(tensors):
        check_tensor(t, f"tensor {i}")
        groups.setdefault((t.dtype, t.device), []).append(t)
    for (dtype, device), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
        with torch.no_grad():
            flat = torch.cat([t.detach().reshape(-1) for t in group]) if len(group) > 1 else (
                group[0].detach().reshape(-1).clone())
            v = flat_view(flat)
            _broadcast(v, root_rank, out=v)
            offset = 0
            for t in group:
                n = t.numel()
                t.copy_(flat[offset:offset + n].view(t.shape))
                offset += n


def broadcast_parameters(params, root_rank=0):
    """Overwrite ``params`` (``model.state_dict()``, ``model.named_parameters()`` or a list
    of tensors) on every rank with rank ``root_rank``'s values, in place."""
    items = _items(params)
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"broadcast_parameters: {name or 'an entry'} is a "
                            f"{type(t).__name__}, expected a tensor")
    broadcast_tensors([t for _, t in items], root_rank)


def _skeleton(value, tensors):
    """``value`` with each tensor replaced by a placeholder (shape, dtype), appended to
    ``tensors``."""
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return ("__tensor__", tuple(value.shape), str(value.dtype).replace("torch.", ""))
    if isinstance(value, dict):
        return {k: _skeleton(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_skeleton(v, tensors) for v in value)
    return value


def _fill(value, tensors):
    if isinstance(value, tuple) and len(value) == 3 and value[0] == "__tensor__":
        t = torch.zeros(value[1], dtype=getattr(torch, value[2]))
        tensors.append(t)
        return t
    if isinstance(value, dict):
        return {k: _fill(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_fill(v, tensors) for v in value)
    return value


def broadcast_optimizer_state(optimizer, root_rank=0):
    """Give every rank rank ``root_rank``'s optimizer state and hyper-parameters (the
    learning rate, momentum buffers, Adam's moments and step), whatever state the other
    ranks had: the root's layout travels first (pickled), then its tensors."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"broadcast_optimizer_state takes a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    mine = []
    skeleton = None
    if rank() == root_rank:
        skeleton = _skeleton(optimizer.state_dict(), mine)
        mine = [t.detach().cpu() for t in mine]
    skeleton = broadcast_object(skeleton, root_rank)
    if rank() == root_rank:
        broadcast_tensors(mine, root_rank)
        return
    tensors = []
    state = _fill(skeleton, tensors)
    broadcast_tensors(tensors, root_rank)
    optimizer.load_state_dict(state)
