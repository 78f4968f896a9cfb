"""The header pass: every rank learns, in lg p exchanges, whether all ranks agree on a call.

Every collective starts here. The pass is a recursive doubling (``core.schedule.doubling_plan``)
whose messages carry a 24-byte header: a signature of the call (``core.tables.signature``) as
``[sig, -sig]`` and an error flag, combined by element-wise maximum. After lg p steps every
rank holds the maximum and the minimum signature over all ranks and knows whether any rank
rejected its input, so a mismatch raises on every rank in the same call and never leaves one
rank waiting in a schedule the others did not enter. Only then, on that rare path, an
``allgather`` names who sent what.

Small payloads ride in the same messages (where the memory backend allows it): the payload
is appended to the header and reduced on the way, so a small allreduce is lg p exchanges with
no separate negotiation (the piggy-backed header costs 24 bytes). Everything else pays one
header-only pass of lg p tiny exchanges, then runs the schedule every rank agreed on.
"""
import struct

import numpy as np

from ..core.choose import PIGGYBACK_CAP
from ..core.schedule import doubling_plan
from ..errors import MismatchError, agree
from ..transport.comm import kept, message
from ..transport.joined import JoinedSends
from ..transport.tags import TAG_FOLD

_HEADER = struct.Struct("<3q")  # sig, -sig, error: combined by element-wise max
# From here on ``pair`` sends the payload from the caller's array, joined to the header by a
# derived datatype, instead of copying it in behind the header first. Three jobs per MPI at 2
# ranks, 2,000 exchanges of each, the array rewritten before each as a training step
# rewrites its gradients: copy-and-send against joined, best of two loops, MPICH 1 KiB
# 5.8-7.3 / 4.6-5.6 us, 4 KiB 6.6-9.6 / 4.9-7.5, 32 KiB 32.0-43.6 / 32.4-38.9, 64 KiB
# 72.0-73.7 / 66.8-70.4; Open MPI 1 KiB 4.8-6.6 / 2.9-4.0, 4 KiB 8.5-12.7 / 4.4-9.3,
# 32 KiB 18.5-39.8 / 11.7-31.7, 64 KiB 30.0-71.0 / 21.3-59.9. Below it the copy is nothing
# and the datatype's lookup (0.7 us) would be most of an 8-byte call's extra Python.
JOINED_SEND_BYTES = 1 << 10


def fail_everywhere(c, local_error):
    """This rank could not even form its call: tell every rank (which all raise), then raise
    ``local_error`` here."""
    negotiate(c, 0, local_error, None)


class HeaderState:
    """Per-communicator state of the header pass: its plan, two message buffers (each the
    header followed by up to PIGGYBACK_CAP payload bytes), and per payload dtype and length
    the typed views of their payloads and the messages (header and payload) they send,
    cached because small calls are dominated by such per-call Python overhead."""

    def __init__(self, c):
        self.plan = doubling_plan(c.rank, c.size)
        # At two ranks the plan is one exchange with the partner (so is one rank's at three, 5,
        # 6 and 7, its partner's partial result already folded in): ``pair`` serves it.
        one = self.plan[0] if len(self.plan) == 1 and self.plan[0][0] == "exchange" else None
        self.peer = None if one is None else one[1]
        self.low = one is not None and c.rank < one[1]
        self.bufs = (np.empty(_HEADER.size + PIGGYBACK_CAP, np.uint8),
                     np.empty(_HEADER.size + PIGGYBACK_CAP, np.uint8))
        self.headers = tuple(b[:_HEADER.size] for b in self.bufs)
        self.heads = tuple(memoryview(b)[:_HEADER.size] for b in self.bufs)  # compared as bytes
        # What an exchange sends (the header alone) and receives into (a whole buffer).
        self.sends = tuple(message(h) for h in self.headers)
        self.recvs = tuple(message(b) for b in self.bufs)
        self.views = {}
        # What ``pair`` sends for a payload of JOINED_SEND_BYTES or more: the header, then
        # the caller's array where it lies.
        self.joined = JoinedSends(self.headers[0])

    def free(self):
        """The datatypes of the joined sends (local)."""
        self.joined.clear()

    def payload(self, dtype, n):
        """``(payload views, messages, their exchange messages)``, one of each per buffer."""
        v = self.views.get((dtype, n))
        if v is None:
            h, end = _HEADER.size, _HEADER.size + n * dtype.itemsize
            msgs = tuple(b[:end] for b in self.bufs)
            v = self.views[(dtype, n)] = (tuple(b[h:end].view(dtype) for b in self.bufs),
                                          msgs, tuple(message(m) for m in msgs))
        return v

    def pair(self, c, mine, flat, first, dest):
        """:func:`negotiate` with a payload where this rank's plan is one exchange
        (``self.peer``), its result written straight into ``dest`` by ``first`` (``out = a op
        b``, the lower rank's operand first, as negotiate's reduce has it). The messages are
        negotiate's, so the partner may run either. ``mine``: this rank's header
        (:func:`header_bytes`). False where the partner's header differs (``dest`` is then
        untouched): the caller raises everywhere, as the partner does."""
        views, _, sends = (self.views.get((flat.dtype, flat.size))
                           or self.payload(flat.dtype, flat.size))
        self.heads[0][:] = mine
        if flat.nbytes >= JOINED_SEND_BYTES:
            send = self.joined.message(flat)
        else:
            views[0][...] = flat
            send = sends[0]
        c.exchange(send, self.recvs[1], self.peer, TAG_FOLD)
        if self.heads[1] != mine:
            return False
        if self.low:
            first(dest, flat, views[1])
        else:
            first(dest, views[1], flat)
        return True


