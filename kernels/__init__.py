"""Numba kernels of ringreduce, installed as ``ringreduce.kernels``.

- ``cpu``: local reductions ``(dst, src)`` and the avg scaling, ``@njit(nogil=True)``.
- ``optim``: optimizer updates (SGD, Adam) on the CPU, twins of the CUDA ones.
- ``cuda``: the same on NVIDIA GPUs with Numba-CUDA; importing it never fails without a GPU.
- ``reference``: float64 numpy references of the reductions and optimizers, to check the
  kernels against.
"""
