"""The host backend: numpy arrays and anything numpy views without copying (the buffer
protocol, ``__array_interface__``, a CPU torch tensor). Reduced by the Numba CPU kernels
(``kernels/cpu.py``), moved by the library's ``Comm`` straight from the arrays' memory."""
import contextlib

import numpy as np

from ..core.tables import ALGORITHM_NAMES, check_op_dtype
from .pool import ResultPool


class HostBackend:
    name = "host"
    noun = "array"
    mark = 0            # in the signature: a host and a device call never agree
    piggyback = True    # small payloads ride in the header pass
    algorithms = ALGORITHM_NAMES[1:]

    def __init__(self):
        self._kernels = {}

    def view(self, x, what="x"):
        """View ``x`` as a numpy array without copying."""
        if isinstance(x, np.ndarray):
            return x
        try:
            arr = np.asarray(x)
        except Exception as exc:  # noqa: BLE001 - reported with the type that failed
            raise TypeError(f"{what} must be a numpy array or expose the buffer protocol or "
                            f"__array_interface__, got {type(x).__name__}: {exc}") from None
        if arr.dtype == object:
            raise TypeError(f"{what} must be a numeric array, got {type(x).__name__} that "
                            "numpy sees as an object array")
        return arr

    def kernels(self, op, dtype):
        """``(reduce, scale or None)`` for ``op`` on ``dtype``; TypeError for invalid pairs."""
        got = self._kernels.get((op, dtype))
        if got is None:
            from ..kernels.cpu import reduce_kernel, scale_kernel
            check_op_dtype(op, dtype)
            if op == "avg":
                got = reduce_kernel("sum", dtype), scale_kernel(dtype)
            else:
                got = reduce_kernel(op, dtype), None
            self._kernels[(op, dtype)] = got
        return got

    @staticmethod
    def first(reduce):
        """The fused ``(out, a, b)`` kernel, ``out = a op b``, for the ``(dst, src)`` kernel
        ``reduce`` (the same bits as a copy and ``reduce``), or None where there is none."""
        from ..kernels.cpu import first_kernel
        return first_kernel(reduce)

    # -- buffers -------------------------------------------------------------------------
    @staticmethod
    def shape(a):
        return a.shape

    @staticmethod
    def dtype(a):
        return a.dtype

    @staticmethod
    def contiguous(a):
        return a.flags.c_contiguous

    @staticmethod
    def writeable(x, arr):
        return arr.flags.writeable

    @staticmethod
    def empty(shape, dtype):
        return np.empty(shape, dtype)

    @staticmethod
    def results(c, layout):
        """New arrays of the given ``[(shape, dtype)]`` for an out-of-place grouped call, as
        views into one block per dtype from ``c``'s result pool (``ResultPool``)."""
        pool = c.state.results
        if pool is None:
            pool = c.state.results = ResultPool()
        return pool.arrays(layout)

    @staticmethod
    def flat(a):
        """The 1-D view of contiguous ``a``."""
        return a.reshape(-1)

    @staticmethod
    def flatten(a):
        """A 1-D contiguous array of ``a``'s elements: a view when it can be, else a copy."""
        return a.reshape(-1) if a.flags.c_contiguous else np.ascontiguousarray(a).reshape(-1)

    @staticmethod
    def write_back(target, flat):
        """Copy the 1-D ``flat`` into ``target`` unless it is ``target``'s own memory."""
        if target.size and not np.shares_memory(flat, target):
            target[...] = flat.reshape(target.shape)

    @staticmethod
    def overlap(a, b):
        """"none", "same" (one start and strides: in place) or "partial"."""
        if not np.shares_memory(a, b):
            return "none"
        same = (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
                and a.strides == b.strides)
        return "same" if same else "partial"

    # -- fusion ----------------------------------------------------------------------------
    @staticmethod
    def scratch(c, purpose, dtype, n):
        """A reusable 1-D buffer of at least ``n`` elements per communicator, purpose and
        dtype: a fresh 64 MiB allocation per call would cost more in page faults than the
        copy into it. Purposes: "fusion" (buckets), "wire" and "feedback" (compression)."""
        key = ("host", purpose, dtype)
        buf = c.state.fusion.get(key)
        if buf is None or buf.size < n:
            buf = c.state.fusion[key] = np.empty(n, dtype)
        return buf[:n]

    def fusion_buffer(self, c, dtype, n):
        return self.scratch(c, "fusion", dtype, n)

    # -- compression -------------------------------------------------------------------------
    @staticmethod
    def codec(fmt, op):
        """``(reduce(dst, src), compress(dst, src, s), decompress(dst, src, s))`` for the wire
        format ``fmt`` ("bf16", "fp16") on its uint16 bits: ``op`` on wire values, float32 to
        wire values multiplied by ``s`` (a power of two, exact) with one rounding to
        nearest-even, and back multiplied by ``s`` (``kernels/cpu.py``'s half-precision
        kernels)."""
        from ..kernels.cpu import compress_kernel, decompress_kernel, wire_reduce_kernel
        return wire_reduce_kernel(op, fmt), compress_kernel(fmt), decompress_kernel(fmt)

    @staticmethod
    def ring_codec(fmt):
        """The compressed ring's ``(send, fold, widen)`` kernels for ``fmt``
        (``collectives/compress.py``'s ``RingWire``)."""
        from ..kernels.cpu import ring_kernel
        return tuple(ring_kernel(what, fmt) for what in ("send", "fold", "widen"))

    @staticmethod
    def amax(a):
        """The largest magnitude in ``a`` (NaN if any element is NaN), as a Python float."""
        # Two passes without a temporary; a NaN anywhere makes both NaN.
        return float(max(np.max(a), -np.min(a))) if a.size else 0.0

    @staticmethod
    def subtract(dst, src):
        np.subtract(dst, src, out=dst)

    @staticmethod
    def pack(arrays, buffer, offsets):
        """Copy each array (any shape, any strides) into its place in the 1-D ``buffer``."""
        for a, off in zip(arrays, offsets):
            if a.size:
                buffer[off:off + a.size].reshape(a.shape)[...] = a

    @staticmethod
    def unpack(buffer, arrays, offsets):
        """Copy each array's slice of ``buffer`` back into the array (writes through views)."""
        for a, off in zip(arrays, offsets):
            if a.size:
                a[...] = buffer[off:off + a.size].reshape(a.shape)

    # -- transport and ordering ----------------------------------------------------------------
    @staticmethod
    def transport(c):
        return c

    def prepare(self):
        pass

    def sync(self):
        pass

    def device(self):
        return None

    @staticmethod
    def on_device(device):
        return contextlib.nullcontext()


HOST = HostBackend()
