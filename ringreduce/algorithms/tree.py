r"""Tree allreduce: a binomial-tree reduce to rank 0, then a binomial-tree broadcast.

    p = 6, binomial tree rooted at 0           reduce (up)        broadcast (down)
            0                                 round 1: 1->0 3->2 5->4   round 1: 0->4
          / | \                               round 2: 2->0             round 2: 0->2 4->5
         4  2  1                              round 3: 4->0             round 3: 0->1 2->3
         |  |
         5  3

Each rank receives from its children (smallest subtree first), reduces into its own copy and
sends the partial result to its parent; the root then sends the total back down the same tree.
Only the root computes the final value and everyone else copies it, so the result is
bitwise identical on every rank.

The vector moves in *segments*: a rank forwards segment k up the tree as soon as it is reduced,
while segment k + 1 is still arriving, so long messages pipeline through the tree.

Cost (alpha per message, beta per byte sent, gamma per byte reduced; n bytes):
    2 lg p alpha  +  2 n lg p beta  +  n lg p gamma      (unsegmented)
lg p latencies each way make it good for small messages; the n lg p bandwidth term makes it
poor for large ones, where the ring's 2 n (p - 1) / p is far smaller.
"""
from ..transport.tags import TAG_BCAST, TAG_REDUCE
from ..memory.buffers import copy_into, scratch_like
from ..core.schedule import binomial_tree, segment_bounds


def tree(comm, sendbuf, recvbuf, reduce, segment_elems):
    if comm.size == 1:
        if recvbuf is not sendbuf:
            copy_into(recvbuf, sendbuf)
        return
    tree_reduce(comm, sendbuf, recvbuf, reduce, segment_elems)
    tree_broadcast(comm, recvbuf, 0, segment_elems)


def tree_reduce(comm, sendbuf, recvbuf, reduce, segment_elems):
    """Binomial-tree reduce of every rank's ``sendbuf`` into ``recvbuf`` on rank 0, segment
    by segment. Elsewhere ``recvbuf`` is scratch (a broadcast overwrites it); ``sendbuf`` is
    only read. Each rank reduces its children nearest first, so every run adds in one order."""
    if comm.size == 1:
        if recvbuf is not sendbuf:
            copy_into(recvbuf, sendbuf)
        return
    parent, children = binomial_tree(comm.rank, comm.size)
    segs = segment_bounds(0, sendbuf.size, segment_elems)
    if not children:
        # A leaf sends its input as it is: no copy into recvbuf.
        comm.waitall([comm.isend(sendbuf[lo:hi], parent, TAG_REDUCE) for lo, hi in segs])
        return
    if recvbuf is not sendbuf:
        copy_into(recvbuf, sendbuf)
    up = children[::-1]  # nearest child first: its subtree is ready first
    # One scratch buffer per child, so every child's receives can be posted at once.
    scratch = [scratch_like(sendbuf, sendbuf.size) for _ in up]
    recvs = [[comm.irecv(buf[lo:hi], child, TAG_REDUCE) for lo, hi in segs]
             for buf, child in zip(scratch, up)]
    sends = []
    for k, (lo, hi) in enumerate(segs):
        for j in range(len(up)):
            comm.wait(recvs[j][k])
            reduce(recvbuf[lo:hi], scratch[j][lo:hi])
        if parent is not None:
            sends.append(comm.isend(recvbuf[lo:hi], parent, TAG_REDUCE))
    comm.waitall(sends)  # recvbuf is about to be overwritten by the broadcast


def tree_broadcast(comm, buf, root, segment_elems):
    """Binomial-tree broadcast of ``buf`` from ``root``, segment by segment: a rank forwards
    a segment to its children as soon as it has it, so segments pipeline down the tree."""
    if comm.size == 1:
        return
    parent, children = binomial_tree(comm.rank, comm.size, root)
    segs = segment_bounds(0, buf.size, segment_elems)
    if parent is not None:
        recvs = [comm.irecv(buf[lo:hi], parent, TAG_BCAST) for lo, hi in segs]
    sends = []
    for k, (lo, hi) in enumerate(segs):
        if parent is not None:
            comm.wait(recvs[k])
        for child in children:
            sends.append(comm.isend(buf[lo:hi], child, TAG_BCAST))
    comm.waitall(sends)
