"""The device transport: ``Comm``'s point-to-point calls on CUDA device buffers.

With a CUDA-aware MPI it hands device array slices straight to MPI (mpi4py accepts
``__cuda_array_interface__`` buffers). Otherwise it *stages*: a send copies the segment into a
pinned host buffer and sends that; a receive lands in a pinned buffer and is copied to the
device when it is waited for. Pinned memory because only page-locked memory can be DMA'd
directly and copied at full PCIe/NVLink bandwidth. Staging happens per message, and the
algorithms send one segment per message, so the copy of one segment overlaps the MPI transfer
of the next (the ring and the tree already pipeline per segment). Every message is the same
bytes either way, so ranks that stage and ranks that do not can share a call.

Staging memory. Each message in flight holds one pinned buffer, returned to a per-
communicator pool when its request completes, so repeated calls pin nothing new. The pool
keeps the peak of one call: about the vector's size for the ring, whose allgather posts all
its receives at once, and one vector per child for the tree.

CUDA-aware MPI is detected with ``MPIX_Query_cuda_support`` (MPICH and Open MPI export it);
``RINGREDUCE_CUDA_AWARE=1`` or ``0`` overrides that (for an MPI that is CUDA-aware but lacks
the query, such as MVAPICH2-GDR, or to force staging). Under Numba's CUDA simulator the
"device" arrays are numpy arrays, staging is the default and goes through the same copy calls.

With a CUDA-aware MPI, MPI does not know our stream, so the device is synchronised before
each MPI call that touches device memory; copies from the device to pinned memory return when
done, so MPI never reads a buffer a kernel is still writing.
"""
import ctypes

import numpy as np

from ..config import cuda_aware_setting
from ..gpu import Cuda, require_cuda, synchronize

# Pinned staging buffers come in power-of-two sizes from 64 KiB, so segments of one size
# share one free list and a call reuses the buffers of the call before. Smaller classes
# would only multiply the lists; a message that small costs its latency, not its copy.
_MIN_STAGING = 64 << 10


# ---------------------------------------------------------------------------------------
# CUDA-aware MPI

_aware = {}


def cuda_aware():
    """Whether MPI takes device pointers: ``RINGREDUCE_CUDA_AWARE`` (1, 0, or auto, the
    default), else what the MPI library says. ValueError for any other value of the variable.
    Asked in the validation of every device call, before the ranks compare headers, so a bad
    value raises on every rank instead of leaving the others waiting."""
    setting = cuda_aware_setting()
    if setting is not None:
        return setting
    got = _aware.get("auto")
    if got is None:
        got = _aware["auto"] = _query_cuda_support()
    return got


def _query_cuda_support():
    """``MPIX_Query_cuda_support()`` of the MPI library mpi4py loaded (MPICH >= 4 and Open MPI
    export it): 1 only when the library was built with CUDA and has it enabled at run time.
    False where the symbol is missing, and always under the simulator, whose "device" memory
    is host memory that no MPI needs told about."""
    if require_cuda().sim:
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
        if Cuda.sim:
            dev.copy_to_host(host[:dev.nbytes].view(dev.dtype))
        else:  # straight to the driver: Numba's copy_to_host costs far more host time
            Cuda.driver.device_to_host(host, dev, dev.nbytes)


def _to_device(dev, host):
    """Copy the uint8 host buffer ``host`` into device array ``dev``. From pinned memory the
    copy is complete when the call returns, so ``host`` can be reused at once."""
    if dev.nbytes:
        if Cuda.sim:
            dev.copy_to_device(host[:dev.nbytes].view(dev.dtype))
        else:
            Cuda.driver.host_to_device(dev, host, dev.nbytes)


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

    # -- staging buffers -----------------------------------------------------------------
    def take(self, nbytes):
        size = max(_MIN_STAGING, 1 << max(nbytes - 1, 0).bit_length())
        bufs = self.free.get(size)
        if bufs:
            return bufs.pop()
        buf = Cuda.cuda.pinned_array(size, np.uint8)
        self.pinned_bytes += size
        return buf

    def give_back(self, buf):
        self.free.setdefault(buf.size, []).append(buf)

    @staticmethod
    def _device_memory(buf):
        """What a CUDA-aware MPI gets for device array ``buf``: the array itself, after the
        device has finished the kernels queued on it (MPI does not know our stream). The
        simulator's device arrays wrap numpy arrays; MPI gets that numpy array, which is
        what a device pointer amounts to there."""
        synchronize()
        if not buf.nbytes:
            return _EMPTY  # an empty slice may have no device pointer at all
        return buf._ary if Cuda.sim else buf

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
    dc = c.state.device
    if dc is None or dc.aware != cuda_aware():
        dc = c.state.device = DeviceComm(c, cuda_aware())
    return dc
