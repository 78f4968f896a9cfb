r"""Ring allreduce: a reduce-scatter then an allgather around a ring of p ranks. The two halves
are functions of their own (:func:`reduce_scatter`, :func:`allgather`), which
``collectives/gather.py`` runs alone for ``rr.reduce_scatter`` and ``rr.allgather``.

The vector is cut into p *chunks*, one per rank. In the reduce-scatter each rank sends one
chunk to its right neighbour and receives one from its left, p - 1 times; a received chunk is
reduced with the rank's own input and forwarded at the next step, so each chunk travels the
whole ring once, gathering every rank's contribution. Afterwards rank r holds chunk
(r + 1) % p fully reduced. The allgather then passes the finished chunks around once more.

    p = 3, chunks a b c, "x+" = partial sum     reduce-scatter          allgather
                                            step 0      step 1       step 0   step 1
      rank 0  [a0 b0 c0] --> rank 1        sends a0    sends c+     sends b  sends a
      rank 1  [a1 b1 c1] --> rank 2        sends b1    sends a+     sends c  sends b
      rank 2  [a2 b2 c2] --> rank 0        sends c2    sends b+     sends a  sends c
      after: rank 0 owns b, rank 1 owns c, rank 2 owns a; then everyone has a b c.

Every chunk is reduced exactly once per rank along one fixed path and then copied, so all
ranks end with bitwise-identical results.

The buffers may be ``memory.spans.Spans`` (several host arrays seen as one vector, for
``grouped_allreduce``): their ``cuts`` end segments where one array meets the next, so every
slice taken here is one array's own memory.

Pipelining: each chunk moves in *segments* of at most ``segment_elems`` elements. A segment is
reduced as soon as it arrives and forwarded at once, so the reduction of one segment overlaps
the transfer of the next, and the next step's receives are posted one step ahead. Three
rotating scratch buffers of one chunk each make that safe: one being received into, one being
sent from, one pre-posted for the step after.

Cost (alpha: per message, beta: per byte sent, gamma: per byte reduced; n bytes):
    2 (p - 1) alpha  +  2 n (p - 1) / p beta  +  n (p - 1) / p gamma
with the alpha term multiplied by the number of segments per chunk. The beta term is the
lower bound for any allreduce (Patarasuk and Yuan 2009), which is why the ring wins for large
messages and loses for small ones, where 2 (p - 1) latencies dominate.

A *wire* (``wire=``) makes the segments travel in another dtype than the input's, with the
codec inside the segment loop (``collectives/compress.py``: float32 gradients as 16-bit
values). It answers four things; without one the input's own dtype travels and none is asked:

    wire.moved             an n-element buffer of the wire dtype, where the allgather runs
    wire.scratch(n)        three buffers of n wire elements for the reduce-scatter
    wire.encode(dst, src)  step 0: the rank's own input segment ``src`` into wire values
    wire.widen(out, src)   a finished wire segment into the result

and ``reduce(dst, src)`` then reduces wire values ``dst`` with input values ``src`` into wire
values. The owner's finished chunk lands in ``wire.moved`` and is widened from there, as every
other rank widens the copy it receives, so all ranks still end bitwise identical.
"""
from ..transport.tags import TAG_GATHER, TAG_REDUCE
from ..memory.buffers import copy_into, kept_scratch
from ..core.schedule import chunk_bounds, owned_chunk, ring_allgather_steps, ring_steps, segment_bounds


def ring(comm, sendbuf, recvbuf, reduce, segment_elems, wire=None):
    p = comm.size
    in_place = recvbuf is sendbuf
    if p == 1:
        if wire is not None:
            wire.encode(wire.moved, sendbuf)
            wire.widen(recvbuf, wire.moved)
        elif not in_place:
            copy_into(recvbuf, sendbuf)
        return
    bounds = chunk_bounds(sendbuf.size, p)
    lo, hi = bounds[owned_chunk(comm.rank, p)]
    if wire is None:
        reduce_scatter(comm, sendbuf, recvbuf[lo:hi], reduce, segment_elems, bounds, in_place)
        allgather(comm, recvbuf, segment_elems, bounds)
    else:
        reduce_scatter(comm, sendbuf, wire.moved[lo:hi], reduce, segment_elems, bounds,
                       wire=wire, widened=recvbuf[lo:hi])
        allgather(comm, wire.moved, segment_elems, bounds, wire=wire, widened=recvbuf)


