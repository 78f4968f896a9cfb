"""The thin transport the algorithms talk through.

Each user communicator gets one private duplicate (``Dup``), made on first use and kept until
the user frees that communicator (``_freed``), so the library's messages can never match a
receive of the user's (mpi4jax does the same). Buffers travel as raw bytes (``MPI.BYTE``),
so every numpy dtype, float16 and complex included, moves the same way without an MPI
datatype per dtype.

*World*: the communicator that ``comm=None`` means, everywhere in the library (collectives,
the engine, ``rr.rank()`` and ``rr.size()``): ``MPI.COMM_WORLD`` until :func:`reset` names
another, as ``ringreduce.elastic`` does with the survivors' communicator after a rank died.

Lost ranks (``fault.py``): every communicator the library makes is registered here, so that
a collective that meets a dead rank (:func:`detects_failures`) can revoke all of them that
hold it, and ranks blocked in another of them wake up too; :func:`reset` forgets them all.
"""
import functools
import inspect
import time
import traceback

from mpi4py import MPI

from ..config import check_agreement
from . import fault


class CommState:
    """What the layers above keep per library communicator, declared in one place instead
    of attributes stuck onto :class:`Comm` by each of them:

    - ``header``: the header pass's plan and buffers (``collectives/header.py``);
    - ``levels``: the node and leader communicators (``transport/topology.py``);
    - ``shm``: the shared-memory window and its node layout (``algorithms/shm.py``);
    - ``direct``: the node's processes for cross-memory copies, and scratch
      (``algorithms/direct.py``);
    - ``fusion``: fusion and compression buffers by ``(memory, purpose, dtype)`` (``memory/``);
    - ``results``: the blocks of out-of-place grouped results (``memory/pool.py``);
    - ``device``: the device transport with its pinned staging buffers
      (``transport/device.py``);
    - ``choices``: what "auto" chose, by (memory, bytes) (``collectives/run.py``);
    - ``races``: "auto"'s races between shm and the ring, by (memory, size class, dtype)
      (``core/adapt.py``, run from ``collectives/run.py``).
    """
    __slots__ = ("header", "levels", "shm", "direct", "fusion", "results", "device",
                 "choices", "races")

    def __init__(self):
        self.header = self.levels = self.shm = self.direct = self.results = self.device = None
        self.fusion = {}
        self.choices = {}
        self.races = {}

    def free(self):
        """Free the MPI objects the layers keep here (those with a ``free`` method: windows,
        sub-communicators, datatypes), in slot order, the same on every rank; collective over
        the communicator, as their creation was. Every slot is then as new."""
        for slot in self.__slots__:
            held = getattr(self, slot)
            if hasattr(held, "free"):
                held.free()
        self.__init__()


def kept(comm, slot, make):
    """``comm.state``'s ``slot``, made by ``make(comm)`` on first use (collective where
    ``make`` is) and then kept."""
    got = getattr(comm.state, slot)
    if got is None:
        got = make(comm)
        setattr(comm.state, slot, got)
    return got


class Comm:
    """A duplicated mpi4py communicator plus the few point-to-point calls algorithms use."""

    def __init__(self, mpi_comm):
        self.user = mpi_comm
        self.group = mpi_comm.Get_group()
        self.mpi = private_dup(mpi_comm)
        self.rank = self.mpi.Get_rank()
        self.size = self.mpi.Get_size()
        self.left = (self.rank - 1) % self.size
        self.right = (self.rank + 1) % self.size
        self.state = CommState()
        # Every rank on one host (agreed when the library makes its communicator, _new_comm);
        # False on communicators made otherwise. Only a speed choice depends on it.
        self.one_host = self.size == 1

    def free(self):
        """Free the duplicate and everything its state holds (collective, like its making).
        Freeing it twice does nothing."""
        if self.mpi == MPI.COMM_NULL:
            return
        self.state.free()
        self.group.Free()
        self.mpi.Free()

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

    def exchange(self, smsg, rmsg, peer, tag):
        """``sendrecv`` with one ``peer``, of messages already made by :func:`message`
        (the header pass keeps its own: 0.1 us less a call than making them each time)."""
        self.mpi.Sendrecv(smsg, peer, tag, rmsg, peer, tag)

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

    def exchange(self, smsg, rmsg, peer, tag):
        self.waitall([self.mpi.Irecv(rmsg, peer, tag), self.mpi.Isend(smsg, peer, tag)])


def message(buf):
    """``buf`` as the raw-bytes message specification :meth:`Comm.exchange` takes."""
    return [buf, MPI.BYTE]


_LIBRARY = MPI.get_vendor()[0]  # "MPICH", "Open MPI", ...: some choices of "auto" depend on it


def mpi_library():
    """The name of the MPI library this process runs on, as ``MPI.get_vendor()`` says."""
    return _LIBRARY


