"""Buffer helpers shared by the host and device paths, with no package imports of their own.

The algorithms call :func:`scratch_like` and :func:`copy_into` instead of ``np.empty`` and
``dst[...] = src`` so that they run unchanged on CUDA device buffers (``_device.py``); this
module sits below both, so importing either one first never meets a half-built module.
numba-cuda loads only when a device array actually arrives.
"""
import bisect

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


class Pieces:
    """Several 1-D contiguous host arrays of one dtype seen as one vector, without copying
    them into one: what lets the ring reduce a list of tensors in one pass (``_grouped``).

    It has what the ring uses of an array: ``size``, ``dtype``, ``nbytes`` and slicing by
    ``[lo:hi]``, which returns the view of the one array that holds that range; ``starts``
    (where each array begins) makes the ring cut its segments there
    (``_schedule.segment_bounds``), so no slice spans two arrays. Empty arrays are left out.
    """

    def __init__(self, arrays):
        self.arrays = [a for a in arrays if a.size]
        self.starts, total = [], 0
        for a in self.arrays:
            self.starts.append(total)
            total += a.size
        self.size = total
        self.dtype = self.arrays[0].dtype if self.arrays else np.dtype(np.uint8)
        self.nbytes = total * self.dtype.itemsize

    def __getitem__(self, s):
        i = bisect.bisect_right(self.starts, s.start) - 1
        base = self.starts[i]
        piece = self.arrays[i]
        if s.stop - base > piece.size:
            raise IndexError(f"[{s.start}:{s.stop}] spans two of the arrays (they start at "
                             f"{self.starts})")
        return piece[s.start - base:s.stop - base]


def scratch_like(buf, n):
    """``n`` uninitialised elements of ``buf``'s dtype, where ``buf`` lives."""
    if isinstance(buf, (np.ndarray, Pieces)):
        return np.empty(n, buf.dtype)
    return _Cuda.cuda.device_array(n, buf.dtype)


def copy_into(dst, src):
    """``dst[...] = src`` for 1-D buffers of one length, on the host or on the device."""
    if isinstance(dst, Pieces):
        for d, s in zip(dst.arrays, src.arrays):
            d[...] = s
    elif isinstance(dst, np.ndarray):
        dst[...] = src
    else:
        _Cuda.ck.pack([src], dst, [0])
