"""The kinds of memory the collective tests run over, one object each, as mpi4py's
``arrayimpl.loop`` runs every collective test over numpy, a fake GPU array, CuPy and Numba.
tests/collective/conftest.py hands them to the tests as the ``memory`` fixture.

A kind answers what a test body needs: ``put`` (a numpy array into this memory, as a new
C-contiguous array), ``get`` (back to numpy), ``empty``, ``is_ours`` (whether a result is this
kind's array), and the ``algorithms`` and ``dtypes`` the library takes for it (class
attributes, so tests are parametrised per kind without loading numba-cuda). ``put_like``
keeps a strided array strided.

"device" is Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, which tests/conftest.py sets
unless told otherwise) or a real GPU. The simulator runs one Python thread per CUDA thread,
so the kernels run on a forced grid of 2 blocks of 4 threads: 97 elements still make the
grid-stride loops wrap, and a launch stays cheap. A launch still costs milliseconds there, so
device cases are fewer and their segments a few elements longer than the host's.
"""
import functools

import numpy as np
from mpi4py import MPI

from ringreduce.core.tables import DTYPES, bfloat16
from ringreduce.memory.device import DEVICE
from ringreduce.memory.host import HOST

# Every dtype the collectives take: numpy's numeric ones and bfloat16 (ml_dtypes).
ALL_DTYPES = DTYPES + (bfloat16(),)

FORCED_GRID = (2, 4)  # blocks, threads per block


class Host:
    name = "host"
    backend = HOST
    algorithms = ("auto",) + HOST.algorithms
    dtypes = ALL_DTYPES
    # Elements per segment where a test crosses many segments on purpose.
    segment_elems = 3

    @staticmethod
    def put(a):
        return np.array(a, order="C")

    @staticmethod
    def get(x):
        return np.asarray(x)

    @staticmethod
    def empty(shape, dtype):
        return np.empty(shape, dtype)

    @staticmethod
    def is_ours(x):
        return isinstance(x, np.ndarray)


class Device:
    name = "device"
    backend = DEVICE
    algorithms = ("auto",) + DEVICE.algorithms
    # The CUDA kernels take every dtype but complex (test_device.py checks this against
    # ringreduce.kernels.cuda.DTYPES).
    dtypes = tuple(d for d in ALL_DTYPES if d.kind != "c")
    segment_elems = 8

    def __init__(self):
        from numba import config, cuda
        from ringreduce.kernels import cuda as ck
        self.cuda, self.ck = cuda, ck
        self.simulator = bool(config.ENABLE_CUDASIM)

    def put(self, a):
        return self.cuda.to_device(np.array(a, order="C"))

    @staticmethod
    def get(x):
        return x.copy_to_host()

    def empty(self, shape, dtype):
        return self.cuda.device_array(shape, dtype)

    def is_ours(self, x):
        return self.cuda.devicearray.is_cuda_ndarray(x)


KINDS = {"host": Host, "device": Device}


@functools.lru_cache(maxsize=None)
def device_unavailable():
    """None when device memory can be tested in this process, else why not. The ranks agree
    on it: ranks that ran different tests would wait for each other forever."""
    reason = None
    try:
        from ringreduce.kernels import cuda as ck
        if not ck.cuda_available():
            reason = (f"{ck.unavailable_reason()}; without a GPU, NUMBA_ENABLE_CUDASIM=1 (the "
                      "default of tests/conftest.py) tests device arrays in the CUDA simulator")
    except ImportError as exc:
        reason = f"the CUDA kernels cannot be imported: {exc}"
    everyone = MPI.COMM_WORLD.allgather(reason)
    return next((r for r in everyone if r is not None), None)


@functools.lru_cache(maxsize=None)
def memory_named(name):
    """The one object of kind ``name``. Device memory forces the small kernel grid for the
    rest of the process: only the collective tests launch kernels in the test process."""
    if name == "host":
        return Host()
    device = Device()
    device.ck.set_launch_config(*FORCED_GRID)
    return device


def cases(per_kind):
    """``[(kind name, *case), ...]`` over every kind, for ``pytest.mark.parametrize`` with
    ``indirect=["memory"]``: ``per_kind(cls)`` lists one kind's cases from its class."""
    return [(name, *case) for name, cls in KINDS.items() for case in per_kind(cls)]


def put_like(memory, a):
    """``a``'s values in ``memory``, strided like ``a``: a non-contiguous ``a`` gives every
    other element along the last axis of a new array twice as wide."""
    a = np.asarray(a)
    if a.flags.c_contiguous:
        return memory.put(a)
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = a
    return memory.put(wide)[..., ::2]
