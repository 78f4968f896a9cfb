"""Scratch and copies where a buffer lives: the algorithms call :func:`scratch_like` and
:func:`copy_into` instead of ``np.empty`` and ``dst[...] = src``, so they run unchanged on
CUDA device buffers."""
import numpy as np

from ..gpu import Cuda


def scratch_like(buf, n):
    """``n`` uninitialised elements of ``buf``'s dtype, where ``buf`` lives."""
    if isinstance(buf, np.ndarray):
        return np.empty(n, buf.dtype)
    return Cuda.cuda.device_array(n, buf.dtype)


def copy_into(dst, src):
    """``dst[...] = src`` for 1-D buffers of one length, on the host or on the device."""
    if isinstance(dst, np.ndarray):
        dst[...] = src
    else:
        Cuda.ck.pack([src], dst, [0])
