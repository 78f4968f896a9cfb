"""horovod.torch's functions over ringreduce, so that ``import ringreduce.torch as hvd`` is
the whole migration of a common Horovod script (``examples/pytorch/pytorch_mnist.py`` runs
with that one line changed).

Every call here is collective over MPI_COMM_WORLD, as Horovod's are over its global process
set. Synchronous calls are ringreduce's synchronous collectives; ``allreduce_async`` goes to
the background engine (matched across ranks by ``name``, fused per cycle) and
``synchronize`` waits for it. Differences from Horovod, each an error rather than a silent
change: ``Adasum`` and process sets other than the global one are not served, and ``Average``
of an integer tensor is a ``TypeError`` (Horovod truncates). One improvement: with
``compression=Compression.fp16`` or ``.bf16`` a float32 tensor is not cast but sent through
ringreduce's wire compression (``compression.py``).
"""
import pickle

import numpy as np
import torch
from mpi4py import MPI

from ..collectives.allreduce import allreduce as _allreduce
from ..collectives.grouped import grouped_allreduce as _grouped
from ..collectives.moves import allgather as _allgather
from ..collectives.moves import broadcast as _broadcast
from ..collectives.moves import reduce_scatter as _reduce_scatter
from ..engine.api import allreduce_async as _allreduce_async
from ..engine.api import init as _init
from ..transport import topology
from .compression import Compression, split
from .tensors import to_tensor, view
from .work import warm_up

# Horovod's op constants (the same values as horovod.torch's).
Average, Sum, Adasum, Min, Max, Product = 0, 1, 2, 3, 4, 5
_OP_NAMES = {Average: "avg", Sum: "sum", Min: "min", Max: "max", Product: "prod"}
_SHOWN = {Average: "Average", Sum: "Sum", Adasum: "Adasum", Min: "Min", Max: "Max",
          Product: "Product"}
_initialized = False


# -- set-up and where this process sits ---------------------------------------------------
def init(comm=None, process_sets=None):
    """Collective set-up (``rr.init``): the node split for ``local_rank`` and the engine.
    ``comm``: None or MPI_COMM_WORLD (other communicators are not served by this API)."""
    global _initialized
    if comm not in (None, MPI.COMM_WORLD) or process_sets:
        raise ValueError("ringreduce.torch.init serves MPI_COMM_WORLD only (no comm= sub-"
                         f"communicators or process sets), got comm={comm!r}, "
                         f"process_sets={process_sets!r}")
    warm_up()
    _init()
    _initialized = True


def is_initialized():
    return _initialized


def shutdown():
    """Nothing to release early: the engine stops when the process exits."""


def rank():
    return topology.rank()


def size():
    return topology.size()


def local_rank():
    return topology.local_rank()


def local_size():
    return topology.local_size()


def mpi_threads_supported():
    return MPI.Query_thread() == MPI.THREAD_MULTIPLE


def mpi_built():
    return True


def mpi_enabled():
    return True


def gloo_built():
    return False


def gloo_enabled():
    return False


def nccl_built():
    return False


def ddl_built():
    return False


def ccl_built():
    return False


def rocm_built():
    return False


def cuda_built():
    """Whether CUDA tensors can be reduced here (numba-cuda and a GPU, or its simulator)."""
    try:
        from ..memory.cuda import require_cuda
        require_cuda()
    except Exception:  # noqa: BLE001 - the question is only whether it works
        return False
    return True


# -- allreduce ----------------------------------------------------------------------------
def op_of(op, average=None, what="allreduce"):
    """ringreduce's op name for Horovod's ``op`` / deprecated ``average`` arguments."""
    if average is not None:
        if op is not None:
            raise ValueError(f"{what}: give op or the deprecated average, not both")
        op = Average if average else Sum
    op = Average if op is None else op
    if op not in _OP_NAMES:
        shown = _SHOWN.get(op, repr(op))
        raise ValueError(f"{what}: op must be Average, Sum, Min, Max or Product, got {shown}"
                         + (" (Adasum is not served by ringreduce)" if op == Adasum else ""))
    return _OP_NAMES[op]


def _check_name(name):
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}")


