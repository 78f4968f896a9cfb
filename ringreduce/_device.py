"""Allreduce of CUDA device arrays: the same algorithms, a device transport, GPU reductions.

Any object with ``__cuda_array_interface__`` (Numba device arrays, CuPy arrays, PyTorch CUDA
tensors) takes this path from ``allreduce``, ``grouped_allreduce`` and ``allreduce_async``.
The algorithms in ``algorithms/`` run unchanged on device buffers; only three things differ:

- *transport*: :class:`DeviceComm` has the calls of ``_comm.Comm`` but takes device array
  slices. With a CUDA-aware MPI it hands them straight to MPI (mpi4py accepts
  ``__cuda_array_interface__`` buffers). Otherwise it *stages*: a send copies the segment
  into a pinned host buffer and sends that; a receive lands in a pinned buffer and is copied
  to the device when it is waited for. Pinned memory because only page-locked memory can be
  DMA'd directly and copied at full PCIe/NVLink bandwidth. Staging happens per message, and the
  algorithms send one segment per message, so the copy of one segment overlaps the MPI
  transfer of the next (the ring and the tree already pipeline per segment). Every message is
  the same bytes either way, so ranks that stage and ranks that do not can share a call.
- *reduction*: the CUDA kernels of ``kernels/cuda.py`` (``(dst, src)``, like the CPU ones).
- *scratch and copies*: :func:`scratch_like` and :func:`copy_into`, which the algorithms call
  instead of ``np.empty``/``dst[...] = src``, allocate and copy where the buffer lives.

Staging memory. Each message in flight holds one pinned buffer, returned to a per-
communicator pool when its request completes, so repeated calls pin nothing new. The pool
keeps the peak of one call: about the vector's size for the ring, whose allgather posts all
its receives at once, and one vector per child for the tree.

CUDA-aware MPI is detected with ``MPIX_Query_cuda_support`` (MPICH and Open MPI export it);
``RINGREDUCE_CUDA_AWARE=1`` or ``0`` overrides that (for an MPI that is CUDA-aware but lacks
the query, such as MVAPICH2-GDR, or to force staging). Under Numba's CUDA simulator the
"device" arrays are numpy arrays, staging is the default and goes through the same copy calls.

Streams. Every kernel and copy runs on the legacy default stream (Numba's stream 0), which
orders them among themselves and after work on other blocking streams; copies from the device
to pinned memory return when done, so MPI never reads a buffer a kernel is still writing. With
a CUDA-aware MPI, MPI does not know our stream, so the device is synchronised before each MPI
call that touches device memory. A call returns only once its result is complete on the device.

Nothing here imports numba-cuda until a device array actually arrives: ``is_device_array``
only looks at attributes, so importing ringreduce stays cheap and never fails without a GPU.
"""
import ctypes
import os
import threading
import time

import numpy as np

# _allreduce imports the algorithms, which import _buffers; this module imports _allreduce
# as a module and reads its names at call time.
from . import _allreduce as ar
from ._buffers import _Cuda, _require_cuda, copy_into, is_device_array, scratch_like  # noqa: F401
from ._config import fusion_sizes, segment_size
from ._fusion import assign_buckets, group_by_dtype, offsets_of

# Appended to the tuple a device call's signature hashes: a device call and a host call of
# the same shape and dtype must not agree, because a small host call carries its payload in
# the header and the device call does not (they would run different schedules). An int:
# hash() of a str differs between processes.
_DEVICE_MARK = 1

# Pinned staging buffers come in power-of-two sizes from 64 KiB, so segments of one size
# share one free list and a call reuses the buffers of the call before. Smaller classes
# would only multiply the lists; a message that small costs its latency, not its copy.
_MIN_STAGING = 64 << 10


# ---------------------------------------------------------------------------------------
# numba-cuda, loaded on first use

def as_device(x, what="x"):
    """A Numba device array viewing ``x`` (no copy). ``cuda.as_cuda_array`` waits for the
    producer's stream when the interface names one, as the interface asks."""
    cu = _require_cuda()
    if cu.cuda.devicearray.is_cuda_ndarray(x):
        return x
    if not hasattr(x, "__cuda_array_interface__"):
        raise TypeError(f"{what} must be a CUDA device array (Numba, CuPy, PyTorch CUDA), "
                        f"got {type(x).__name__}")
    if cu.sim:
        raise TypeError(f"{what}: the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) takes only its "
                        f"own device arrays, got {type(x).__name__}")
    return cu.cuda.as_cuda_array(x)


