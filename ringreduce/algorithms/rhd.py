r"""Recursive halving-doubling allreduce (Rabenseifner): a reduce-scatter by recursive
halving, then an allgather by recursive doubling.

    p = 4, chunks 0..3          halving (reduce-scatter)              doubling (allgather)
      step 1, distance 2:  0<->2, 1<->3 swap halves      step 1, distance 1: swap one chunk
                           0,1 keep chunks 0-1            step 2, distance 2: swap two chunks
      step 2, distance 1:  0<->1, 2<->3 swap quarters
                           rank i keeps chunk i, fully reduced

Each halving step sends the half of the current range the rank gives up and reduces the half
it keeps, so the data sent halves every step; the allgather retraces the steps backwards with
the data doubling. Every chunk is reduced by one rank only and then copied, so all ranks end
bitwise identical.

A rank count that is not a power of two is folded first, as in ``doubling``: ranks 0..2r-1
(r = p - 2**floor(lg p)) pair up, each even rank hands its whole vector to the odd one, and
gets the result back at the end.

Cost, p a power of two (alpha per message, beta per byte sent, gamma per byte reduced):
    2 lg p alpha  +  2 n (p - 1) / p beta  +  n (p - 1) / p gamma
the ring's bandwidth with only 2 lg p latencies; other p add 2 alpha + 2 n beta + n gamma
for the fold (Thakur, Rabenseifner and Gropp 2005). Good for medium messages; for large ones
the ring's neighbour-only traffic pipelines better.
"""
from ..transport.tags import TAG_FOLD, TAG_GATHER, TAG_REDUCE
from ..memory.buffers import copy_into, scratch_like
from ..core.schedule import chunk_bounds, fold, halving_steps, pow2_floor, unfold_rank


def rhd(comm, sendbuf, recvbuf, reduce, segment_elems):
    if recvbuf is not sendbuf:
        copy_into(recvbuf, sendbuf)
    p = comm.size
    if p == 1:
        return
    new_rank, fold_partner = fold(comm.rank, p)
    if new_rank is None:
        comm.send(recvbuf, fold_partner, TAG_FOLD)
        comm.recv(recvbuf, fold_partner, TAG_FOLD)
        return
    tmp = scratch_like(recvbuf, recvbuf.size)
    if fold_partner is not None:
        comm.recv(tmp, fold_partner, TAG_FOLD)
        reduce(recvbuf, tmp)
    p2 = pow2_floor(p)
    bounds = chunk_bounds(recvbuf.size, p2)
    steps = halving_steps(new_rank, p2)

    def span(lo_hi):
        lo, hi = lo_hi
        return bounds[lo][0], bounds[hi - 1][1]

    for partner_new, keep, give in steps:
        partner = unfold_rank(partner_new, p)
        k_lo, k_hi = span(keep)
        g_lo, g_hi = span(give)
        comm.sendrecv(recvbuf[g_lo:g_hi], partner, tmp[k_lo:k_hi], partner, TAG_REDUCE)
        reduce(recvbuf[k_lo:k_hi], tmp[k_lo:k_hi])
    for partner_new, keep, give in reversed(steps):
        partner = unfold_rank(partner_new, p)
        k_lo, k_hi = span(keep)
        g_lo, g_hi = span(give)
        # Backwards: send what was kept (now final), receive what was given away.
        comm.sendrecv(recvbuf[k_lo:k_hi], partner, recvbuf[g_lo:g_hi], partner, TAG_GATHER)
    if fold_partner is not None:
        comm.send(recvbuf, fold_partner, TAG_FOLD)