def _check_process_set(process_set):
    if process_set is not None and process_set is not global_process_set:
        raise ValueError("ringreduce.torch serves the global process set only")


global_process_set = object()


class Handle:
    """What ``*_async`` returns: pass it to :func:`synchronize` or :func:`poll`."""

    def __init__(self, engine_handle, finish):
        self._h, self._finish, self._result = engine_handle, finish, None
        self._done = False

    def poll(self):
        return self._h is None or self._h.done()

    def wait(self):
        if not self._done:
            if self._h is not None:
                self._h.wait()
            self._result, self._done = self._finish(), True
        return self._result


def _prepare(tensor, compression, prescale_factor):
    x, ctx = compression.compress(tensor)
    if prescale_factor != 1.0:
        x = x * prescale_factor
    return x, ctx


def _finish(result, ctx, compression, postscale_factor, into):
    result = compression.decompress(result, ctx)
    if postscale_factor != 1.0:
        result.mul_(postscale_factor)
    if into is not None:
        if result.data_ptr() != into.data_ptr():
            into.copy_(result)
        return into
    return result


def allreduce_async(tensor, average=None, name=None, op=None, prescale_factor=1.0,
                    postscale_factor=1.0, process_set=None, compression=Compression.none,
                    _into=None):
    """Start reducing ``tensor`` over all ranks in the background; returns a handle for
    :func:`synchronize`. ``name`` matches the tensor across ranks (unnamed tensors match in
    submission order)."""
    _check_name(name)
    _check_process_set(process_set)
    rop = op_of(op, average)
    wire, compression = split(compression, tensor, rop)
    x, ctx = _prepare(tensor.detach(), compression, prescale_factor)
    if _into is not None and x.data_ptr() == _into.data_ptr() and x.is_contiguous():
        out = x
    else:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    h = _allreduce_async(view(x), rop, name=name, out=view(out), compression=wire)
    return Handle(h, lambda: _finish(out, ctx, compression, postscale_factor, _into))


def allreduce_async_(tensor, average=None, name=None, op=None, prescale_factor=1.0,
                     postscale_factor=1.0, process_set=None):
    """:func:`allreduce_async` into ``tensor`` itself."""
    return allreduce_async(tensor, average, name, op, prescale_factor, postscale_factor,
                           process_set, _into=tensor)


def synchronize(handle):
    """Wait for an ``*_async`` call; returns its result (or raises the error every rank
    got)."""
    if not isinstance(handle, Handle):
        raise TypeError(f"synchronize takes a handle from an *_async call, got "
                        f"{type(handle).__name__}")
    return handle.wait()


def poll(handle):
    """True once ``handle``'s result is in; never blocks."""
    return handle.poll()


def allreduce(tensor, average=None, name=None, compression=Compression.none, op=None,
              prescale_factor=1.0, postscale_factor=1.0, process_set=None):
    """The reduction of ``tensor`` over all ranks, a new tensor (default op Average)."""
    _check_name(name)
    _check_process_set(process_set)
    rop = op_of(op, average)
    wire, compression = split(compression, tensor, rop)
    x, ctx = _prepare(tensor.detach(), compression, prescale_factor)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    _allreduce(view(x), rop, out=view(out), compression=wire)
    return _finish(out, ctx, compression, postscale_factor, None)


def allreduce_(tensor, average=None, name=None, op=None, prescale_factor=1.0,
               postscale_factor=1.0, process_set=None):
    """:func:`allreduce` into ``tensor`` itself; returns ``tensor``."""
    _check_name(name)
    _check_process_set(process_set)
    rop = op_of(op, average)
    x = tensor.detach()
    if prescale_factor != 1.0:
        x.mul_(prescale_factor)
    v = view(x)
    _allreduce(v, rop, out=v)
    if postscale_factor != 1.0:
        x.mul_(postscale_factor)
    return tensor


def grouped_allreduce(tensors, average=None, name=None, op=None, process_set=None):
    """The reductions of a list of tensors, fused into few messages; new tensors."""
    outs = [t.detach().clone(memory_format=torch.contiguous_format) for t in tensors]
    return grouped_allreduce_(outs, average, name, op, process_set)