def _synchronize():
    _Cuda.cuda.synchronize()


# ---------------------------------------------------------------------------------------
# CUDA-aware MPI

_aware = {}


def cuda_aware():
    """Whether MPI takes device pointers: ``RINGREDUCE_CUDA_AWARE`` (1, 0, or auto, the
    default), else what the MPI library says. ValueError for any other value of the variable.
    Asked in the validation of every device call, before the ranks compare headers, so a bad
    value raises on every rank instead of leaving the others waiting."""
    text = os.environ.get("RINGREDUCE_CUDA_AWARE", "auto").strip().lower()
    got = _aware.get(text)
    if got is None:
        if text in ("1", "0"):
            got = text == "1"
        elif text == "auto":
            got = _query_cuda_support()
        else:
            raise ValueError(f"RINGREDUCE_CUDA_AWARE={text!r} is not valid; expected 1 (MPI "
                             "takes device memory), 0 (stage through host memory) or auto")
        _aware[text] = got
    return got


def _query_cuda_support():
    """``MPIX_Query_cuda_support()`` of the MPI library mpi4py loaded (MPICH >= 4 and Open MPI
    export it): 1 only when the library was built with CUDA and has it enabled at run time.
    False where the symbol is missing, and always under the simulator, whose "device" memory
    is host memory that no MPI needs told about."""
    if _require_cuda().sim:
        return False
    try:
        # dlsym on mpi4py's extension module also searches the libmpi it links to.
        from mpi4py import MPI
        query = ctypes.CDLL(MPI.__file__).MPIX_Query_cuda_support
    except (OSError, AttributeError):
        return False
    query.restype = ctypes.c_int
    query.argtypes = []
    return bool(query())


# ---------------------------------------------------------------------------------------
# Transport

_EMPTY = np.empty(0, np.uint8)


def _to_host(host, dev):
    """Copy device array ``dev`` (contiguous) into the uint8 host buffer ``host``; returns
    when done (a copy to host memory on the legacy stream waits for the kernels before it)."""
    if dev.nbytes:
        if _Cuda.sim:
            dev.copy_to_host(host[:dev.nbytes].view(dev.dtype))
        else:  # straight to the driver: Numba's copy_to_host costs far more host time
            _Cuda.driver.device_to_host(host, dev, dev.nbytes)


def _to_device(dev, host):
    """Copy the uint8 host buffer ``host`` into device array ``dev``. From pinned memory the
    copy is complete when the call returns, so ``host`` can be reused at once."""
    if dev.nbytes:
        if _Cuda.sim:
            dev.copy_to_device(host[:dev.nbytes].view(dev.dtype))
        else:
            _Cuda.driver.host_to_device(dev, host, dev.nbytes)


class _Staged:
    """A request of the staging transport: the MPI request, the pinned buffer it uses, and
    for a receive the device slice the data goes to once it has arrived."""
    __slots__ = ("request", "owner", "host", "dst")

    def __init__(self, request, owner, host, dst):
        self.request, self.owner, self.host, self.dst = request, owner, host, dst

    def finish(self):
        """After the MPI request completed: copy a receive to the device, free the buffer."""
        host, self.host = self.host, None
        if host is None:
            return
        try:
            if self.dst is not None:
                _to_device(self.dst, host)
        finally:
            self.owner.give_back(host)