def reduce_scatter(comm, sendbuf, out, reduce, segment_elems, bounds, in_place=False,
                   wire=None, widened=None):
    """The first half: afterwards ``out`` holds chunk ``owned_chunk(rank, p)`` of the
    reduction, the chunks being ``bounds`` (``[(lo, hi)]`` element ranges of ``sendbuf``, one
    per chunk index). ``in_place``: ``out`` is that chunk of ``sendbuf`` itself. With a
    ``wire``, ``out`` holds wire values, also widened into ``widened`` segment by segment."""
    p = comm.size
    cuts = getattr(sendbuf, "cuts", ())  # a Spans: no segment crosses from array to array
    segs = [segment_bounds(lo, hi, segment_elems, cuts) for lo, hi in bounds]
    chunk_max = max(hi - lo for lo, hi in bounds)
    base = bounds[owned_chunk(comm.rank, p)][0]
    # Scratch buffers hold one chunk each; a segment sits at its offset inside its chunk.
    scratch = (kept_scratch(comm, sendbuf, chunk_max, 3) if wire is None
               else wire.scratch(chunk_max))

    steps = ring_steps(comm.rank, p)
    last = len(steps) - 1

    def post_receives(step):
        """Receives for reduce-scatter step ``step``, into scratch (or straight into ``out``
        at the last step when not in place: the finished chunk then needs no copy)."""
        c = steps[step][1]
        lo = bounds[c][0]
        reqs = []
        for s_lo, s_hi in segs[c]:
            if step == last and not in_place:
                dst = out[s_lo - base:s_hi - base]
            else:
                dst = scratch[step % 3][s_lo - lo:s_hi - lo]
            reqs.append(comm.irecv(dst, comm.left, TAG_REDUCE))
        return reqs

    # Step 0 sends the rank's own input (encoded into the third scratch buffer, which the
    # receives of step 2 take over only after these sends completed at the end of step 0);
    # later steps forward what the step before reduced.
    pending = {0: post_receives(0)}
    send_c = steps[0][0]
    sends = []
    for s_lo, s_hi in segs[send_c]:
        own = sendbuf[s_lo:s_hi]
        if wire is not None:
            c_lo = bounds[send_c][0]
            encoded = scratch[2][s_lo - c_lo:s_hi - c_lo]
            wire.encode(encoded, own)
            own = encoded
        sends.append(comm.isend(own, comm.right, TAG_REDUCE))
    for step, (_, recv_c) in enumerate(steps):
        if step + 1 <= last:
            # scratch[(step + 1) % 3] last received step - 2's chunk, which went out during
            # step - 1; those sends were waited for at the end of step - 1.
            pending[step + 1] = post_receives(step + 1)
        lo = bounds[recv_c][0]
        next_sends = []
        for (s_lo, s_hi), req in zip(segs[recv_c], pending.pop(step)):
            comm.wait(req)
            if step == last:
                mine = out[s_lo - base:s_hi - base]
                if in_place:
                    reduce(mine, scratch[step % 3][s_lo - lo:s_hi - lo])
                else:
                    reduce(mine, sendbuf[s_lo:s_hi])
                if wire is not None:
                    wire.widen(widened[s_lo - base:s_hi - base], mine)
            else:
                part = scratch[step % 3][s_lo - lo:s_hi - lo]
                reduce(part, sendbuf[s_lo:s_hi])
                next_sends.append(comm.isend(part, comm.right, TAG_REDUCE))
        # The previous step's sends read scratch[(step - 1) % 3], which step + 2 reuses.
        comm.waitall(sends)
        sends = next_sends
    comm.waitall(sends)


def allgather(comm, recvbuf, segment_elems, bounds, wire=None, widened=None):
    """The second half: every rank holds chunk ``owned_chunk(rank, p)`` of ``recvbuf`` (the
    chunks being ``bounds``) and afterwards all of them. Every receive lands in its final
    place in ``recvbuf``, so all of them can be posted at once; each arriving segment is
    forwarded as soon as it is complete. With a ``wire``, ``recvbuf`` holds wire values and
    each arriving segment is widened into ``widened`` after it was forwarded."""
    p = comm.size
    cuts = getattr(recvbuf, "cuts", ())
    segs = [segment_bounds(lo, hi, segment_elems, cuts) for lo, hi in bounds]
    ag = ring_allgather_steps(comm.rank, p)
    recvs = [[comm.irecv(recvbuf[s_lo:s_hi], comm.left, TAG_GATHER) for s_lo, s_hi in segs[c]]
             for _, c in ag]
    mine = owned_chunk(comm.rank, p)
    sends = [comm.isend(recvbuf[s_lo:s_hi], comm.right, TAG_GATHER) for s_lo, s_hi in segs[mine]]
    for step, (_, recv_c) in enumerate(ag):
        forward = step < len(ag) - 1
        for (s_lo, s_hi), req in zip(segs[recv_c], recvs[step]):
            comm.wait(req)
            if forward:
                sends.append(comm.isend(recvbuf[s_lo:s_hi], comm.right, TAG_GATHER))
            if wire is not None:
                wire.widen(widened[s_lo:s_hi], recvbuf[s_lo:s_hi])
    comm.waitall(sends)


def rotated_bounds(n_per_rank, p):
    """Chunk bounds under which rank r owns elements ``[r * n, (r + 1) * n)`` (the ring's
    own rule gives rank r chunk ``(r + 1) % p``): for a reduce-scatter that leaves rank r its
    r-th block, and an allgather of one block per rank in rank order."""
    return [(((c - 1) % p) * n_per_rank, ((c - 1) % p + 1) * n_per_rank) for c in range(p)]
