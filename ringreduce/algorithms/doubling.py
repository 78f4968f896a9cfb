r"""Recursive-doubling allreduce: lg p exchanges of the whole vector (latency-optimal).

    p = 4            step 1 (distance 1)     step 2 (distance 2)
      0 <-> 1        0: v0+v1                0: (v0+v1)+(v2+v3)
      2 <-> 3        2: v2+v3                2: (v0+v1)+(v2+v3)

At each step a rank swaps its whole partial result with the rank ``distance`` away and both
combine the two halves of the sum. Both sides put the lower rank's operand first, so partners
compute the same expression bit for bit and all ranks end bitwise identical.

A rank count that is not a power of two is folded first (MPICH's scheme): with
r = p - 2**floor(lg p), ranks 0..2r-1 pair up, each even rank hands its vector to the odd one
and waits, the remaining 2**floor(lg p) ranks run the exchange, then the odd ranks hand the
result back (``_schedule.doubling_plan``).

Cost (alpha per message, beta per byte sent, gamma per byte reduced; n bytes):
    lg p alpha + n lg p beta + n lg p gamma      (plus 2 alpha + 2 n beta when folding)
The fewest rounds of any algorithm here, so it serves the smallest messages, where latency is
everything; every rank sends the whole vector lg p times, so it is poor for large ones.
The same plan carries the header every call starts with (``_allreduce``), and for small
messages the data travels in those very messages.
"""
from ..transport.tags import TAG_REDUCE
from ..memory.buffers import copy_into, scratch_like
from ..core.schedule import doubling_plan


def doubling(comm, sendbuf, recvbuf, reduce, segment_elems):
    if recvbuf is not sendbuf:
        copy_into(recvbuf, sendbuf)
    acc, tmp = recvbuf, scratch_like(recvbuf, recvbuf.size)
    for action, peer in doubling_plan(comm.rank, comm.size):
        if action == "give":
            comm.send(acc, peer, TAG_REDUCE)
        elif action == "take":
            comm.recv(acc, peer, TAG_REDUCE)
        elif action == "return":
            comm.send(acc, peer, TAG_REDUCE)
        else:
            if action == "exchange":
                comm.sendrecv(acc, peer, tmp, peer, TAG_REDUCE)
            else:  # absorb
                comm.recv(tmp, peer, TAG_REDUCE)
            if comm.rank < peer:
                reduce(acc, tmp)
            else:
                reduce(tmp, acc)
                acc, tmp = tmp, acc
    if acc is not recvbuf:
        copy_into(recvbuf, acc)