class DeviceComm:
    """``_comm.Comm``'s point-to-point calls on device buffers (see the module docstring).

    Every MPI call and every wait goes through the wrapped library communicator ``comm``
    (with host staging buffers, or with device memory when ``aware``), so device traffic
    shares its tags, its ordering and its way of waiting.
    """

    def __init__(self, comm, aware):
        self.comm = comm
        self.rank, self.size = comm.rank, comm.size
        self.left, self.right = comm.left, comm.right
        self.aware = aware
        self.free = {}            # staging size -> [pinned uint8 buffers]
        self.pinned_bytes = 0     # pinned memory this transport holds, in use or free
        self.fusion_buffers = {}  # dtype -> device buffer of grouped and async buckets

    # -- staging buffers -----------------------------------------------------------------
    def take(self, nbytes):
        size = max(_MIN_STAGING, 1 << max(nbytes - 1, 0).bit_length())
        bufs = self.free.get(size)
        if bufs:
            return bufs.pop()
        buf = _Cuda.cuda.pinned_array(size, np.uint8)
        self.pinned_bytes += size
        return buf

    def give_back(self, buf):
        self.free.setdefault(buf.size, []).append(buf)

    def fusion_buffer(self, dtype, n):
        """A device buffer of ``n`` elements, reused across calls like the host one is."""
        buf = self.fusion_buffers.get(dtype)
        if buf is None or buf.size < n:
            buf = self.fusion_buffers[dtype] = _Cuda.cuda.device_array(n, dtype)
        return buf[:n]

    @staticmethod
    def _device_memory(buf):
        """What a CUDA-aware MPI gets for device array ``buf``: the array itself, after the
        device has finished the kernels queued on it (MPI does not know our stream). The
        simulator's device arrays wrap numpy arrays; MPI gets that numpy array, which is
        what a device pointer amounts to there."""
        _synchronize()
        if not buf.nbytes:
            return _EMPTY  # an empty slice may have no device pointer at all
        return buf._ary if _Cuda.sim else buf

    def _staged_out(self, buf):
        host = self.take(buf.nbytes)
        try:
            _to_host(host, buf)
        except BaseException:
            self.give_back(host)
            raise
        return host

    # -- the calls the algorithms make -----------------------------------------------------
    def isend(self, buf, dest, tag):
        if self.aware:
            return self.comm.isend(self._device_memory(buf), dest, tag)
        host = self._staged_out(buf)
        return _Staged(self.comm.isend(host[:buf.nbytes], dest, tag), self, host, None)

    def irecv(self, buf, source, tag):
        if self.aware:
            return self.comm.irecv(self._device_memory(buf), source, tag)
        host = self.take(buf.nbytes)
        return _Staged(self.comm.irecv(host[:buf.nbytes], source, tag), self, host, buf)

    def send(self, buf, dest, tag):
        if self.aware:
            self.comm.send(self._device_memory(buf), dest, tag)
            return
        host = self._staged_out(buf)
        try:
            self.comm.send(host[:buf.nbytes], dest, tag)
        finally:
            self.give_back(host)

    def recv(self, buf, source, tag):
        if self.aware:
            self.comm.recv(self._device_memory(buf), source, tag)
            return
        host = self.take(buf.nbytes)
        try:
            self.comm.recv(host[:buf.nbytes], source, tag)
            _to_device(buf, host)
        finally:
            self.give_back(host)

    def sendrecv(self, sendbuf, dest, recvbuf, source, tag):
        if self.aware:
            self.comm.sendrecv(self._device_memory(sendbuf), dest,
                               self._device_memory(recvbuf), source, tag)
            return
        out = self._staged_out(sendbuf)
        try:
            into = self.take(recvbuf.nbytes)
            try:
                self.comm.sendrecv(out[:sendbuf.nbytes], dest, into[:recvbuf.nbytes], source,
                                   tag)
                _to_device(recvbuf, into)
            finally:
                self.give_back(into)
        finally:
            self.give_back(out)

    def wait(self, request):
        if isinstance(request, _Staged):
            self.comm.wait(request.request)
            request.finish()
        else:
            self.comm.wait(request)

    def waitall(self, requests):
        if not requests:
            return
        self.comm.waitall([r.request if isinstance(r, _Staged) else r for r in requests])
        for r in requests:
            if isinstance(r, _Staged):
                r.finish()


def device_comm(c):
    """The :class:`DeviceComm` over the library's communicator ``c`` (made once, then kept
    on ``c`` with its pinned buffers; each thread that reduces uses its own ``c``)."""
    dc = c.__dict__.get("device_comm")
    if dc is None or dc.aware != cuda_aware():
        dc = c.__dict__["device_comm"] = DeviceComm(c, cuda_aware())
    return dc


# ---------------------------------------------------------------------------------------
# Validation

_KERNELS = {}


