"""The allreduce algorithms, one function per module, all with one signature::

    algorithm(comm, sendbuf, recvbuf, reduce, segment_elems) -> None

``comm`` is a :class:`ringreduce.transport.comm.Comm` (or the device transport); ``sendbuf`` and ``recvbuf`` are 1-D contiguous
arrays of one dtype and length (``recvbuf is sendbuf`` means in place; the input is otherwise
never written); ``reduce(dst, src)`` is the kernel for the op; ``segment_elems`` bounds one
message. The caller has already checked that every rank agrees on all of it.
"""
from .direct import direct
from .doubling import doubling
from .hierarchical import hierarchical
from .rhd import rhd
from .ring import ring
from .shm import shm
from .tree import tree

ALGORITHMS = {"ring": ring, "tree": tree, "rhd": rhd, "doubling": doubling,
              "shm": shm, "hierarchical": hierarchical, "direct": direct}