# What the library keeps per user communicator lives in an MPI attribute of that
# communicator (comm_state), not in a table keyed by its handle: MPI reuses a freed
# communicator's handle for a new one on some ranks and not others, so a table by handle
# sent some ranks to a new duplicate (a collective) and others to the freed one's, and the
# job hung. An attribute is the communicator's own: a new communicator has none on every
# rank, any wrapper of the same communicator finds it, and MPI drops it when the user frees
# the communicator (on every rank: freeing is collective).
_KEYVAL = None  # the attribute's key, made on first use
_generation = 0  # bumped by reset(): attributes of an older generation count as absent
_served = {}  # id(user communicator) -> (that mpi4py object, its state): the hot path
_made = []  # every mpi4py communicator the library made and has not forgotten (for revoking)
_world = MPI.COMM_WORLD  # what comm=None means; see world() and reset()
_world_comm = None  # get_comm(None), once made; forgotten by reset()
# Called by reset(): layers that keep state of their own outside comm_state (the live
# shared-memory windows) register here how to forget it.
on_reset = []
# Called with a communicator's state (the dict comm_state returned) when the user frees it.
on_free = []


# What comm_state holds that is freed with the user's communicator: the collectives' Comm
# (its duplicate, windows and sub-communicators), the control duplicate and rr.init's node
# split (the collectives' own levels). Not the engine's channel: the background thread may
# be inside it, so it lives until reset or exit.
_FREED_WITH_USER = ("collectives", "control", "nodes")


def _freed(comm, keyval, value):
    """MPI's delete callback for the attribute: the user freed ``comm`` (or reset() replaced
    the attribute). What the library made for it goes too, inside the user's MPI_Comm_free,
    which every rank of ``comm`` calls, so the frees are collective where they must be
    (before, a loop of Split, one 1 MiB allreduce and Free ran out of MPICH's communicator
    ids after 511 rounds). Kept, not freed: the engine's channel (see _FREED_WITH_USER), what
    an older generation made (reset() replaced the attribute; its communicators may hold a
    dead rank, and this call is local), anything under ULFM (a freed communicator may hold a
    dead rank, and freeing a window waits for every rank), and COMM_WORLD's and COMM_SELF's
    (MPI_Finalize deletes their attributes)."""
    generation, state = value
    for key, (_user, st) in list(_served.items()):
        if st is state:
            del _served[key]
    for forget in on_free:
        try:
            forget(state)
        except Exception:  # a callback inside MPI_Comm_free must not raise
            pass
    if (generation != _generation or fault.ENABLED or comm == MPI.COMM_WORLD
            or comm == MPI.COMM_SELF):
        return
    try:
        for purpose in _FREED_WITH_USER:
            made = state.pop(purpose, None)
            if isinstance(made, MPI.Comm):
                made.Free()
            elif made is not None:
                made.free()
    except Exception:  # noqa: BLE001 - inside MPI_Comm_free: report, never raise into MPI
        traceback.print_exc()


def comm_state(comm):
    """The library's state for user communicator ``comm`` (an mpi4py communicator): a dict by
    purpose, kept as an attribute of the communicator itself, so every rank finds the same
    (empty on a new communicator, whatever handle MPI gave it). Local."""
    global _KEYVAL
    if comm == MPI.COMM_NULL:
        raise ValueError("comm is MPI.COMM_NULL: expected a communicator this rank belongs "
                         "to (a freed one, or this rank's result of Split with "
                         "MPI.UNDEFINED, is COMM_NULL)")
    if _KEYVAL is None:
        _KEYVAL = MPI.Comm.Create_keyval(delete_fn=_freed)
    got = comm.Get_attr(_KEYVAL)
    if got is None or got[0] != _generation:
        got = (_generation, {})
        comm.Set_attr(_KEYVAL, got)
    return got[1]


def world():
    """The communicator that ``comm=None`` means: ``MPI.COMM_WORLD`` unless :func:`reset`
    named another."""
    return _world


def register(mpi_comm):
    """Note a communicator the library made (a duplicate, a split), so that a lost rank in it
    revokes it; returns it. In ULFM mode it returns errors (``MPI.ERRORS_RETURN``, which
    mpi4py raises as exceptions) whatever the communicator it came from does."""
    if fault.ENABLED:
        mpi_comm.Set_errhandler(MPI.ERRORS_RETURN)
    _made[:] = [c for c in _made if c != MPI.COMM_NULL]  # freed since (Levels.free, shm)
    _made.append(mpi_comm)
    return mpi_comm


def private_dup(mpi_comm):
    """A registered duplicate of ``mpi_comm`` (collective)."""
    return register(mpi_comm.Dup())