def kernels(op, dtype):
    """(reduce, scale or None) CUDA kernels for ``op`` on ``dtype``; the host path's rules,
    plus: no complex dtypes (the CUDA kernels have none)."""
    key = (op, dtype)
    got = _KERNELS.get(key)
    if got is not None:
        return got
    ck = _require_cuda().ck
    if dtype not in ar._DTYPE_CODE:
        raise TypeError(f"unsupported dtype {dtype}; expected one of "
                        f"{', '.join(str(d) for d in ar.DTYPES)}")
    if dtype not in ck.DTYPES:
        raise TypeError(f"unsupported dtype {dtype} for a CUDA device array; the CUDA kernels "
                        f"take {', '.join(str(d) for d in ck.DTYPES)}")
    if op == "avg" and dtype.kind in "iu":
        raise TypeError(f"op='avg' needs a floating or complex dtype, got {dtype}; "
                        "use op='sum' and divide, or cast first")
    if op == "avg":
        got = ck.reduce_kernel("sum", dtype), ck.scale_kernel(dtype)
    else:
        got = ck.reduce_kernel(op, dtype), None
    _KERNELS[key] = got
    return got


# The algorithms that talk only through the transport's point-to-point calls and so run on
# device buffers unchanged; any other (one on a shared-memory window) needs host memory.
DEVICE_ALGORITHMS = ("ring", "tree", "rhd", "doubling")


def _check_op_algorithm(op, algorithm):
    asked = algorithm
    algorithm = ar.check_op_algorithm(op, algorithm)
    if asked == "auto":
        # RINGREDUCE_ALGORITHM naming a host-only algorithm is meant for host arrays.
        return algorithm if algorithm in DEVICE_ALGORITHMS else "auto"
    if algorithm not in DEVICE_ALGORITHMS:
        raise ValueError(f"algorithm {algorithm!r} works on host memory only; for CUDA device "
                         f"arrays use one of auto, {', '.join(DEVICE_ALGORITHMS)}")
    return algorithm


def choose_device_algorithm(nbytes, p):
    """What "auto" runs on device buffers: the host's thresholds (``choose_algorithm``,
    measured on host memory; no device measurements yet), among DEVICE_ALGORITHMS."""
    if p == 1 or nbytes < ar.AUTO_SMALL_BYTES:
        return "doubling"
    if nbytes < ar.AUTO_RING_BYTES:
        return "rhd"
    return "ring"


