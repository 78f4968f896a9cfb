"""The thin transport the algorithms talk through.

Each user communicator gets one private duplicate (``Dup``), made on first use and kept for
the life of the process, so the library's messages can never match a receive of the user's
(mpi4jax does the same). Buffers travel as raw bytes (``MPI.BYTE``), so every numpy dtype,
float16 and complex included, moves the same way without an MPI datatype per dtype.
"""
import time

from mpi4py import MPI

from ..config import check_agreement


class CommState:
    """What the layers above keep per library communicator, declared in one place instead
    of attributes stuck onto :class:`Comm` by each of them:

    - ``header``: the header pass's plan and buffers (``collectives/header.py``);
    - ``levels``: the node and leader communicators (``transport/topology.py``);
    - ``shm``: the shared-memory window and its node layout (``algorithms/shm.py``);
    - ``fusion``: fusion buffers by ``(memory, dtype)`` (``memory/``);
    - ``device``: the device transport with its pinned staging buffers
      (``transport/device.py``).
    """
    __slots__ = ("header", "levels", "shm", "fusion", "device")

    def __init__(self):
        self.header = self.levels = self.shm = self.device = None
        self.fusion = {}


class Comm:
    """A duplicated mpi4py communicator plus the few point-to-point calls algorithms use."""

    def __init__(self, mpi_comm):
        self.user = mpi_comm
        self.group = mpi_comm.Get_group()
        self.mpi = mpi_comm.Dup()
        self.rank = self.mpi.Get_rank()
        self.size = self.mpi.Get_size()
        self.left = (self.rank - 1) % self.size
        self.right = (self.rank + 1) % self.size
        self.state = CommState()

    def isend(self, buf, dest, tag):
        return self.mpi.Isend([buf, MPI.BYTE], dest, tag)

    def irecv(self, buf, source, tag):
        return self.mpi.Irecv([buf, MPI.BYTE], source, tag)

    def send(self, buf, dest, tag):
        self.mpi.Send([buf, MPI.BYTE], dest, tag)

    def recv(self, buf, source, tag):
        self.mpi.Recv([buf, MPI.BYTE], source, tag)

    def sendrecv(self, sendbuf, dest, recvbuf, source, tag):
        self.mpi.Sendrecv([sendbuf, MPI.BYTE], dest, tag, [recvbuf, MPI.BYTE], source, tag)

    def waitall(self, requests):
        if requests:
            MPI.Request.Waitall(requests)

    def wait(self, request):
        request.Wait()


class PoliteComm(Comm):
    """A :class:`Comm` whose waits poll and sleep instead of spinning inside MPI.

    Used by the background engine: a blocking MPI wait spins a core at 100%, and on a box
    where every core also runs a rank's compute, that spin takes the core the caller's
    forward/backward pass needs. Polling ``Test`` (which also drives MPI's progress, the
    copies through shared memory) with short sleeps leaves it most of that core. The sleep
    is ``POLL_SLEEP`` seconds; see docs/benchmarks.md ("Overlap") for the measurement.
    """
    POLL_SLEEP = 50e-6

    def wait(self, request):
        while not request.Test():
            time.sleep(self.POLL_SLEEP)

    def waitall(self, requests):
        if requests:
            while not MPI.Request.Testall(requests):
                time.sleep(self.POLL_SLEEP)

    def send(self, buf, dest, tag):
        self.wait(self.isend(buf, dest, tag))

    def recv(self, buf, source, tag):
        self.wait(self.irecv(buf, source, tag))

    def sendrecv(self, sendbuf, dest, recvbuf, source, tag):
        self.waitall([self.irecv(recvbuf, source, tag), self.isend(sendbuf, dest, tag)])


_dups = {}  # (user communicator handle, purpose) -> (user comm, its group, duplicate)


def _private(comm, purpose, make):
    """``make(comm)``, made once per user communicator and purpose and then kept."""
    key = (comm.handle, purpose)
    cached = _dups.get(key)
    if cached is not None:
        # A freed communicator's handle can be reused by a new one: only reuse the duplicate
        # when the group is the same (a local call, no messages).
        user, group, made = cached
        if user is comm or MPI.Group.Compare(group, comm.Get_group()) == MPI.IDENT:
            return made
    made = make(comm)
    _dups[key] = (comm, comm.Get_group(), made)
    return made


def _new_comm(comm):
    wrapped = Comm(comm)
    # The first collective on a communicator: make sure every rank runs with the same
    # settings before any schedule depends on them.
    check_agreement(wrapped.mpi)
    return wrapped


def get_comm(comm=None):
    """The library's private :class:`Comm` for a user communicator (default COMM_WORLD).

    The first call on a communicator is collective (it duplicates it), as is every allreduce.
    """
    if comm is None:
        comm = MPI.COMM_WORLD
    if isinstance(comm, Comm):
        return comm
    cached = _dups.get((comm.handle, "collectives"))
    if cached is not None and cached[0] is comm:  # the common case, checked first: it is hot
        return cached[2]
    return _private(comm, "collectives", _new_comm)


def control_comm(comm=None):
    """A second private duplicate of ``comm`` (an mpi4py communicator), for a layer's own
    small collectives such as ``broadcast_parameters``: they can then never match messages
    of an allreduce that the background engine drives on the same user communicator."""
    return _private(MPI.COMM_WORLD if comm is None else comm, "control", lambda c: c.Dup())
