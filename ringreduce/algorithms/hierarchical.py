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
from ..memory.buffers import copy_into
from ..transport.topology import levels
from .doubling import doubling
from .rhd import rhd
from .ring import ring
from .tree import tree_broadcast, tree_reduce

# What the leader step runs: the algorithms ``choose_algorithm`` names for a flat communicator.
_LEADER_ALGORITHMS = {"ring": ring, "rhd": rhd, "doubling": doubling}


def hierarchical(comm, sendbuf, recvbuf, reduce, segment_elems):
    if comm.size == 1:
        if recvbuf is not sendbuf:
            copy_into(recvbuf, sendbuf)
        return
    st = levels(comm)
    tree_reduce(st.node, sendbuf, recvbuf, reduce, segment_elems)
    lead = st.leaders
    if lead is not None and lead.size > 1:
        name = choose_algorithm(recvbuf.nbytes, lead.size)
        _LEADER_ALGORITHMS[name](lead, recvbuf, recvbuf, reduce, segment_elems)
    tree_broadcast(st.node, recvbuf, 0, segment_elems)
