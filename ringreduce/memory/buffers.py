"""Scratch and copies where a buffer lives: the algorithms call :func:`scratch_like` and
:func:`copy_into` instead of ``np.empty`` and ``dst[...] = src``, so they run unchanged on
CUDA device buffers."""
import numpy as np

from ..gpu import Cuda
from .host import HostBackend
from .spans import Spans


def scratch_like(buf, n):
    """``n`` uninitialised elements of ``buf``'s dtype, where ``buf`` lives (host arrays,
    ``Spans`` of them, device arrays)."""
    if isinstance(buf, (np.ndarray, Spans)):
        return np.empty(n, buf.dtype)
    return Cuda.cuda.device_array(n, buf.dtype)


def kept_scratch(comm, buf, n, count):
    """``count`` buffers of ``n`` elements of ``buf``'s dtype, for an algorithm's own use
    during one call: on the host kept per library communicator (``HostBackend.scratch``) and reused by
    the next call, since a fresh large ``np.empty`` pays its page faults again at every call
    (three 48 MiB ring buffers for a 97 MiB in-place call at 2 ranks: about a third of the
    call here); elsewhere, or on a transport without state, fresh ones."""
    if getattr(comm, "state", None) is None or not isinstance(buf, (np.ndarray, Spans)):
        return [scratch_like(buf, n) for _ in range(count)]
    return [HostBackend.scratch(comm, f"algorithm scratch {k}", buf.dtype, n)
            for k in range(count)]


def copy_into(dst, src):
    """``dst[...] = src`` for 1-D buffers of one length, on the host or on the device."""
    if isinstance(dst, np.ndarray):
        dst[...] = src
    else:
        Cuda.ck.pack([src], dst, [0])
