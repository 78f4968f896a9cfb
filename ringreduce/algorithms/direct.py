r"""Single-copy allreduce for the ranks of one node: every rank reads its peers' inputs and
writes its results into their outputs itself, through cross-memory attach
(``transport/cma.py``), with no shared window and no MPI message carrying data.

The vector is cut into p slices (``chunk_bounds``); rank r owns slice r. It walks its slice in
segments (at most ``segment_elems``, ending where the arrays of a ``Spans`` meet); for each:

    read     every peer j's input segment into a scratch buffer of its own (one kernel copy)
    fold     rank 0's operand first, the rest in rank order, into r's own output segment
    write    that result into every peer's output segment (one kernel copy each)

Each slice is reduced by one rank only, as ``x0 op x1 op ... op x_{p-1}``, so every rank gets
the same bits, the bits of a plain left fold in rank order (as ``shm``'s). Nothing else needs
ordering: rank r reads only slice r of a peer's input and writes only slice r of its output,
and reads each input segment before it writes the result over it (in place, output is input),
so no two ranks ever touch the same bytes while the call runs. Two synchronisations remain:
at the start an ``allgather`` of every rank's buffer addresses (every rank's inputs are then
ready), at the end an ``allreduce`` of an error flag (every rank has finished writing into
everyone's outputs, and every rank raises if any rank's copy failed, so none returns a
result with a slice missing).

Why: a memcpy reads n bytes and writes n. Per rank this reads the peers' (p-1)/p of a slice
and its own slice (n bytes in all) and writes its own result slice and the peers' copies of it
(n bytes): a memcpy's worth, where a ring through MPI copies each message twice (into MPI's
shared cells and out of them) and ``shm`` copies into its window and out. The scratch segments
(1 MiB) stay in cache. Measured in docs/benchmarks.md ("Single-copy allreduce").

Where the kernel refuses cross-memory copies between the ranks (``Peers.ok`` false on every
rank), or the communicator spans nodes, the call runs the ring instead.
"""
from bisect import bisect_right

import numpy as np
from mpi4py import MPI

from ..core.schedule import chunk_bounds, segment_bounds
from ..kernels.cpu import first_kernel
from ..transport.cma import Peers
from ..transport.comm import kept
from .ring import ring
from .shm import state as node_state


class _State:
    """Per communicator: the node's peers and each peer's scratch segment."""

    def __init__(self, comm):
        node = node_state(comm)
        self.one_node = node.one_node
        self.node = node.node
        self.peers = Peers(self.node) if self.one_node else None
        self.ok = self.one_node and self.peers.ok
        self.scratch = {}

    def buffers(self, dtype, elems):
        """Scratch segments of ``elems`` of ``dtype``: one per node rank (rank j's input is
        read into the j-th; this rank's own is unused), and one more for the fold's result
        where it cannot go straight into the output."""
        got = self.scratch.get(dtype)
        if got is None or got[0].size < elems:
            p = self.node.Get_size()
            raw = np.empty((p + 1) * elems * dtype.itemsize, np.uint8).view(dtype)
            got = self.scratch[dtype] = [raw[j * elems:(j + 1) * elems] for j in range(p + 1)]
        return got


def state(comm):
    """The per-communicator state, made on first use (collective)."""
    return kept(comm, "direct", _State)


def available(comm):
    """Whether ``direct`` runs as itself on ``comm`` rather than as the ring (collective on
    first call per communicator; the same answer on every rank)."""
    return comm.size > 1 and state(comm).ok


def _pieces(buf):
    """``(arrays, starts)`` of a 1-D array or a ``Spans``."""
    arrays = getattr(buf, "arrays", None)
    if arrays is None:
        return [buf], [0, buf.size]
    return arrays, buf.starts


def direct(comm, sendbuf, recvbuf, reduce, segment_elems):
    p = comm.size
    if p == 1:
        if recvbuf is not sendbuf:
            for a, b in zip(_pieces(recvbuf)[0], _pieces(sendbuf)[0]):
                a[...] = b
        return
    st = state(comm)
    if not st.ok:
        ring(comm, sendbuf, recvbuf, reduce, segment_elems)
        return
    node, peers = st.node, st.peers
    me, n, dtype = node.Get_rank(), sendbuf.size, sendbuf.dtype
    item = dtype.itemsize
    ins, starts = _pieces(sendbuf)
    outs, _ = _pieces(recvbuf)
    k = len(ins)
    mine = np.array([a.ctypes.data for a in ins] + [a.ctypes.data for a in outs], np.int64)
    table = np.empty((p, 2 * k), np.int64)
    comm.wait(node.Iallgather(mine, table))
    lo, hi = chunk_bounds(n, p)[me]
    seg = max(1, min(segment_elems, hi - lo))
    scratch = st.buffers(dtype, seg)
    first = first_kernel(reduce)
    inplace = recvbuf is sendbuf
    # In place my output is my input: the fold may write there only if my operand is one of
    # the two that the first step reads together (and that step is fused).
    straight = not inplace or me == 0 or (me == 1 and first is not None)
    failed = None
    try:
        for s, e in segment_bounds(lo, hi, seg, getattr(sendbuf, "cuts", ())):
            i = bisect_right(starts, s) - 1
            off, m = s - starts[i], e - s
            own, out = ins[i][off:off + m], outs[i][off:off + m]
            ops = []
            for j in range(p):
                if j == me:
                    ops.append(own)
                else:
                    buf = scratch[j][:m]
                    peers.read(j, buf, int(table[j, i]) + off * item)
                    ops.append(buf)
            dest = out if straight else scratch[p][:m]
            if first is not None:
                first(dest, ops[0], ops[1])
            else:
                dest[...] = ops[0]
                reduce(dest, ops[1])
            for j in range(2, p):
                reduce(dest, ops[j])
            if dest is not out:
                out[...] = dest
            for j in range(p):
                if j != me:
                    peers.write(j, out, int(table[j, k + i]) + off * item)
    except OSError as exc:
        failed = exc
    flag = np.array([failed is not None], np.int64)
    anyone = np.empty(1, np.int64)
    comm.wait(node.Iallreduce(flag, anyone, MPI.MAX))
    if failed is not None:
        raise failed
    if anyone[0]:
        raise OSError("a cross-memory copy failed on another rank of the node; see its error")
