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
    if recvbuf is not sendbuf:
        copy_into(recvbuf, sendbuf)
    if comm.size == 1:
        return
    parent, children = binomial_tree(comm.rank, comm.size)
    segs = segment_bounds(0, sendbuf.size, segment_elems)
    up_children = children[::-1]  # nearest child first: its subtree is ready first
    if children:
        # One scratch buffer per child, so every child's receives can be posted at once.
        scratch = [scratch_like(sendbuf, sendbuf.size) for _ in children]
        recvs = [[comm.irecv(buf[lo:hi], child, TAG_REDUCE) for lo, hi in segs]
                 for buf, child in zip(scratch, up_children)]
    sends = []
    for k, (lo, hi) in enumerate(segs):
        for j in range(len(up_children)):
            comm.wait(recvs[j][k])
            reduce(recvbuf[lo:hi], scratch[j][lo:hi])
        if parent is not None:
            sends.append(comm.isend(recvbuf[lo:hi], parent, TAG_REDUCE))
    comm.waitall(sends)  # recvbuf is about to be overwritten by the broadcast

    sends = []
    if parent is not None:
        recvs = [comm.irecv(recvbuf[lo:hi], parent, TAG_BCAST) for lo, hi in segs]
    for k, (lo, hi) in enumerate(segs):
        if parent is not None:
            comm.wait(recvs[k])
        for child in children:
            sends.append(comm.isend(recvbuf[lo:hi], child, TAG_BCAST))
    comm.waitall(sends)
