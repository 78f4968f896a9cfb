"""The device backend: CUDA device arrays (Numba, CuPy, PyTorch CUDA: anything with
``__cuda_array_interface__``), reduced on the GPU by the Numba-CUDA kernels of
``kernels/cuda.py`` and moved by the device transport (``transport/device.py``), which hands
device pointers to a CUDA-aware MPI or stages each message through pinned host memory.

Differences from the host backend, each a consequence of where the bytes are:
- no payload in the header pass (it would need a copy to the host and back);
- no ``shm`` (its window is host memory), so "auto" chooses among the others by the host's
  rule (``core.choose``);
- no complex dtypes (the CUDA kernels have none);
- every call ends with a device synchronisation, so a result is complete when it returns.

Streams. Every kernel and copy runs on the legacy default stream (Numba's stream 0), which
orders them among themselves and after work on other blocking streams.
"""
import numpy as np

from ..config import cuda_aware_setting
from ..core.tables import check_op_dtype
from ..gpu import Cuda, is_device_array, require_cuda, synchronize

# The algorithms that talk only through the transport's point-to-point calls and so run on
# device buffers unchanged; shm works on a shared-memory window of host memory.
DEVICE_ALGORITHMS = ("ring", "tree", "rhd", "doubling")


class DeviceBackend:
    name = "device"
    noun = "device array"
    mark = 1            # in the signature: a host and a device call never agree
    piggyback = False
    algorithms = DEVICE_ALGORITHMS

    def __init__(self):
        self._kernels = {}

    def view(self, x, what="x"):
        """A Numba device array viewing ``x`` (no copy). ``cuda.as_cuda_array`` waits for
        the producer's stream when the interface names one, as the interface asks."""
        if not is_device_array(x):
            raise TypeError(f"{what} must be a CUDA device array (Numba, CuPy, PyTorch CUDA) "
                            f"like x, got {type(x).__name__}")
        cu = require_cuda()
        if cu.cuda.devicearray.is_cuda_ndarray(x):
            return x
        if cu.sim:
            # Read the interface first: an array that refuses it (PyTorch, for a tensor that
            # requires grad) must report its own error, not the simulator's.
            x.__cuda_array_interface__  # noqa: B018
            raise TypeError(f"{what}: the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) takes only "
                            f"its own device arrays, got {type(x).__name__}")
        return cu.cuda.as_cuda_array(x)

    def kernels(self, op, dtype):
        """``(reduce, scale or None)`` CUDA kernels: the host's rules, and no complex."""
        got = self._kernels.get((op, dtype))
        if got is None:
            ck = require_cuda().ck
            check_op_dtype(op, dtype)
            if dtype not in ck.DTYPES:
                raise TypeError(f"unsupported dtype {dtype} for a CUDA device array; the CUDA "
                                f"kernels take {', '.join(str(d) for d in ck.DTYPES)}")
            if op == "avg":
                got = ck.reduce_kernel("sum", dtype), ck.scale_kernel(dtype)
            else:
                got = ck.reduce_kernel(op, dtype), None
            self._kernels[(op, dtype)] = got
        return got

    # -- buffers -------------------------------------------------------------------------
    @staticmethod
    def shape(a):
        return tuple(int(s) for s in a.shape)

    @staticmethod
    def dtype(a):
        return np.dtype(a.dtype)

    @staticmethod
    def contiguous(a):
        return a.is_c_contiguous()

    @staticmethod
    def writeable(x, arr):
        cai = getattr(x, "__cuda_array_interface__", None)
        return not (cai and cai.get("data", (0, False))[1])

    @staticmethod
    def empty(shape, dtype):
        return Cuda.cuda.device_array(shape, dtype)

    @staticmethod
    def results(c, layout):
        """New arrays of the given ``[(shape, dtype)]`` (device memory has no page faults
        to save: one allocation each)."""
        return [Cuda.cuda.device_array(shape, dtype) for shape, dtype in layout]

    @staticmethod
    def flat(a):
        return a.reshape(a.size)

    @staticmethod
    def flatten(a):
        """A 1-D contiguous device array holding ``a``'s elements: a view when ``a`` is
        contiguous, else a copy (Numba's ``setitem`` runs its strided copy kernel)."""
        if a.is_c_contiguous():
            return a.reshape(a.size)
        tmp = Cuda.cuda.device_array(a.shape, a.dtype)
        tmp[:] = a
        return tmp.reshape(a.size)

    @classmethod
    def write_back(cls, target, flat):
        """Copy the 1-D ``flat`` into ``target`` unless it is ``target``'s own memory."""
        if target.size and _extent(flat) != _extent(target):
            target[:] = flat.reshape(target.shape)

    @staticmethod
    def overlap(a, b):
        """"none", "same" (one start and strides: in place) or "partial"."""
        (lo, hi), (xlo, xhi) = _extent(a), _extent(b)
        if not (lo < xhi and xlo < hi):
            return "none"
        return "same" if lo == xlo and tuple(a.strides) == tuple(b.strides) else "partial"

    # -- fusion ----------------------------------------------------------------------------
    @staticmethod
    def scratch(c, purpose, dtype, n):
        """A device buffer of ``n`` elements, kept per communicator like the host one."""
        key = ("device", purpose, dtype)
        buf = c.state.fusion.get(key)
        if buf is None or buf.size < n:
            buf = c.state.fusion[key] = Cuda.cuda.device_array(n, dtype)
        return buf[:n]

    def fusion_buffer(self, c, dtype, n):
        return self.scratch(c, "fusion", dtype, n)

    @staticmethod
    def codec(fmt, op):
        raise TypeError("compression of CUDA device arrays is not available: the device "
                        "backend has no agreed-scale (amax) reduction or error-feedback step "
                        "yet; compress on the host, or pass bfloat16/float16 device arrays")

    @staticmethod
    def pack(arrays, buffer, offsets):
        """Copy each array into its place in ``buffer``: the contiguous ones in one
        ``kernels.cuda.pack`` call (a device-to-device copy each), the others through
        Numba's strided copy."""
        flat = [(a, off) for a, off in zip(arrays, offsets) if a.size and a.is_c_contiguous()]
        Cuda.ck.pack([a for a, _ in flat], buffer, [off for _, off in flat])
        for a, off in zip(arrays, offsets):
            if a.size and not a.is_c_contiguous():
                buffer[off:off + a.size].reshape(a.shape)[:] = a

    @staticmethod
    def unpack(buffer, arrays, offsets):
        flat = [(a, off) for a, off in zip(arrays, offsets) if a.size and a.is_c_contiguous()]
        Cuda.ck.unpack(buffer, [a for a, _ in flat], [off for _, off in flat])
        for a, off in zip(arrays, offsets):
            if a.size and not a.is_c_contiguous():
                a[:] = buffer[off:off + a.size].reshape(a.shape)

    # -- transport and ordering ----------------------------------------------------------------
    @staticmethod
    def transport(c):
        from ..transport.device import device_comm
        return device_comm(c)

    def prepare(self):
        """Checks that must fail before the header, on the rank that has the problem: a
        bad RINGREDUCE_CUDA_AWARE."""
        cuda_aware_setting()

    def sync(self):
        synchronize()

    def device(self):
        """The GPU current in this thread (the engine runs a channel's device work on it)."""
        return getattr(require_cuda().cuda.get_current_device(), "id", 0)

    @staticmethod
    def on_device(device):
        return Cuda.cuda.gpus[device or 0]


def _extent(a):
    """[start, stop) of the bytes ``a`` touches (empty arrays touch none)."""
    if a.size == 0:
        return 0, 0
    start = a._ary.ctypes.data if Cuda.sim else a.device_ctypes_pointer.value
    lo = hi = start
    for n, stride in zip(a.shape, a.strides):
        if stride < 0:
            lo += (n - 1) * stride
        else:
            hi += (n - 1) * stride
    return lo, hi + a.dtype.itemsize


DEVICE = DeviceBackend()
