"""Buffer helpers shared by the host and device paths, with no package imports of their own.

The algorithms call :func:`scratch_like` and :func:`copy_into` instead of ``np.empty`` and
``dst[...] = src`` so that they run unchanged on CUDA device buffers (``_device.py``); this
module sits below both, so importing either one first never meets a half-built module.
numba-cuda loads only when a device array actually arrives.
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


class _Cuda:
    """numba.cuda and ringreduce.kernels.cuda, loaded once; ``sim``: the CUDA simulator."""
    cuda = ck = driver = None
    sim = False


def _require_cuda():
    """The loaded modules, or RuntimeError saying why device arrays cannot be reduced here."""
    if _Cuda.cuda is None:
        from .kernels import cuda as ck
        if not ck.cuda_available():
            raise RuntimeError(f"got a CUDA device array, but {ck.unavailable_reason()}")
        from numba import config, cuda
        _Cuda.sim = bool(config.ENABLE_CUDASIM)
        if not _Cuda.sim:
            from numba.cuda.cudadrv import driver
            _Cuda.driver = driver
        _Cuda.ck, _Cuda.cuda = ck, cuda
    return _Cuda


def scratch_like(buf, n):
    """``n`` uninitialised elements of ``buf``'s dtype, where ``buf`` lives."""
    if isinstance(buf, np.ndarray):
        return np.empty(n, buf.dtype)
    return _Cuda.cuda.device_array(n, buf.dtype)


def copy_into(dst, src):
    """``dst[...] = src`` for 1-D buffers of one length, on the host or on the device."""
    if isinstance(dst, np.ndarray):
        dst[...] = src
    else:
        _Cuda.ck.pack([src], dst, [0])
