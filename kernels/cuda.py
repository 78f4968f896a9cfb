"""CUDA kernels in Numba-CUDA: local reductions, avg scaling, optimizer updates, fusion pack.

The one module the rest of ringreduce imports for the GPU (``from ..kernels import cuda as
ck``); the kernels live in modules split along what they do, and each launcher behaves as it
did when they shared this file:

- ``cuda_launch``: whether kernels can run (:func:`cuda_available`,
  :func:`unavailable_reason`), the grid-stride launch grid (:func:`launch_config`,
  :func:`set_launch_config`) and the checks of device-array arguments.
- ``cuda_reduce``: the reductions ``(dst, src)`` from :func:`reduce_kernel`, the op="avg"
  scaling ``(dst, divisor)`` from :func:`scale_kernel` and the gradient codecs ``(dst, src,
  scale=1.0)`` from :func:`compress_kernel` / :func:`decompress_kernel`, in the CPU kernels'
  shapes and semantics (bfloat16 and float16 bit for bit, through ``half.py``'s element
  functions).
- ``cuda_optim``: ``sgd_update`` and ``adam_update``, taking the arguments of their CPU twins
  in ``cpu_optim.py``, whose element functions they compile.
- ``cuda_fusion``: :func:`pack` and :func:`unpack`, device-to-device copies into and out of
  a fusion buffer.

Every launcher also takes ``stream=0`` (0: the default stream). Arrays are 1-D, C-contiguous
device arrays: Numba device arrays or anything exposing ``__cuda_array_interface__`` (CuPy,
PyTorch). This module imports without a GPU and without numba-cuda; :func:`cuda_available`
says whether the kernels can run (it is also true under the simulator,
``NUMBA_ENABLE_CUDASIM=1``).
"""
from .cuda_fusion import pack, unpack
from .cuda_launch import (THREADS_PER_BLOCK, cuda_available, launch_config, set_launch_config,
                          unavailable_reason)
from .cuda_optim import OPTIM_DTYPES, adam_update, sgd_update
from .cuda_reduce import (DTYPES, OPS, UNROLL, compress_kernel, decompress_kernel, reduce_kernel,
                          scale_kernel)

__all__ = [
    "DTYPES", "OPS", "OPTIM_DTYPES", "THREADS_PER_BLOCK", "UNROLL", "adam_update",
    "compress_kernel", "cuda_available", "decompress_kernel", "launch_config", "pack",
    "reduce_kernel", "scale_kernel",
    "set_launch_config", "sgd_update", "unavailable_reason", "unpack",
]