def grouped_allreduce_(tensors, average=None, name=None, op=None, process_set=None):
    """:func:`grouped_allreduce` into the tensors themselves."""
    _check_name(name)
    _check_process_set(process_set)
    _grouped([view(t) for t in tensors], op_of(op, average), inplace=True)
    return tensors


# -- gathers, broadcasts, scatters --------------------------------------------------------
def allgather(tensor, name=None, process_set=None):
    """Every rank's ``tensor`` concatenated along the first dimension, whose length may
    differ between ranks (the other dimensions must agree)."""
    _check_name(name)
    _check_process_set(process_set)
    x = tensor.detach()
    if x.dim() == 0:
        x = x.reshape(1)
    x = x.contiguous()
    p = size()
    counts = _allgather(np.array([x.shape[0]], np.int64))
    m = int(counts.max()) if p else 0
    if x.shape[0] < m:  # pad to the longest, gather, then drop the padding
        x = torch.cat([x, x.new_zeros((m - x.shape[0],) + tuple(x.shape[1:]))])
    out = x.new_empty((p * m,) + tuple(x.shape[1:]))
    _allgather(view(x), out=view(out))
    if (counts == m).all():
        return out
    return torch.cat([out[r * m:r * m + int(counts[r])] for r in range(p)])


def allgather_async(tensor, name=None, process_set=None):
    """:func:`allgather`, done at once; the handle gives its result."""
    result = allgather(tensor, name, process_set)
    return Handle(None, lambda: result)


def broadcast_(tensor, root_rank, name=None, process_set=None):
    """Overwrite ``tensor`` with rank ``root_rank``'s, in place; returns ``tensor``."""
    _check_name(name)
    _check_process_set(process_set)
    v = view(tensor)
    _broadcast(v, root_rank, out=v)
    return tensor


def broadcast(tensor, root_rank, name=None, process_set=None):
    """Rank ``root_rank``'s ``tensor``, as a new tensor on every rank."""
    return broadcast_(tensor.detach().clone(), root_rank, name, process_set)


def broadcast_async(tensor, root_rank, name=None, process_set=None):
    result = broadcast(tensor, root_rank, name, process_set)
    return Handle(None, lambda: result)


def broadcast_async_(tensor, root_rank, name=None, process_set=None):
    broadcast_(tensor, root_rank, name, process_set)
    return Handle(None, lambda: tensor)


def reducescatter(tensor, op=Average, name=None, process_set=None):
    """Reduce ``tensor`` over all ranks and give rank r the r-th of equal slices along the
    first dimension (which must divide by the rank count)."""
    _check_name(name)
    _check_process_set(process_set)
    x = tensor.detach().contiguous()
    out = x.new_empty((x.shape[0] // size(),) + tuple(x.shape[1:])) if x.dim() else None
    result = _reduce_scatter(view(x), op_of(op, what="reducescatter"),
                             out=None if out is None else view(out))
    return out if out is not None else to_tensor(result)


def broadcast_object(obj, root_rank=0, name=None, process_set=None):
    """Rank ``root_rank``'s ``obj`` (pickled; only unpickle what your own job sent)."""
    _check_process_set(process_set)
    data = np.frombuffer(pickle.dumps(obj), np.uint8) if rank() == root_rank else None
    n = np.array([0 if data is None else data.size], np.int64)
    _broadcast(n, root_rank, out=n)
    buf = data.copy() if data is not None else np.empty(int(n[0]), np.uint8)
    _broadcast(buf, root_rank, out=buf)
    return obj if rank() == root_rank else pickle.loads(buf.tobytes())


def allgather_object(obj, name=None, process_set=None):
    """Every rank's ``obj``, in rank order (pickled)."""
    data = np.frombuffer(pickle.dumps(obj), np.uint8)
    counts = _allgather(np.array([data.size], np.int64))
    m = int(counts.max())
    padded = np.zeros(m, np.uint8)
    padded[:data.size] = data
    everyone = _allgather(padded).reshape(len(counts), m)
    return [pickle.loads(everyone[r, :int(counts[r])].tobytes()) for r in range(len(counts))]
