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
result back.

Cost (alpha per message, beta per byte sent, gamma per byte reduced; n bytes):
    lg p alpha + n lg p beta + n lg p gamma      (plus 2 alpha + 2 n beta when folding)
The fewest rounds of any algorithm here, so it serves the smallest messages, where latency is
everything; every rank sends the whole vector lg p times, so it is poor for large ones.
"""
import numpy as np

from .._comm import TAG_FOLD, TAG_REDUCE
from .._schedule import doubling_partners, fold, pow2_floor, unfold_rank


def doubling(comm, sendbuf, recvbuf, reduce, segment_elems):
    if recvbuf is not sendbuf:
        recvbuf[...] = sendbuf
    p = comm.size
    if p == 1:
        return
    acc = recvbuf
    tmp = np.empty_like(recvbuf)
    new_rank, fold_partner = fold(comm.rank, p)
    if new_rank is None:
        comm.send(acc, fold_partner, TAG_FOLD)
        comm.recv(acc, fold_partner, TAG_FOLD)
        return
    if fold_partner is not None:
        # The partner is the even rank just below: its operand goes first.
        comm.recv(tmp, fold_partner, TAG_FOLD)
        reduce(tmp, acc)
        acc, tmp = tmp, acc
    for partner_new in doubling_partners(new_rank, pow2_floor(p)):
        partner = unfold_rank(partner_new, p)
        comm.sendrecv(acc, partner, tmp, partner, TAG_REDUCE)
        if comm.rank < partner:
            reduce(acc, tmp)
        else:
            reduce(tmp, acc)
            acc, tmp = tmp, acc
    if acc is not recvbuf:
        recvbuf[...] = acc
    if fold_partner is not None:
        comm.send(recvbuf, fold_partner, TAG_FOLD)
