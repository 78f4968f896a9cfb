r"""Shared-memory allreduce for the ranks of one node: no message passes through MPI.

Each rank owns a region of an MPI-3 shared-memory window (``MPI.Win.Allocate_shared`` on the
node communicator) that every other rank on the node can read with plain loads. The vector is
cut into *blocks*, processed one per round; a block is cut into p *slices*
(``chunk_bounds``), slice r belonging to rank r. A slice is at most ``segment_elems``
elements, so a block is p segments (at most 8 MiB unless the segment alone is larger):

    p = 3, one block          slot 0          slot 1          slot 2
    A  copy in                [a0 -- c0]      [a1 b1 c1]      [a2 b2 --]   (own slice stays home)
    --- barrier ---
    C  rank r reduces slice r over every rank's input, rank 0's first, into its result area:
                              a = a0+a1+a2    b = b0+b1+b2    c = c0+c1+c2
    --- barrier ---
    E  every rank copies every result slice out:  recvbuf = [a b c]

Each slice is reduced by one rank only, always as ``x0 op x1 op ... op x_{p-1}`` (rank 0's
operand first), and then copied, so every rank gets the same bits, and the same bits as a
plain left fold over the ranks' inputs in rank order: the tests rely on that to catch races.
A rank's own input for its own slice is read from its private buffer and never copied in.

Pipelining and synchronisation. Slots and result areas are double-buffered by round parity,
so one barrier per round suffices: round k runs ``A(k); barrier; E(k-1); C(k)`` and a final
``barrier; E(K-1)`` closes the call. Why that is safe, for any rank and its peers:
C(k) reads slots written by A(k), which every rank did before barrier k; E(k-1) reads results
of C(k-1), done before barrier k; A(k+2) overwrites a slot last read by C(k), which every
rank finished before barrier k+1, and a rank reaches A(k+2) only after barrier k+1; C(k+2)
overwrites a result area last read by E(k), which every rank finished before its A(k+2), so
before barrier k+2. So K rounds cost K + 1 barriers, and blocks small enough to stay in cache
(slices of one 1 MiB segment by default) keep the slots' traffic out of main memory: what is
left is reading the input and writing the output, a memcpy's worth.

The barrier is a counter per rank in the first cache line of its region, written only by its
owner and raised once per barrier; a rank waits until every peer's counter has reached its
own. Memory ordering follows the MPI-3 unified model: inside one ``Lock_all`` epoch held for
the window's life, ``Win.Sync`` (MPI_Win_sync, a memory barrier) comes after a rank's data
writes and before its counter store, and again after it sees the peers' counters and before
it reads their data (Hoefler et al., "MPI+MPI", Computing 2013). Counters only grow, so a
peer that has already passed on to the next barrier is never mistaken for one behind. A
waiting rank spins briefly, then yields its core, then naps, which matters when ranks
outnumber cores; on a ``PoliteComm`` (the background engine's) it naps from the start. It
costs a few microseconds where ``MPI_Barrier`` through mpi4py costs several times that
(docs/benchmarks.md, "Shared-memory allreduce").

Window: allocated once per communicator on first use and kept (collective, like every call
here); grown, collectively, when a call needs bigger blocks than it holds. Every rank sizes it
from the agreed count, dtype and segment size, so all grow at the same call. Windows are freed
at exit, before MPI_Finalize.

Several nodes. On a communicator that spans nodes, every node runs the same rounds on its own
window, and between C and E the ranks with the same node rank (one per node) allreduce their
result slice with the ring over a communicator of their own: two-level, every node's link
carrying ``2 n (N - 1) / N`` bytes for N nodes, spread over all of a node's ranks (NCCL's and
Horovod's hierarchical allreduce). That needs the same number of ranks on every node; when
nodes differ, the call runs the plain ring over the whole communicator instead. Every rank
learns the node layout from one ``allgather`` at the first call, so all take the same path.

Cost on one node (n bytes; gamma per byte reduced, c per byte copied, s per barrier):
    (K + 1) s + n (2 - 1/p) c + n (p - 1)/p gamma      K = ceil(n / block) rounds
per rank: copy in all but its own slice, reduce its slice over p inputs, copy out everything.
There is no alpha per message and no beta per byte sent.
"""
import atexit
import os
import time

import numpy as np
from mpi4py import MPI

