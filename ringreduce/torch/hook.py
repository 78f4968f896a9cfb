"""DDP communication hooks that send the gradient buckets through ringreduce, for users who
keep gloo (or NCCL) as their process group:

    ddp = DistributedDataParallel(model)          # any process group
    ddp.register_comm_hook(None, ringreduce.torch.allreduce_hook)
    # or, half the bytes on the wire (float32 models):
    ddp.register_comm_hook(None, ringreduce.torch.bf16_compress_hook)

Each bucket is averaged as DDP's default hook averages it (divided by the rank count, then
summed, so results match DDP's to the bit wherever the sums do), by the background engine
(``rr.allreduce_async``): it runs while backward goes on, and buckets that become ready
within one engine cycle travel fused. ``state`` is None for MPI_COMM_WORLD or an mpi4py
communicator; the ranks of that communicator must be the DDP group's.

``bf16_compress_hook`` and ``fp16_compress_hook`` stand for torch's hooks of the same names
(``ddp_comm_hooks.default_hooks``): torch casts the bucket to 16 bits, divides it there and
reduces the 16-bit copy; here the bucket stays float32, is divided in float32, and
ringreduce's wire compression (``collectives/compress.py``) rounds it once to 16 bits, adds
each pair in float32 and rounds once per step, and widens the result straight into the bucket.
fp16 is scaled by a power of two the ranks agree on, so that no partial sum overflows and
small gradients stay out of fp16's subnormals. A bucket already in the wire's dtype (a bfloat16
model under ``bf16_compress_hook``) is reduced as it is; any other dtype is a ``TypeError``.
"""
import torch
from mpi4py import MPI

from ..engine.api import allreduce_async
from .tensors import flat_view
from .work import COMPLETER

# compression -> the bucket dtype that already travels as that wire type
_WIRE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _average(state, bucket, compression, hook):
    """The body of every hook here: average ``bucket.buffer()`` over ``state``'s ranks,
    through ``compression`` (None, "bf16" or "fp16")."""
    if state is not None and not isinstance(state, MPI.Comm):
        raise TypeError(f"{hook}'s state must be None (MPI_COMM_WORLD) or an mpi4py "
                        f"communicator, got {type(state).__name__}")
    comm = MPI.COMM_WORLD if state is None else state
    buf = bucket.buffer()
    if compression is not None:
        wire = _WIRE_DTYPES[compression]
        if buf.dtype == wire:
            compression = None  # 16 bits already
        elif buf.dtype != torch.float32:
            raise TypeError(f"{hook} compresses float32 gradient buckets (and reduces {wire} "
                            f"ones as they are), got a {buf.dtype} bucket; register "
                            "allreduce_hook for it")
    buf.div_(comm.Get_size())
    x = flat_view(buf, "the gradient bucket")
    # Unnamed: matched by submission order, which is DDP's bucket order on every rank.
    handle = allreduce_async(x, "sum", comm=comm, out=x, compression=compression)
    future = torch.futures.Future()
    COMPLETER.watch(handle, future, lambda: buf)
    return future


def allreduce_hook(state, bucket):
    """Average ``bucket.buffer()`` over the ranks of ``state`` (None: COMM_WORLD); returns
    a ``torch.futures.Future`` holding the averaged buffer."""
    return _average(state, bucket, None, "allreduce_hook")


def bf16_compress_hook(state, bucket):
    """:func:`allreduce_hook` with a float32 bucket sent as bfloat16 (module docstring)."""
    return _average(state, bucket, "bf16", "bf16_compress_hook")


def fp16_compress_hook(state, bucket):
    """:func:`allreduce_hook` with a float32 bucket sent as float16, scaled by a power of
    two the ranks agree on so that no sum overflows (module docstring)."""
    return _average(state, bucket, "fp16", "fp16_compress_hook")
