"""Numba kernels of ringreduce, installed as ``ringreduce.kernels``.

- ``cpu``: local reductions ``(dst, src)``, the avg scaling ``(dst, divisor)`` and the
  gradient codecs ``(dst, src, scale=1.0)``, ``@njit(nogil=True)``; ``half`` holds the
  bfloat16/float16 ones, computing in float32 on the uint16 bits, and the element functions
  the CUDA twins compile too.
- ``optim``: the optimizer updates (SGD, Adam) for a device, from ``get_optimizer_kernels``,
  with full-precision or bfloat16/float16 gradients; ``cpu_optim`` holds the CPU kernels and
  the element functions both devices compile.
- ``cuda``: the same on NVIDIA GPUs with Numba-CUDA; importing it never fails without a GPU.
  It gathers ``cuda_launch`` (availability, launch grid, argument checks), ``cuda_reduce``
  (reductions, scaling, gradient codecs), ``cuda_optim`` (optimizer twins) and ``cuda_fusion`` (pack and
  unpack of fusion buffers).
- ``reference``: float64 numpy references of the reductions and optimizers, and the
  float32-cast references of the half-precision kernels, to check the kernels against.
"""