from ..config import get_config
from ..core.schedule import chunk_bounds
from ..kernels.cpu import first_kernel
from ..transport import fault
from ..transport.comm import Comm, kept, on_reset
from ..transport.tags import TAG_WATCH
from ..transport.topology import split_nodes
from .ring import ring

# Bytes kept apart at the head of each rank's region for its barrier counter: two cache lines,
# so no data write ever shares a line (or an adjacent-line prefetch pair) with it.
_FLAG_BYTES = 128
# Regions are aligned to a cache line; every dtype's alignment divides it.
_ALIGN = 64
# Smallest block a window is sized for, so tiny calls do not grow it one size at a time.
_MIN_BLOCK_BYTES = 64 << 10
# Largest block unless segment_bytes asks for more: every rank keeps two blocks in the
# window, so this bounds its shared memory to about 16 MiB. Blocks of one segment per rank
# (2 MiB at 2 ranks) beat blocks of one segment (1 MiB) at 16 and 64 MiB by 7-12% and tied
# at 4 MiB; 4 MiB blocks lost 8-17% (docs/benchmarks.md, "Shared-memory allreduce", block
# size; fewer rounds also mean fewer barriers, each a wait for every rank to get a core).
_MAX_BLOCK_BYTES = 8 << 20
# A waiting rank first spins (the peers are usually a few microseconds away), then yields its
# core, then naps: with more ranks than cores, or other jobs on the node, a spinning rank
# takes the time slice the rank it waits for needs. Counts of failed looks at the counters.
_SPINS = 50
_YIELDS = 1000
_NAP_S = 50e-6


# Every live window, in creation order: freed at exit, before mpi4py's MPI_Finalize (an
# atexit handler registered earlier, so it runs later). MPICH's OFI netmod cannot close its
# fabric while a window's memory is still registered, and fails MPI_Finalize ("fabricclose
# failed: Device or resource busy", seen in tests/test_multihost.py). Freeing is collective;
# every rank made the same windows in the same order and frees them in that order, as it
# would reach MPI_Finalize.
_live = []


def _free_all():
    if MPI.Is_initialized() and not MPI.Is_finalized():
        while _live:
            _live[0].free()


atexit.register(_free_all)  # after mpi4py's own handler (imported above), so it runs first
# After a lost rank (ringreduce.elastic) the windows' node may hold a dead rank: never free
# them collectively at exit, just forget them.
on_reset.append(_live.clear)


def _split_node(comm):
    """This rank's node as an mpi4py communicator in ``comm``'s rank order (collective): the
    ranks that share memory, or with ``RINGREDUCE_LOCAL_SIZE=k`` stand-in nodes of k
    consecutive ranks, as for algorithm="hierarchical", so that the two-level path can be run
    and measured on one machine (the window still lives in real shared memory)."""
    return split_nodes(comm, get_config().local_size)


