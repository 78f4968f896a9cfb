r"""Hierarchical (two-level) allreduce: reduce inside each node, allreduce across one leader
per node, broadcast inside each node.

    N = 3 nodes of k = 2 ranks              1. reduce to the leader (binomial tree, node comm)
      node A: 0* 1      node B: 2* 3           1 -> 0      3 -> 2      5 -> 4
      node C: 4* 5      (* = leader)        2. allreduce among the leaders 0, 2, 4 (leader comm)
                                               ring, rhd or doubling, chosen by size
                                            3. broadcast from the leader (binomial tree)
                                               0 -> 1      2 -> 3      4 -> 5

*Node*: the ranks that share memory, as MPI reports them (``Split_type(COMM_TYPE_SHARED)``),
or, with ``RINGREDUCE_LOCAL_SIZE=k``, pretend nodes of k consecutive ranks (rank // k; the
last one smaller when k does not divide p), so the two-level path can be run and tested on
one machine. *Leader*: the lowest rank of a node. Nodes may differ in size, and need not be
consecutive ranks (launchers that place ranks round-robin give nodes like {0, 2}, {1, 3}).

Only the leaders compute the final value, with an algorithm that leaves every leader with
the same bits, and every other rank receives a copy: the result is bitwise identical on every
rank. Steps 1 and 3 move the vector in *segments* of at most ``segment_elems``, so a segment
is forwarded up (or down) the tree while the next one is still arriving; the three steps run
one after another.

The leader step uses ``choose_algorithm`` ("auto"'s rule) on the leader count and the full
size: doubling for small vectors, rhd in between, the ring for large ones.

Cost for N nodes of k ranks, n bytes (alpha, beta, gamma: the network's latency per message,
time per byte sent, time per byte reduced; alpha_l, beta_l: the same inside a node):
    2 lg k alpha_l + 2 n lg k beta_l + n lg k gamma           steps 1 and 3 (unsegmented)
  + 2 (N - 1) alpha + 2 n (N - 1) / N beta + n (N - 1) / N gamma    step 2 with the ring
against 2 (Nk - 1) alpha + 2 n (Nk - 1) / (Nk) beta + ... for a flat ring over all Nk ranks.
What it buys: the messages that cross the network fall from 2 (Nk - 1) in series to
2 (N - 1), each k times larger, and only one rank per node sends across, so a node's link
carries 2 n (N - 1) / N bytes however many ranks the node has (rhd and doubling, whose
partners are spread over the nodes, send about k ranks' worth across it). What it costs:
steps 1 and 3, about 2 n lg k bytes through the node's memory, and one rank's link doing all
of the node's network work. It pays when messages are latency-bound across the network, or
when a node's memory bandwidth is far above its network bandwidth; on one node (N = 1) it is
a tree allreduce, and with one rank per node (k = 1) the plain leader algorithm. Measurements
(the bytes crossing a node's link, times on one machine and over a rate-limited link) are in
docs/cluster.md, "Hierarchical (two-level) allreduce".

The node and leader communicators (``transport.topology.levels``) are made at the first call
on a communicator (collective: every rank reaches it in the same call, after the header pass
agreed on the algorithm) and kept in its state.
"""
from ..core.choose import choose_algorithm
from ..core.schedule import binomial_tree, segment_bounds
from ..memory.buffers import copy_into, scratch_like
from ..transport.tags import TAG_BCAST, TAG_REDUCE
from ..transport.topology import levels
from .doubling import doubling
from .rhd import rhd
from .ring import ring

# What the leader step runs: the algorithms ``choose_algorithm`` names for a flat communicator.
_LEADER_ALGORITHMS = {"ring": ring, "rhd": rhd, "doubling": doubling}


def hierarchical(comm, sendbuf, recvbuf, reduce, segment_elems):
    if comm.size == 1:
        if recvbuf is not sendbuf:
            copy_into(recvbuf, sendbuf)
        return
    st = levels(comm)
    _reduce_to_leader(st.node, sendbuf, recvbuf, reduce, segment_elems)
    lead = st.leaders
    if lead is not None and lead.size > 1:
        name = choose_algorithm(recvbuf.nbytes, lead.size)
        _LEADER_ALGORITHMS[name](lead, recvbuf, recvbuf, reduce, segment_elems)
    _broadcast_from_leader(st.node, recvbuf, segment_elems)


def _reduce_to_leader(node, sendbuf, recvbuf, reduce, segment_elems):
    """Binomial-tree reduce of every node rank's ``sendbuf`` into ``recvbuf`` on node rank 0.
    Elsewhere ``recvbuf`` is scratch (the broadcast overwrites it); ``sendbuf`` is only read."""
    if node.size == 1:
        if recvbuf is not sendbuf:
            copy_into(recvbuf, sendbuf)
        return
    parent, children = binomial_tree(node.rank, node.size)
    segs = segment_bounds(0, sendbuf.size, segment_elems)
    if not children:
        # A leaf sends its input as it is: no copy into recvbuf.
        node.waitall([node.isend(sendbuf[lo:hi], parent, TAG_REDUCE) for lo, hi in segs])
        return
    if recvbuf is not sendbuf:
        copy_into(recvbuf, sendbuf)
    up = children[::-1]  # nearest child first: its subtree is ready first
    # One scratch buffer per child, so every child's receives can be posted at once.
    scratch = [scratch_like(sendbuf, sendbuf.size) for _ in up]
    recvs = [[node.irecv(buf[lo:hi], child, TAG_REDUCE) for lo, hi in segs]
             for buf, child in zip(scratch, up)]
    sends = []
    for k, (lo, hi) in enumerate(segs):
        for j in range(len(up)):
            node.wait(recvs[j][k])
            reduce(recvbuf[lo:hi], scratch[j][lo:hi])
        if parent is not None:
            sends.append(node.isend(recvbuf[lo:hi], parent, TAG_REDUCE))
    node.waitall(sends)  # recvbuf is about to be overwritten by the broadcast


def _broadcast_from_leader(node, buf, segment_elems):
    """Binomial-tree broadcast of ``buf`` from node rank 0, segment by segment."""
    if node.size == 1:
        return
    parent, children = binomial_tree(node.rank, node.size)
    segs = segment_bounds(0, buf.size, segment_elems)
    if parent is not None:
        recvs = [node.irecv(buf[lo:hi], parent, TAG_BCAST) for lo, hi in segs]
    sends = []
    for k, (lo, hi) in enumerate(segs):
        if parent is not None:
            node.wait(recvs[k])
        for child in children:
            sends.append(node.isend(buf[lo:hi], child, TAG_BCAST))
    node.waitall(sends)