def header_state(c):
    """``c``'s :class:`HeaderState`, made on first use (local: no messages)."""
    return kept(c, "header", HeaderState)


def header_bytes(sig):
    """The header of a rank that agrees with ``sig``'s call and has no error, as sent."""
    return _HEADER.pack(sig, -sig, 0)


def negotiate(c, sig, local_error, describe, payload=None, reduce=None):
    """The header pass over ``c``: every rank learns whether all agree on ``sig``.

    ``sig`` is this rank's signature of the call (ignored when ``local_error`` is set);
    ``describe`` a dict of what the signature covers, or a function returning one (called
    only on a mismatch, so the common path does not pay for it), used to explain a mismatch.
    ``payload`` (a 1-D array of at most PIGGYBACK_CAP bytes) rides along and is reduced with
    ``reduce`` on the way; the return value is then the reduced payload (a view into a buffer
    reused by the next call: copy it out), else None. Raises on every rank if any rank
    disagrees or failed.
    """
    if c.size == 1:
        if local_error is not None:
            raise local_error
        return payload
    st = c.state.header or header_state(c)
    bufs, heads = st.bufs, st.heads
    err = 0 if local_error is None else 1
    if err:
        sig, payload = 0, None
    mine = _HEADER.pack(sig, -sig, err)
    heads[0][:] = mine
    nbytes = 0
    msgs, sends, recvs = st.headers, st.sends, st.recvs
    if payload is not None:
        nbytes = payload.nbytes
        views, msgs, sends = (st.views.get((payload.dtype, payload.size))
                              or st.payload(payload.dtype, payload.size))
        views[0][...] = payload
    # ``agreed``: every header seen so far equals this rank's own (the common case, checked as
    # bytes); after the first difference the headers are combined field by field instead.
    agreed = not err
    b = 0  # bufs[b] holds this rank's partial result, bufs[1 - b] what a partner sent
    for action, peer in st.plan:
        if action == "exchange":  # first: the only step at 2 ranks (and 4, 8, ...)
            c.exchange(sends[b], recvs[1 - b], peer, TAG_FOLD)
        elif action == "absorb":
            c.recv(bufs[1 - b], peer, TAG_FOLD)
        elif action == "take":
            c.recv(bufs[b], peer, TAG_FOLD)
            agreed = agreed and heads[b] == mine
            continue
        else:  # give, return
            c.send(msgs[b], peer, TAG_FOLD)
            continue
        if agreed and heads[1 - b] == mine:
            if nbytes:
                # Same signature on both sides so far: same count, dtype and op, so reduce
                # the payloads, the lower rank's first so both partners compute the same bits.
                if c.rank < peer:
                    reduce(views[b], views[1 - b])
                else:
                    reduce(views[1 - b], views[b])
                    b = 1 - b  # the result is in the partner's buffer, with the same header
            continue
        agreed = False
        s, t = _HEADER.unpack_from(bufs[b]), _HEADER.unpack_from(bufs[1 - b])
        _HEADER.pack_into(bufs[b], 0, max(s[0], t[0]), max(s[1], t[1]), max(s[2], t[2]))
    if not agreed:
        hi, nlo, err_any = _HEADER.unpack_from(bufs[b])
        if hi != -nlo or err_any:
            raise_everywhere(c, describe, local_error)
    return None if payload is None else views[b]


def raise_everywhere(c, describe, local_error):
    """Every rank saw the same combined header, so every rank is here: say who sent what."""
    if callable(describe):
        describe = describe()
    kind = "a collective" if describe is None else describe.get("call", "allreduce")
    everyone = agree(c.mpi, describe, local_error, kind)
    mine = everyone[c.rank]
    for field in mine:
        other = next((r for r, d in enumerate(everyone) if d.get(field) != mine[field]), None)
        if other is not None:
            raise MismatchError(mismatch_message(kind, field, c.rank, mine[field], other,
                                                 everyone[other].get(field)))
    raise MismatchError(f"Mismatched {kind} headers")  # only on a signature hash collision


def mismatch_message(kind, field, me, mine, other, theirs):
    """Horovod's wording: "Mismatched allreduce tensor shapes: One rank sent ... but ..."."""
    if field == "call":
        return (f"Mismatched collectives: rank {me} called {mine}, but rank {other} called "
                f"{theirs}; every rank must call the same collectives in the same order")
    if field == "shape":
        what = "counts" if _count(mine) != _count(theirs) else "tensor shapes"
        return (f"Mismatched {kind} {what}: rank {me} sent a tensor of shape {mine} "
                f"({_count(mine)} elements), but rank {other} sent a tensor of shape {theirs} "
                f"({_count(theirs)} elements)")
    if field == "tensors":
        return (f"Mismatched {kind} tensor counts: rank {me} sent {mine} tensors, "
                f"but rank {other} sent {theirs}")
    if field in ("shapes", "dtypes", "names") and len(mine) == len(theirs):
        i = next(i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b)
        noun = field[:-1]
        return (f"Mismatched {kind} tensor {noun}s: for tensor {i}, rank {me} sent {noun} "
                f"{mine[i]}, but rank {other} sent {noun} {theirs[i]}")
    return (f"Mismatched {kind} {field}: rank {me} sent {field} {mine!r}, "
            f"but rank {other} sent {field} {theirs!r}")


def _count(shape):
    return int(np.prod(shape, dtype=np.int64))