def _round_up(x, a=_ALIGN):
    return -(-x // a) * a


class _Window:
    """One shared window on a node communicator: per rank a counter, two slots of one block
    and two result areas of one slice, with numpy views onto every rank's region."""

    def __init__(self, node, block_bytes, nap=None):
        self.node = node
        # A polite communicator (the background engine's) naps from the first failed look;
        # otherwise spin, then yield, then nap (see _SPINS).
        self.spins, self.yields = (0, 0) if nap else (_SPINS, _YIELDS)
        self.nap = nap or _NAP_S
        # Under ULFM a dead peer never raises its counter: while napping, a receive probe
        # from any source on the node raises MPI_ERR_PROC_FAILED once one of its ranks is
        # gone (or MPI_ERR_REVOKED), so the wait ends in RankFailedError, not a hang.
        self.watch = node if fault.ENABLED else None
        self.p = node.Get_size()
        self.rank = node.Get_rank()
        self.block_bytes = block_bytes
        self.slot_bytes = _round_up(block_bytes)
        self.res_bytes = _round_up(-(-block_bytes // self.p) + _ALIGN)  # a slice, any dtype
        size = _FLAG_BYTES + 2 * self.slot_bytes + 2 * self.res_bytes
        # MPI promises no alignment for a rank's region; ask for a line more and start each
        # view at the first line boundary, so the counters are aligned (8-byte stores and
        # loads of them are then single accesses) and the data lines are not shared.
        self.win = MPI.Win.Allocate_shared(size + _ALIGN, 1, comm=node)
        _live.append(self)
        self.bases = []
        for j in range(self.p):
            buf, _ = self.win.Shared_query(j)
            raw = np.frombuffer(buf, np.uint8, size + _ALIGN)
            skip = -raw.ctypes.data % _ALIGN
            self.bases.append(raw[skip:skip + size])
        self.flags = [b[:8].view(np.int64) for b in self.bases]
        self.flags[self.rank][0] = 0
        self.epoch = 0
        self.typed = {}
        self.planned = {}
        # One passive-target epoch for the window's life, so Win.Sync may be called (MPI-3
        # requires an access epoch for MPI_Win_sync); NOCHECK: nobody ever locks exclusively.
        self.win.Lock_all(MPI.MODE_NOCHECK)
        # No rank may raise its counter before every rank has zeroed its own.
        self.win.Sync()
        node.Barrier()
        self.win.Sync()

    def views(self, dtype):
        """``(slots, results)``: ``slots[j][i]`` is rank j's slot of parity i, typed."""
        got = self.typed.get(dtype)
        if got is None:
            slots, results = [], []
            for b in self.bases:
                s = [b[_FLAG_BYTES + i * self.slot_bytes:][:self.slot_bytes] for i in (0, 1)]
                off = _FLAG_BYTES + 2 * self.slot_bytes
                r = [b[off + i * self.res_bytes:][:self.res_bytes] for i in (0, 1)]
                slots.append([v[:v.size - v.size % dtype.itemsize].view(dtype) for v in s])
                results.append([v[:v.size - v.size % dtype.itemsize].view(dtype) for v in r])
            got = self.typed[dtype] = (slots, results)
        return got

    def rounds(self, n, blk, dtype):
        """The rounds of a call on ``n`` elements of ``dtype`` in blocks of ``blk``, as this
        rank runs them, with the window's side of every copy and reduction already sliced:
        ``(lo, hi, my slice's start, its stop, slot head, slot tail, my result area, the
        slots I reduce, [(start, stop, result area)] of every non-empty slice)``; ``None``
        where a piece is empty, and in the reduced slots where my own input goes. Made once
        per (n, blk, dtype) and window: a call of a few hundred KiB is mostly such slicing."""
        key = (n, blk, dtype)
        got = self.planned.get(key)
        if got is not None:
            return got
        if len(self.planned) > 256:
            self.planned.clear()
        slots, results = self.views(dtype)
        me, got = self.rank, []
        for k, lo in enumerate(range(0, n, blk)):
            i, hi = k & 1, min(lo + blk, n)
            bounds = chunk_bounds(hi - lo, self.p)
            s_lo, s_hi = bounds[me]
            slot = slots[me][i]
            head = slot[:s_lo] if s_lo > 0 else None
            tail = slot[s_hi:hi - lo] if lo + s_hi < hi else None
            res = results[me][i][:s_hi - s_lo] if s_hi > s_lo else None
            ins = [None if j == me else slots[j][i][s_lo:s_hi] for j in range(self.p)]
            outs = [(lo + a, lo + b, results[j][i][:b - a])
                    for j, (a, b) in enumerate(bounds) if b > a]
            got.append((lo, hi, s_lo, s_hi, head, tail, res, ins, outs))
        got = self.planned[key] = tuple(got)
        return got

    def barrier(self):
        """Every rank of the node has arrived; its writes before are visible after."""
        self.win.Sync()  # my data writes are done before my counter says so
        self.epoch += 1
        epoch = self.epoch
        self.flags[self.rank][0] = epoch
        for f in self.flags:
            spins = 0
            while f[0] < epoch:
                spins += 1
                if spins > self.yields:
                    time.sleep(self.nap)
                    if self.watch is not None:
                        self.watch.Iprobe(MPI.ANY_SOURCE, TAG_WATCH)
                elif spins > self.spins:
                    os.sched_yield()
        self.win.Sync()  # the peers' data writes are visible to my reads from here on

    def free(self):
        """Collective over the node. The views go first: they point into the window. A
        window freed already (at exit) is left alone."""
        if self not in _live:
            return
        _live.remove(self)
        self.typed.clear()
        self.planned.clear()
        self.flags = self.bases = None
        self.win.Unlock_all()
        self.win.Free()


class _State:
    """What ``shm`` keeps per communicator: the node layout and the window."""

    def __init__(self, comm):
        mpi = comm.mpi
        node = _split_node(comm)
        # Everyone learns every rank's (node id, node size): the node id is the lowest
        # communicator rank on the node, so the same on all its ranks.
        lowest = node.allreduce(comm.rank, op=MPI.MIN)
        layout = mpi.allgather((lowest, node.Get_size()))
        self.nodes = len({lo for lo, _ in layout})
        self.one_node = self.nodes == 1
        self.uniform = len({sz for _, sz in layout}) == 1
        self.node = node
        self.q = node.Get_size()
        self.window = None
        self.cross = None
        self.nap = getattr(comm, "POLL_SLEEP", None)  # a PoliteComm sleeps while it waits
        if not self.one_node and self.uniform:
            # Ranks with the same node rank, one per node, ordered by node; the same class
            # as comm, so a PoliteComm's ring waits politely too.
            cross = mpi.Split(node.Get_rank(), comm.rank)
            self.cross = (type(comm) if isinstance(comm, Comm) else Comm)(cross)
            cross.Free()  # the wrapper keeps its own duplicate

    def free(self):
        """The window, the cross-node communicator and the node (collective over the
        communicator, like their making)."""
        if self.window is not None:
            self.window.free()
            self.window = None
        if self.cross is not None:
            self.cross.free()
            self.cross = None
        if self.node != MPI.COMM_NULL:
            self.node.Free()

    def window_for(self, block_bytes):
        """The window, grown to hold blocks of ``block_bytes`` (collective when it grows)."""
        w = self.window
        if w is None or w.block_bytes < block_bytes:
            size = max(_MIN_BLOCK_BYTES, 1 << (block_bytes - 1).bit_length())
            if w is not None:
                w.free()
            self.window = w = _Window(self.node, size, self.nap)
        return w


def state(comm):
    """The per-communicator shm state, made on first use (collective)."""
    return kept(comm, "shm", _State)


def on_one_node(comm):
    """Whether every rank of ``comm`` shares one node (collective on first call per comm;
    the answer is the same on every rank)."""
    return comm.size == 1 or state(comm).one_node


def shm(comm, sendbuf, recvbuf, reduce, segment_elems):
    p = comm.size
    if p == 1:
        if recvbuf is not sendbuf:
            recvbuf[...] = sendbuf
        return
    st = state(comm)
    if not st.one_node and not st.uniform:
        # Two-level needs one rank per node in every cross communicator; see the docstring.
        ring(comm, sendbuf, recvbuf, reduce, segment_elems)
        return
    n = sendbuf.size
    dtype = sendbuf.dtype
    # A block holds one segment per node rank, so the slice each rank reduces per round is
    # one segment (1 MiB by default, inside this machine's 2 MiB L2); capped, since every
    # rank keeps two blocks in the window.
    q = st.q
    blk = min(n, q * segment_elems, max(segment_elems, _MAX_BLOCK_BYTES // dtype.itemsize))
    win = st.window_for(blk * dtype.itemsize)
    cross = st.cross
    first = first_kernel(reduce)  # fused copy-and-reduce for the first two operands, if any
    rounds = win.rounds(n, blk, dtype)
    for k, (lo, hi, s_lo, s_hi, head, tail, res, ins, outs) in enumerate(rounds):
        # A: copy in everything but my own slice, which only I read.
        if head is not None:
            head[...] = sendbuf[lo:lo + s_lo]
        if tail is not None:
            tail[...] = sendbuf[lo + s_hi:hi]
        win.barrier()
        if k:
            _copy_out(recvbuf, rounds[k - 1][8])
        # C: my slice, rank 0's operand first, the rest in rank order.
        if res is not None:
            mine = sendbuf[lo + s_lo:lo + s_hi]
            ops = [mine if a is None else a for a in ins]
            if len(ops) > 1 and first is not None:
                first(res, ops[0], ops[1])
            else:
                res[...] = ops[0]
                if len(ops) > 1:
                    reduce(res, ops[1])
            for j in range(2, len(ops)):
                reduce(res, ops[j])
            if cross is not None:
                # Every node's rank ``me`` holds its node's sum of the same slice: combine
                # them. All nodes cut blocks and slices alike, so the ring runs on agreed
                # lengths.
                ring(cross, res, res, reduce, segment_elems)
    win.barrier()
    _copy_out(recvbuf, rounds[-1][8])


def _copy_out(recvbuf, outs):
    """E: every result slice of one round (``outs``: (start, stop, result area)) into
    ``recvbuf``."""
    for lo, hi, res in outs:
        recvbuf[lo:hi] = res