def revoke_holding(failed):
    """Revoke every communicator the library made, and every user communicator it serves,
    that holds a member of ``failed`` (an MPI group): ranks waiting in any of them, on any
    rank, get ``MPI_ERR_REVOKED`` instead of waiting for ever. Local, never raises."""
    if not failed.Get_size():
        return
    users = [entry[0] for entry in list(_served.values())]
    for c in list(_made) + users:
        try:
            if c != MPI.COMM_NULL and not c.Is_revoked() and fault.ranks_in(failed, c):
                c.Revoke()
        except MPI.Exception:
            pass  # freed or broken already: nothing left to wake


def rank_failed(exc, what, user_comm=None):
    """The :class:`~ringreduce.errors.RankFailedError` that MPI error ``exc``, met in the
    collective ``what`` on ``user_comm`` (None: the world), stands for, after revoking the
    communicators that hold the failed ranks; None if ``exc`` is not a process failure."""
    kind = fault.failure_class(exc)
    if kind is None:
        return None
    comm = user_comm if isinstance(user_comm, MPI.Comm) else _world
    if isinstance(user_comm, Comm):
        comm = user_comm.user
    failed = fault.failed_group(comm)
    revoke_holding(failed)
    return fault.rank_failed_error(what, kind, fault.ranks_in(failed, comm), comm)


def detects_failures(fn):
    """Decorate a public collective: under ULFM, an MPI error saying a rank is gone, raised
    anywhere inside the call (the header pass, an algorithm, a duplicate being made), leaves
    it as :class:`~ringreduce.errors.RankFailedError` naming the failed ranks of the call's
    ``comm``. One try block per call, so the success path costs nothing per message. Without
    ULFM (``fault.ENABLED`` false) ``fn`` itself is returned: nothing changes."""
    if not fault.ENABLED:
        return fn
    signature = inspect.signature(fn)
    what = fn.__qualname__.replace(".__init__", "")  # GradSync.__init__ -> GradSync

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MPI.Exception as exc:
            try:
                comm = signature.bind(*args, **kwargs).arguments.get("comm")
            except TypeError:
                comm = None
            error = rank_failed(exc, what, comm)
            if error is None:
                raise
            raise error from exc
    return call


def reset(new_world=None):
    """Start afresh on ``new_world`` (default ``MPI.COMM_WORLD``), the communicator that
    ``comm=None`` means from now on: forget every private duplicate and what the layers
    above kept per communicator (``on_reset``), so the next call of each kind makes new ones
    (collectively, as at start-up). Local. Nothing old is freed: freeing is collective, and
    the old communicators may hold a dead rank. ``ringreduce.elastic`` calls it after
    shrinking the world; the background engine has its own ``ENGINE.reset``."""
    global _world, _world_comm, _generation
    _generation += 1
    _served.clear()
    _made.clear()
    _world_comm = None
    _world = MPI.COMM_WORLD if new_world is None else new_world
    for forget in on_reset:
        forget()


def _private(comm, purpose, make):
    """``make(comm)``, made once per user communicator and purpose (collective where ``make``
    is, on every rank alike: see comm_state) and then kept."""
    state = comm_state(comm)
    made = state.get(purpose)
    if made is None:
        made = state[purpose] = make(comm)
    _served[id(comm)] = (comm, state)
    return made


def _new_comm(comm):
    wrapped = Comm(comm)
    # The first collective on a communicator: make sure every rank runs with the same
    # settings before any schedule depends on them.
    check_agreement(wrapped.mpi)
    # Whether every rank runs on one host, by processor name (a choice of speed only: how
    # large an "auto" call still rides in the header, core/choose.py), agreed here, before
    # any call, so it never needs a collective where ranks might disagree.
    wrapped.one_host = len(set(wrapped.mpi.allgather(MPI.Get_processor_name()))) == 1
    return wrapped


def get_comm(comm=None):
    """The library's private :class:`Comm` for a user communicator (default: the world).

    The first call on a communicator is collective (it duplicates it), as is every allreduce.
    """
    global _world_comm
    if comm is None or comm is _world:  # COMM_WORLD passed explicitly: the same duplicate
        if _world_comm is not None:  # the commonest case, checked first: it is hot
            return _world_comm
        _world_comm = _private(_world, "collectives", _new_comm)
        return _world_comm
    if isinstance(comm, Comm):
        return comm
    cached = _served.get(id(comm))
    if cached is not None and cached[0] is comm:  # the common case, checked first: it is hot
        made = cached[1].get("collectives")
        if made is not None:
            return made
    return _private(comm, "collectives", _new_comm)


def control_comm(comm=None):
    """A second private duplicate of ``comm`` (an mpi4py communicator), for a layer's own
    small collectives such as ``broadcast_parameters``: they can then never match messages
    of an allreduce that the background engine drives on the same user communicator."""
    return _private(_world if comm is None else comm, "control", private_dup)
