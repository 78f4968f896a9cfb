"""Where this process sits, as Horovod's ``hvd.rank()``, ``hvd.size()``, ``hvd.local_rank()``
and ``hvd.local_size()`` say it: the usual way to give each rank of a node its own GPU is
``cuda.select_device(rr.local_rank())``.

``rank`` and ``size`` ask the communicator (local calls, any time). The node ranks come from
the split into nodes that ``algorithm="hierarchical"`` uses (``hierarchical.levels``: the
ranks MPI says share memory, or pretend nodes of ``RINGREDUCE_LOCAL_SIZE`` consecutive ranks),
which is collective; :func:`ringreduce.init` makes it on every rank, so ``local_rank`` and
``local_size`` need ``init`` first and raise, rather than hang, without it (a rank that asked
on its own would wait for the others in the split).
"""
from mpi4py import MPI

from ._comm import get_comm
from .algorithms.hierarchical import levels

_nodes = {}  # user communicator handle -> its hierarchical Levels


def split(comm):
    """The node split of ``comm`` for :func:`local_rank` (collective; ``init`` calls it)."""
    _nodes[comm.handle] = levels(get_comm(comm))


def _user(comm):
    return MPI.COMM_WORLD if comm is None else comm


def rank(comm=None):
    """This process's rank in ``comm`` (default COMM_WORLD)."""
    return _user(comm).Get_rank()


def size(comm=None):
    """The number of ranks in ``comm`` (default COMM_WORLD)."""
    return _user(comm).Get_size()


def _node(comm, what):
    got = _nodes.get(_user(comm).handle)
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
