"""numba-cuda, loaded only when a device array arrives, and how device arrays are recognised.

At the bottom of the package beside ``config`` and ``errors``: the device backend
(``memory/device.py``) and the device transport (``transport/device.py``) both load it.

Importing ringreduce never imports numba-cuda: :func:`is_device_array` only looks at
attributes, so the CPU path stays cheap and never fails on a machine without a GPU.
"""
import numpy as np


def is_device_array(x):
    """True for a CUDA device array: anything with ``__cuda_array_interface__``, or a Numba
    device array (the simulator's have no interface, only Numba's ``__cuda_ndarray__`` mark).
    Looks at attributes only; numpy arrays answer at the first test."""
    if isinstance(x, np.ndarray):
        return False
    try:
        return bool(getattr(x, "__cuda_ndarray__", False)) or hasattr(
            x, "__cuda_array_interface__")
    except Exception:  # noqa: BLE001 - the interface exists but refused (see below)
        # PyTorch raises RuntimeError for a tensor that requires grad. It is a device
        # array; the device path meets the same error inside its validation, which
        # reports it on every rank instead of leaving the others waiting.
        return True


class Cuda:
    """numba.cuda and ringreduce.kernels.cuda, loaded once; ``sim``: the CUDA simulator."""
    cuda = ck = driver = None
    sim = False


def require_cuda():
    """The loaded modules, or RuntimeError saying why device arrays cannot be reduced here."""
    if Cuda.cuda is None:
        from .kernels import cuda as ck
        if not ck.cuda_available():
            raise RuntimeError(f"got a CUDA device array, but {ck.unavailable_reason()}")
        from numba import config, cuda
        Cuda.sim = bool(config.ENABLE_CUDASIM)
        if not Cuda.sim:
            from numba.cuda.cudadrv import driver
            Cuda.driver = driver
        Cuda.ck, Cuda.cuda = ck, cuda
    return Cuda


def synchronize():
    Cuda.cuda.synchronize()
