"""What every CUDA kernel here shares: numba-cuda if present, the grid, argument checks.

This module imports without a GPU and without numba-cuda (``numba_cuda`` is then None);
:func:`cuda_available` says whether the kernels can run (it is also true under the
simulator, ``NUMBA_ENABLE_CUDASIM=1``), and every launcher calls :func:`require_cuda` first.

Arrays are 1-D, C-contiguous device arrays: Numba device arrays or anything exposing
``__cuda_array_interface__`` (CuPy, PyTorch). The latter go through ``cuda.as_cuda_array``,
which synchronises the producer's stream as the interface asks; pass Numba device arrays
where that matters.

Every kernel is a grid-stride loop: one full wave of blocks (multiprocessor count times the
blocks of ``THREADS_PER_BLOCK`` threads that fit on one multiprocessor) walks the whole array,
so the launch size never depends on the array's length and no block waits in a second wave.
:func:`set_launch_config` overrides the grid, so tests can force a grid smaller than the
array and make the loop wrap.
"""
import functools

import numpy as np

from .half import BITS, FORMATS, element_functions

try:
    from numba import cuda as numba_cuda
except ImportError:  # numba-cuda not installed: the module still imports, nothing launches
    numba_cuda = None

if numba_cuda is not None and not hasattr(np, "row_stack"):
    # numba-cuda 0.30.4 registers an overload for np.row_stack when it compiles its first
    # kernel; numpy 2.5 removed that name (an alias of vstack since numpy 1.x), so every
    # compile fails with AttributeError (NVIDIA/numba-cuda#907, which will not be fixed there;
    # seen on an H200 image with numpy 2.5.2). Restoring numpy's own alias is the whole fix.
    np.row_stack = np.vstack

# 256 threads is a multiple of the warp size that divides every multiprocessor's thread limit
# (1536 or 2048 on recent parts), so whole blocks fill each multiprocessor; a grid-stride loop
# needs no particular block shape beyond that.
THREADS_PER_BLOCK = 256

_forced = {"blocks": None, "threads": None}


def cuda_available():
    """True when kernels can launch: numba-cuda is installed and sees a GPU or the simulator."""
    return numba_cuda is not None and numba_cuda.is_available()


def unavailable_reason():
    if numba_cuda is None:
        return "numba-cuda is not installed (pip install numba-cuda)"
    if not numba_cuda.is_available():
        return "no CUDA GPU or driver is visible to numba-cuda"
    return "CUDA is available"


def require_cuda():
    if not cuda_available():
        raise RuntimeError("ringreduce.kernels.cuda: " + unavailable_reason())


def set_launch_config(blocks=None, threads=None):
    """Force the grid (None: derive it from the device). Returns the previous setting."""
    previous = dict(_forced)
    _forced["blocks"] = blocks
    _forced["threads"] = threads
    return previous


@functools.lru_cache(maxsize=None)
def _wave_blocks(device_id, threads):
    device = numba_cuda.get_current_device()
    # The simulator's device has no attributes; any small grid will do there.
    sms = getattr(device, "MULTIPROCESSOR_COUNT", 1)
    per_sm = getattr(device, "MAX_THREADS_PER_MULTIPROCESSOR", threads) // threads
    return sms * max(per_sm, 1)


def launch_config(n):
    """(blocks, threads) for an array of ``n`` elements; ``n`` must be positive."""
    threads = _forced["threads"] or THREADS_PER_BLOCK
    blocks = _forced["blocks"]
    if blocks is None:
        device = numba_cuda.get_current_device()
        blocks = _wave_blocks(getattr(device, "id", 0), threads)
    # No more blocks than elements need: tiny arrays launch tiny grids.
    return min(blocks, -(-n // threads)), threads


def as_device(x, name):
    if not numba_cuda.devicearray.is_cuda_ndarray(x):
        if not hasattr(x, "__cuda_array_interface__"):
            raise TypeError(f"{name}: expected a CUDA device array, got {type(x).__name__}")
        x = numba_cuda.as_cuda_array(x)
    return x


def as_vector(x, name, dtype=None, size=None):
    x = as_device(x, name)
    if x.ndim != 1 or not x.is_c_contiguous():
        raise ValueError(f"{name}: expected a 1-D contiguous array, got shape {x.shape} "
                         f"with strides {x.strides}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {x.dtype}")
    if size is not None and x.size != size:
        raise ValueError(f"{name}: expected {size} elements, got {x.size}")
    return x


def vector_type(dtype):
    from numba import from_dtype

    return from_dtype(dtype)[::1]


def check_dtype(dtype, allowed, what):
    dtype = np.dtype(dtype)
    if dtype not in allowed:
        raise TypeError(f"{what}: unsupported dtype {dtype}; expected one of "
                        f"{', '.join(str(d) for d in allowed)}")
    return dtype


def as_bits_vector(x, name, dtype, size=None):
    """The uint16 view of a 1-D contiguous device array of half-precision ``dtype`` (bfloat16
    or float16), given as that dtype or as its bits in a 16-bit integer array (as torch hands
    over a bfloat16 tensor, which ``__cuda_array_interface__`` cannot describe)."""
    x = as_vector(x, name, size=size)
    if x.dtype not in (dtype, BITS, np.dtype(np.int16)):
        raise TypeError(f"{name}: expected dtype {dtype} (or its bits as uint16 or int16), got "
                        f"{x.dtype}")
    return x if x.dtype == BITS else x.view(BITS)


@functools.lru_cache(maxsize=None)
def half_elements():
    """``half.element_functions`` compiled as CUDA device functions (same source as the
    CPU kernels', so the same bits), keyed by (what, "bf16" | "fp16")."""
    return element_functions(numba_cuda.jit(device=True))


def half_format(dtype):
    """"bf16" / "fp16" for a half-precision dtype, None for any other."""
    return FORMATS.get(np.dtype(dtype))