def _run(dc, name, flat_in, flat_out, reduce, seg_bytes):
    """``_allreduce.run_algorithm`` over the device transport ``dc``."""
    if name == "auto":
        name = choose_device_algorithm(flat_in.nbytes, dc.size)
    ar.ALGORITHMS[name](dc, flat_in, flat_out, reduce,
                        max(1, seg_bytes // flat_in.dtype.itemsize))


def _shape(a):
    return tuple(int(s) for s in a.shape)


def _extent(a):
    """[start, stop) of the bytes ``a`` touches (empty arrays touch none)."""
    if a.size == 0:
        return 0, 0
    start = a._ary.ctypes.data if _Cuda.sim else a.device_ctypes_pointer.value
    lo = hi = start
    for n, stride in zip(a.shape, a.strides):
        if stride < 0:
            lo += (n - 1) * stride
        else:
            hi += (n - 1) * stride
    return lo, hi + a.dtype.itemsize


def _readonly(x):
    cai = getattr(x, "__cuda_array_interface__", None)
    return bool(cai and cai.get("data", (0, False))[1])


def _check_out(x, arr, out):
    """``(target device array or None, whether it is x's own memory)``."""
    if out is None:
        return None, False
    if out is x:
        target = arr
    else:
        if not is_device_array(out):
            raise TypeError(f"out must be a CUDA device array like x, got "
                            f"{type(out).__name__}")
        target = as_device(out, "out")
    if _shape(target) != _shape(arr) or target.dtype != arr.dtype:
        raise ValueError(f"out must have x's shape {_shape(arr)} and dtype {arr.dtype}, got "
                         f"shape {_shape(target)} and dtype {target.dtype}")
    if _readonly(out):
        raise ValueError("out must be writeable, got a read-only device array")
    if target is arr:
        return arr, True
    (lo, hi), (xlo, xhi) = _extent(target), _extent(arr)
    if lo < xhi and xlo < hi:
        if lo == xlo and tuple(target.strides) == tuple(arr.strides):
            return target, True
        raise ValueError("out overlaps x without being x itself; pass out=x for in place")
    return target, False


def _flat_in(a):
    """A 1-D contiguous device array holding ``a``'s elements: a view when ``a`` is
    contiguous, else a copy (Numba's ``setitem`` runs its strided copy kernel)."""
    if a.is_c_contiguous():
        return a.reshape(a.size)
    tmp = _Cuda.cuda.device_array(a.shape, a.dtype)
    tmp[:] = a
    return tmp.reshape(a.size)


def _flat_out(target, n, dtype):
    """Where a result goes: ``target``'s memory as 1-D when it is contiguous, else a new
    buffer (written back into ``target`` by :func:`_write_back`)."""
    if target is not None and target.is_c_contiguous():
        return target.reshape(n)
    return _Cuda.cuda.device_array(n, dtype)


def _shares(flat, target):
    """Whether the 1-D ``flat`` is ``target``'s own memory (not a contiguous copy of it)."""
    return target.size == 0 or _extent(flat) == _extent(target)


def _write_back(target, flat):
    """Copy the 1-D ``flat`` into ``target`` unless it is ``target``'s own memory."""
    if not _shares(flat, target):
        target[:] = flat.reshape(target.shape)


class _Call:
    """One rank's validated view of a device allreduce (``_allreduce._Call``'s twin)."""
    __slots__ = ("arr", "op", "algorithm", "seg_bytes", "reduce", "scale", "target", "same",
                 "sig")

    def __init__(self, x, op, algorithm, out, segment_bytes):
        arr = self.arr = as_device(x)
        self.algorithm = _check_op_algorithm(op, algorithm)
        self.op = op
        dtype = np.dtype(arr.dtype)
        self.reduce, self.scale = kernels(op, dtype)
        self.seg_bytes = segment_size(segment_bytes, dtype)
        self.target, self.same = _check_out(x, arr, out)
        cuda_aware()  # a bad RINGREDUCE_CUDA_AWARE must fail here, before the header
        self.sig = hash((arr.size, ar._DTYPE_CODE[dtype], ar.OPS.index(op),
                         ar.ALGORITHM_NAMES.index(self.algorithm), self.seg_bytes, _shape(arr),
                         _DEVICE_MARK)) & ar._MASK

    def describe(self):
        return {"call": "allreduce", "shape": _shape(self.arr), "dtype": str(self.arr.dtype),
                "op": self.op, "algorithm": self.algorithm, "segment_bytes": self.seg_bytes,
                "memory": "device"}


# ---------------------------------------------------------------------------------------
# allreduce

def allreduce_device(c, x, op, algorithm, out, segment_bytes):
    """``allreduce`` for a device array ``x`` over the library communicator ``c``.

    The header pass is the host one without payload (a device payload would need copies both
    ways to ride in it); then the algorithm every rank agreed on runs on device buffers.
    Returns a new Numba device array for ``out=None``, else ``out``.
    """
    try:
        call, local_error = _Call(x, op, algorithm, out, segment_bytes), None
    except Exception as exc:  # noqa: BLE001 - any local failure must reach every rank
        call, local_error = None, exc
    if call is None:
        ar._negotiate(c, 0, local_error, None)  # raises on every rank
    ar._negotiate(c, call.sig, None, call.describe())

    arr, target = call.arr, call.target
    flat_in = _flat_in(arr)
    # In place the output is the input object itself: the algorithms test identity.
    flat_out = flat_in if call.same else _flat_out(target, arr.size, arr.dtype)
    if arr.size:
        _run(device_comm(c), call.algorithm, flat_in, flat_out, call.reduce,
                         call.seg_bytes)
        if call.scale is not None:
            call.scale(flat_out, c.size)
    if target is not None:
        _write_back(target, flat_out)
    _synchronize()
    return flat_out.reshape(_shape(arr)) if target is None else out


# ---------------------------------------------------------------------------------------
# grouped_allreduce

def grouped_allreduce_device(c, arrays, op, algorithm, inplace, fusion_threshold,
                             segment_bytes):
    """``grouped_allreduce`` for a list of CUDA device arrays.

    As on the host: the header pass agrees on the whole list, then per dtype the tensors are
    fused into buckets of at most ``fusion_threshold`` bytes in a device fusion buffer
    (``kernels.cuda.pack``: one device-to-device copy per tensor), one allreduce per bucket.
    Returns new Numba device arrays, or with ``inplace=True`` the given arrays.
    """
    try:
        arrs, kerns, algorithm = _validate_group(arrays, op, algorithm, inplace)
        cap, seg = fusion_sizes(fusion_threshold, segment_bytes)
        sig = hash((len(arrs),
                    tuple((_shape(a), ar._DTYPE_CODE[np.dtype(a.dtype)]) for a in arrs),
                    ar.OPS.index(op), ar.ALGORITHM_NAMES.index(algorithm), cap, seg,
                    _DEVICE_MARK)) & ar._MASK
        local_error = None
    except Exception as exc:  # noqa: BLE001 - any local failure must reach every rank
        sig, local_error = 0, exc
    if local_error is not None:
        ar._negotiate(c, 0, local_error, None)  # raises on every rank
    ar._negotiate(c, sig, None, {
        "call": "grouped_allreduce", "tensors": len(arrs), "shapes": tuple(map(_shape, arrs)),
        "dtypes": tuple(str(a.dtype) for a in arrs), "op": op, "algorithm": algorithm,
        "fusion_threshold": cap, "segment_bytes": seg, "memory": "device"})
    dc = device_comm(c)
    outs = arrs if inplace else [_Cuda.cuda.device_array(a.shape, a.dtype) for a in arrs]
    # 1-D contiguous views of every input and output (copies for non-contiguous arrays).
    flats_in = [_flat_in(a) for a in arrs]
    flats_out = flats_in if inplace else [_flat_out(o, o.size, o.dtype) for o in outs]
    for dtype, idx in group_by_dtype(arrs).items():
        reduce, scale = kerns[dtype]
        for bucket in assign_buckets([arrs[i].nbytes for i in idx], cap):
            members = [idx[j] for j in bucket]
            reduce_bucket(dc, [flats_in[i] for i in members], [flats_out[i] for i in members],
                          dtype, reduce, scale, algorithm, seg)
    for o, f in zip(outs, flats_out):
        _write_back(o, f)
    _synchronize()
    return list(arrays) if inplace else outs


def _validate_group(arrays, op, algorithm, inplace):
    """Local checks of a device group: ``(device arrays, kernels per dtype, algorithm)``."""
    arrays = list(arrays)
    first = next(i for i, a in enumerate(arrays) if is_device_array(a))
    host = next((i for i, a in enumerate(arrays) if not is_device_array(a)), None)
    if host is not None:
        raise TypeError(f"grouped_allreduce takes host arrays or CUDA device arrays, not both: "
                        f"arrays[{first}] is a device array ({type(arrays[first]).__name__}) "
                        f"but arrays[{host}] is a {type(arrays[host]).__name__}")
    arrs = [as_device(a, f"arrays[{i}]") for i, a in enumerate(arrays)]
    algorithm = _check_op_algorithm(op, algorithm)
    kerns = {np.dtype(a.dtype): kernels(op, np.dtype(a.dtype)) for a in arrs}
    if inplace:
        for i, a in enumerate(arrays):
            if _readonly(a):
                raise ValueError(f"inplace=True needs writeable arrays; arrays[{i}] is "
                                 "read-only")
    cuda_aware()
    return arrs, kerns, algorithm


def reduce_bucket(dc, ins, outs, dtype, reduce, scale, algorithm, seg):
    """One bucket of 1-D contiguous device arrays: a lone tensor goes straight through, else
    pack, reduce in the fusion buffer, unpack. Returns the bytes reduced."""
    if len(ins) == 1:
        if ins[0].size:
            _run(dc, algorithm, ins[0], outs[0], reduce, seg)
            if scale is not None:
                scale(outs[0], dc.size)
        return ins[0].nbytes
    offsets, total = offsets_of(ins)
    if total == 0:
        return 0
    buf = dc.fusion_buffer(dtype, total)
    _Cuda.ck.pack(ins, buf, offsets)
    _run(dc, algorithm, buf, buf, reduce, seg)
    if scale is not None:
        scale(buf, dc.size)
    _Cuda.ck.unpack(buf, outs, offsets)
    return buf.nbytes


# ---------------------------------------------------------------------------------------
# allreduce_async: entries for the background engine, and the engine's device buckets

class DeviceEntry:
    """What the engine keeps of one device ``allreduce_async`` (``_engine._Entry``'s
    fields, which the engine reads, plus the target to write back)."""
    __slots__ = ("name", "arr", "flat_in", "flat_out", "target", "op", "algorithm", "seg",
                 "handle", "meta", "submitted", "ready_time")
    memory = "device"  # the engine fuses and reduces these apart from host entries


_device_lock = threading.Lock()


def allreduce_async_device(ch, x, op, name, algorithm, out, segment_bytes):
    """``allreduce_async`` for a device array: validate in the caller's thread, then hand
    the engine channel ``ch`` an entry whose buffers are device arrays. Returns the Handle."""
    from ._engine import Handle
    cu = _require_cuda()
    arr = as_device(x)
    algorithm = _check_op_algorithm(op, algorithm)
    kernels(op, np.dtype(arr.dtype))
    target, same = _check_out(x, arr, out)
    cuda_aware()
    device_id = getattr(cu.cuda.get_current_device(), "id", 0)
    with _device_lock:
        # The engine thread runs a channel's device work on one GPU, the one current when
        # the first device array was submitted (one GPU per rank: the data-parallel norm).
        known = ch.__dict__.setdefault("cuda_device", device_id)
    if known != device_id:
        raise ValueError(f"allreduce_async: the device arrays of one rank must be on one GPU; "
                         f"this one was submitted with GPU {device_id} current, earlier ones "
                         f"with GPU {known}")
    seg = segment_size(segment_bytes)
    e = DeviceEntry()
    e.name, e.arr, e.op, e.algorithm, e.target = ch.entry_name(name), arr, op, algorithm, target
    e.seg = seg
    # A non-contiguous x is copied now, as on the host.
    e.flat_in = _flat_in(arr)
    e.flat_out = e.flat_in if same else _flat_out(target, arr.size, arr.dtype)
    e.handle = Handle(name, e.flat_out.reshape(_shape(arr)) if target is None else out)
    e.meta = (_shape(arr), str(arr.dtype), op, algorithm, e.seg, "device")
    e.submitted = time.monotonic()
    # The engine thread reads x through MPI or a staging copy: the caller's kernels that
    # produce x, and the copy above, must be done by then.
    _synchronize()
    ch.submit(e)
    return e.handle


def engine_reduce_group(channel, group, dtype, op, algorithm, seg, cap, tl, queued):
    """On the engine thread: reduce ready device entries of one dtype, op, algorithm and
    segment size, in buckets of at most ``cap`` bytes (the twin of the host path's
    ``_Channel.reduce_bucket``; on the timeline, packing counts as part of ALLREDUCE)."""
    cu = _require_cuda()
    with cu.cuda.gpus[channel.__dict__.get("cuda_device", 0)]:
        dc = device_comm(channel.data)
        reduce, scale = kernels(op, dtype)
        for bucket in assign_buckets([e.flat_in.nbytes for e in group], cap):
            bucket = [group[j] for j in bucket]
            t0 = time.perf_counter()
            try:
                nbytes = reduce_bucket(dc, [e.flat_in for e in bucket],
                                       [e.flat_out for e in bucket], dtype, reduce, scale,
                                       algorithm, seg)
                for e in bucket:
                    if e.target is not None:
                        _write_back(e.target, e.flat_out)
                _synchronize()  # the result is complete before anyone can wait on it
            except Exception as exc:  # noqa: BLE001 - delivered to every waiting handle
                for e in bucket:
                    e.handle._finish(ar.RingReduceError(f"allreduce of {e.name!r} failed: "
                                                        f"{exc!r}"))
                continue
            for e in bucket:
                e.handle._finish()
            if tl is not None:
                t1 = time.perf_counter()
                for e in bucket:
                    tl.phase(e.name, "QUEUE", queued, t0)
                    tl.phase(e.name, "ALLREDUCE", t0, t1, algorithm=algorithm,
                             bucket_tensors=len(bucket), bucket_bytes=int(nbytes),
                             memory="device")
