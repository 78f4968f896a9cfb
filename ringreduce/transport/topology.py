"""Where this process sits, as Horovod's ``hvd.rank()``, ``hvd.size()``, ``hvd.local_rank()``
and ``hvd.local_size()`` say it: the usual way to give each rank of a node its own GPU is
``cuda.select_device(rr.local_rank())``.

``rank`` and ``size`` ask the communicator (local calls, any time). The node ranks come from
the split into nodes that ``algorithm="hierarchical"`` uses (:func:`levels`: the
ranks MPI says share memory, or pretend nodes of ``RINGREDUCE_LOCAL_SIZE`` consecutive ranks),
which is collective; :func:`ringreduce.init` makes it on every rank, so ``local_rank`` and
``local_size`` need ``init`` first and raise, rather than hang, without it (a rank that asked
on its own would wait for the others in the split).

*Node*: the ranks that share memory, as MPI reports them (``Split_type(COMM_TYPE_SHARED)``),
or, with ``RINGREDUCE_LOCAL_SIZE=k``, pretend nodes of k consecutive ranks (rank // k; the
last one smaller when k does not divide p), so two-level paths can be run and tested on one
machine. *Leader*: the lowest rank of a node. Nodes may differ in size, and need not be
consecutive ranks (launchers that place ranks round-robin give nodes like {0, 2}, {1, 3}).
"""
from mpi4py import MPI

from ..config import get_config
from . import comm as _comm
from .comm import Comm, get_comm, register


class Levels:
    """The two levels of one communicator: ``node`` (this rank's node, a :class:`Comm`,
    leader first) and ``leaders`` (one rank per node, a :class:`Comm` on leaders only, else
    None). ``local_size`` is what the split used (0: the nodes MPI reports; None: a node
    communicator given by the caller)."""

    def __init__(self, comm, node_mpi, local_size):
        # The sub-communicators come from the library's private duplicate, so their traffic
        # is already apart from the user's; the Comm wrapper duplicates them once more, and
        # the intermediate handles are freed. The wrapper is the caller's class, so a
        # PoliteComm (the background engine's) gets polite waits on both levels too.
        cls = type(comm) if isinstance(comm, Comm) else Comm
        self.local_size = local_size
        self.node = cls(node_mpi)
        node_mpi.Free()
        is_leader = self.node.rank == 0
        lead_mpi = comm.mpi.Split(0 if is_leader else MPI.UNDEFINED, comm.rank)
        self.leaders = None
        if is_leader:
            self.leaders = cls(lead_mpi)
            lead_mpi.Free()
        # Every node's size, leaders' order, on every rank (one allgather, once): the
        # layout this communicator runs on, for tests and for users to check their nodes.
        self.node_sizes = tuple(s for s in comm.mpi.allgather(
            self.node.size if is_leader else 0) if s)

    def free(self):
        """Free both communicators and what they hold (collective over ``comm``, like their
        creation); again, nothing."""
        self.node.free()
        if self.leaders is not None:
            self.leaders.free()


def split_nodes(comm, local_size):
    """This rank's node as an mpi4py communicator ordered by ``comm``'s ranks (collective):
    the MPI node for ``local_size`` 0, else ranks ``rank // local_size``."""
    if not isinstance(local_size, int) or local_size < 0:
        raise ValueError(f"local_size must be a whole number >= 0, got {local_size!r}")
    if local_size:
        return register(comm.mpi.Split(comm.rank // local_size, comm.rank))
    return register(comm.mpi.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank))


def levels(comm, local_size=None, node=None):
    """The :class:`Levels` of ``comm``, made at the first call and kept on it (collective
    when it makes them). The split: ``node`` (this rank's node, an mpi4py communicator from a
    ``Split`` of ``comm.mpi``, used and freed), else ``local_size``, else
    ``RINGREDUCE_LOCAL_SIZE``. Asking for a split again once the levels exist is an error,
    since the kept levels would silently win."""
    st = comm.state.levels
    if st is not None:
        if node is not None or (local_size is not None and local_size != st.local_size):
            asked = "a node communicator" if node is not None else f"local_size={local_size}"
            raise ValueError(f"the hierarchical levels of this communicator already exist "
                             f"(local_size={st.local_size}), got {asked}; "
                             "use a new communicator for another split")
        return st
    if node is None:
        if local_size is None:
            local_size = get_config().local_size
        node = split_nodes(comm, local_size)
    st = comm.state.levels = Levels(comm, node, local_size)
    return st


def split(comm):
    """The node split of ``comm`` for :func:`local_rank` (collective; ``init`` calls it),
    kept with the user's communicator (after a reset, rr.init() splits the new world again)."""
    _comm.comm_state(comm)["nodes"] = levels(get_comm(comm))


def _user(comm):
    return _comm.world() if comm is None else comm


def rank(comm=None):
    """This process's rank in ``comm`` (default: the world, ``MPI.COMM_WORLD`` until
    ``ringreduce.elastic`` shrinks it onto the survivors of a lost rank)."""
    return _user(comm).Get_rank()


def size(comm=None):
    """The number of ranks in ``comm`` (default: the world, as for :func:`rank`)."""
    return _user(comm).Get_size()


def _node(comm, what):
    got = _comm.comm_state(_user(comm)).get("nodes")
    if got is None:
        raise ValueError(f"rr.{what}() needs rr.init() on this communicator first: init is "
                         "collective and splits the ranks into nodes once, on every rank")
    return got.node


def local_rank(comm=None):
    """This process's rank among the ranks of ``comm`` on its node (after ``rr.init(comm)``)."""
    return _node(comm, "local_rank").rank


def local_size(comm=None):
    """The number of ranks of ``comm`` on this node (after ``rr.init(comm)``)."""
    return _node(comm, "local_size").size
