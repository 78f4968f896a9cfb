"""ringreduce for PyTorch: a ``torch.distributed`` backend, DDP communication hooks, and
horovod.torch's API.

    mpiexec -n 4 python train.py

    import torch.distributed as dist
    import ringreduce.torch                       # registers the "ringreduce" backend
    dist.init_process_group("ringreduce")         # rank and world size from MPI
    model = torch.nn.parallel.DistributedDataParallel(model)

    # or keep gloo as the process group and send only the gradient buckets through ringreduce
    ddp.register_comm_hook(None, ringreduce.torch.allreduce_hook)  # or bf16_compress_hook

    # or, coming from Horovod, change one line
    import ringreduce.torch as hvd                # was: import horovod.torch as hvd
    hvd.init()
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())

Modules: ``backend.py`` (the process group), ``rendezvous.py`` (``init_process_group``
without ``MASTER_ADDR``), ``work.py`` (ordering, futures), ``tensors.py`` (tensors as
arrays), ``hook.py`` (the DDP hooks), ``horovod.py``, ``compression.py``, ``optimizer.py`` and
``buckets.py`` (horovod.torch; the optimizer's gradient buckets).
torch is an optional dependency: ``pip install "ringreduce[torch]"``.
"""
try:
    import torch  # noqa: F401
    import torch.distributed  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without torch installed
    raise ImportError(f'ringreduce.torch needs PyTorch, which is not installed ({exc}); '
                      f'install it with: pip install "ringreduce[torch]"') from exc

from . import rendezvous as _rendezvous
from .backend import BACKEND, ProcessGroupRingReduce
from .backend import register as _register
from .compression import Compression, Compressor
from .hook import allreduce_hook, bf16_compress_hook, fp16_compress_hook
from .horovod import (Adasum, Average, Handle, Max, Min, Product, Sum, allgather,
                      allgather_async, allgather_object, allreduce, allreduce_,
                      allreduce_async, allreduce_async_, broadcast, broadcast_,
                      broadcast_async, broadcast_async_, broadcast_object, ccl_built,
                      cuda_built, ddl_built, gloo_built, gloo_enabled, global_process_set,
                      grouped_allreduce, grouped_allreduce_, init, is_initialized, local_rank,
                      local_size, mpi_built, mpi_enabled, mpi_threads_supported, nccl_built,
                      poll, rank, reducescatter, rocm_built, shutdown, size, synchronize)
from .optimizer import DistributedOptimizer
from .state import broadcast_optimizer_state, broadcast_parameters
from .work import warm_up as _warm_up

_rendezvous.install()
_register()
# The reduction kernels load while the script goes on to build its model and data.
_warm_up()

__all__ = [
    # the torch.distributed backend and the DDP hooks
    "BACKEND", "ProcessGroupRingReduce", "allreduce_hook", "bf16_compress_hook",
    "fp16_compress_hook",
    # horovod.torch
    "init", "shutdown", "is_initialized", "rank", "size", "local_rank", "local_size",
    "mpi_threads_supported", "mpi_built", "mpi_enabled", "gloo_built", "gloo_enabled",
    "nccl_built", "ddl_built", "ccl_built", "rocm_built", "cuda_built",
    "Average", "Sum", "Adasum", "Min", "Max", "Product", "Compression", "Compressor",
    "Handle", "allreduce", "allreduce_", "allreduce_async", "allreduce_async_", "synchronize",
    "poll", "grouped_allreduce", "grouped_allreduce_", "allgather", "allgather_async",
    "allgather_object", "broadcast", "broadcast_", "broadcast_async", "broadcast_async_",
    "broadcast_object", "reducescatter", "broadcast_parameters", "broadcast_optimizer_state",
    "DistributedOptimizer", "global_process_set",
]
