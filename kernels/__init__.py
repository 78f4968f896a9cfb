"""Numba kernels of ringreduce, installed as ``ringreduce.kernels``.

- ``cpu``: local reductions ``(dst, src)`` and the avg scaling, ``@njit(nogil=True)``.
- ``optim``: the optimizer updates (SGD, Adam) for a device, from ``get_optimizer_kernels``;
  ``cpu_optim`` holds the CPU kernels and the element functions both devices compile.
- ``cuda``: the same on NVIDIA GPUs with Numba-CUDA; importing it never fails without a GPU.
  It gathers ``cuda_launch`` (availability, launch grid, argument checks), ``cuda_reduce``
  (reductions and scaling), ``cuda_optim`` (optimizer twins) and ``cuda_fusion`` (pack and
  unpack of fusion buffers).
- ``reference``: float64 numpy references of the reductions and optimizers, to check the
  kernels against.
"""
