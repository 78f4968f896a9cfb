"""A DDP communication hook that sends the gradient buckets through ringreduce, for users who
keep gloo (or NCCL) as their process group:

    ddp = DistributedDataParallel(model)          # any process group
    ddp.register_comm_hook(None, ringreduce.torch.allreduce_hook)

Each bucket is averaged as DDP's default hook averages it (divided by the rank count, then
summed, so results match DDP's to the bit wherever the sums do), by the background engine
(``rr.allreduce_async``): it runs while backward goes on, and buckets that become ready
within one engine cycle travel fused. ``state`` is None for MPI_COMM_WORLD or an mpi4py
communicator; the ranks of that communicator must be the DDP group's.
"""
import torch
from mpi4py import MPI

from ..engine.api import allreduce_async
from .tensors import flat_view
from .work import COMPLETER


def allreduce_hook(state, bucket):
    """Average ``bucket.buffer()`` over the ranks of ``state`` (None: COMM_WORLD); returns
    a ``torch.futures.Future`` holding the averaged buffer."""
    if state is not None and not isinstance(state, MPI.Comm):
        raise TypeError(f"allreduce_hook's state must be None (MPI_COMM_WORLD) or an mpi4py "
                        f"communicator, got {type(state).__name__}")
    comm = MPI.COMM_WORLD if state is None else state
    buf = bucket.buffer()
    buf.div_(comm.Get_size())
    x = flat_view(buf, "the gradient bucket")
    # Unnamed: matched by submission order, which is DDP's bucket order on every rank.
    handle = allreduce_async(x, "sum", comm=comm, out=x)
    future = torch.futures.Future()
    COMPLETER.watch(handle, future, lambda: buf)
    return future
