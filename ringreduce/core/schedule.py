"""Pure schedule arithmetic for the allreduce algorithms: no mpi4py, no I/O.

Terms used across the package:

- *chunk*: one of the ``p`` contiguous pieces a vector of ``n`` elements is cut into, one per
  rank (ring, halving-doubling). ``chunk_bounds(n, p)`` gives the first ``n % p`` chunks one
  extra element, so chunk sizes differ by at most one.
- *segment*: a piece of a chunk of at most ``segment_elems`` elements: the unit of one message,
  so the reduction of one segment overlaps the transfer of the next.
- *bucket*: a group of whole tensors fused into one buffer for one allreduce (fusion).

Everything here can be checked by simulating every rank in one process (tests/test_schedule.py).
"""
from bisect import bisect_left, bisect_right



def chunk_bounds(n, p):
    """``[(start, stop)] * p`` covering ``range(n)``; the first ``n % p`` chunks get one more."""
    if p < 1 or n < 0:
        raise ValueError(f"chunk_bounds needs n >= 0 and p >= 1, got n={n}, p={p}")
    base, extra = divmod(n, p)
    bounds = []
    start = 0
    for i in range(p):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def segment_bounds(start, stop, segment_elems, cuts=()):
    """Split ``[start, stop)`` into segments of at most ``segment_elems`` elements, ending one
    also at every offset in ``cuts`` (sorted; where the arrays of a ``memory.spans.Spans``
    meet), so that no segment crosses one."""
    if segment_elems < 1:
        raise ValueError(f"segment_elems must be >= 1, got {segment_elems}")
    if not cuts:
        return [(s, min(s + segment_elems, stop)) for s in range(start, stop, segment_elems)]
    ends = list(cuts[bisect_right(cuts, start):bisect_left(cuts, stop)]) + [stop]
    out, lo = [], start
    for end in ends:
        out += [(s, min(s + segment_elems, end)) for s in range(lo, end, segment_elems)]
        lo = end
    return out


def ring_steps(rank, p):
    """Reduce-scatter steps of the ring: ``[(send_chunk, recv_chunk)] * (p - 1)``.

    At step i a rank sends chunk ``(rank - i) % p`` to its right neighbour and receives chunk
    ``(rank - i - 1) % p`` from its left one (Baidu's ring). The chunk received at step i is
    the one sent at step i + 1, and after the last step the rank holds chunk
    ``(rank + 1) % p`` fully reduced.
    """
    return [((rank - i) % p, (rank - i - 1) % p) for i in range(p - 1)]


def ring_allgather_steps(rank, p):
    """Allgather steps of the ring: ``[(send_chunk, recv_chunk)] * (p - 1)``.

    Step 0 sends the chunk the rank owns after the reduce-scatter, ``(rank + 1) % p``; each
    later step forwards the chunk received in the step before.
    """
    return [((rank + 1 - i) % p, (rank - i) % p) for i in range(p - 1)]


def owned_chunk(rank, p):
    """The chunk a rank holds fully reduced after the ring's reduce-scatter."""
    return (rank + 1) % p


def binomial_tree(rank, p, root=0):
    """``(parent, children)`` of ``rank`` in a binomial tree rooted at ``root``.

    Ranks are relabelled ``v = (rank - root) % p``; v's parent clears v's lowest set bit and
    its children are ``v + 2**k`` for ``2**k`` below that bit. Children come in decreasing
    distance 2**k, the order a binomial broadcast sends in (in a full tree that is the largest
    subtree first); a reduce receives in reverse, nearest child first, since it is ready first.
    """
    v = (rank - root) % p
    parent = None
    low = 1
    while low < p:
        if v & low:
            parent = ((v - low) + root) % p
            break
        low <<= 1
    children = []
    mask = low >> 1 if parent is not None else _top_bit(p)
    while mask >= 1:
        if v + mask < p:
            children.append(((v + mask) + root) % p)
        mask >>= 1
    return parent, children


def _top_bit(p):
    """Largest power of two strictly below p (0 when p == 1)."""
    b = 1
    while b * 2 < p:
        b *= 2
    return b if p > 1 else 0


def pow2_floor(p):
    """Largest power of two <= p."""
    b = 1
    while b * 2 <= p:
        b *= 2
    return b


def fold(rank, p):
    """Fold a non-power-of-two group onto ``p2 = pow2_floor(p)`` ranks (MPICH's scheme).

    With ``r = p - p2``, the first ``2r`` ranks pair up: even rank ``2i`` hands its data to odd
    rank ``2i + 1`` and sits out; every other rank takes part under a new rank in
    ``range(p2)``. Returns ``(new_rank or None, partner or None)``: the partner is whom an
    even rank sends to, or whom an odd rank in the folded pairs receives from.
    """
    p2 = pow2_floor(p)
    r = p - p2
    if rank < 2 * r:
        if rank % 2 == 0:
            return None, rank + 1
        return rank // 2, rank - 1
    return rank - r, None


def unfold_rank(new_rank, p):
    """Inverse of :func:`fold`: the real rank behind a folded ``new_rank``."""
    r = p - pow2_floor(p)
    return new_rank * 2 + 1 if new_rank < r else new_rank + r


def halving_steps(new_rank, p2):
    """Recursive-halving reduce-scatter over chunk indices ``range(p2)``.

    Returns ``[(partner_new_rank, (keep_lo, keep_hi), (send_lo, send_hi))]`` with chunk index
    ranges; the distance halves each step, so after ``lg p2`` steps a rank keeps exactly chunk
    ``new_rank``. The allgather replays these steps backwards (recursive doubling).
    """
    steps = []
    lo, hi = 0, p2
    mask = p2 // 2
    while mask >= 1:
        mid = lo + mask
        if new_rank & mask:
            keep, send = (mid, hi), (lo, mid)
        else:
            keep, send = (lo, mid), (mid, hi)
        steps.append((new_rank ^ mask, keep, send))
        lo, hi = keep
        mask //= 2
    return steps


def doubling_partners(new_rank, p2):
    """Recursive doubling partners: ``new_rank ^ 1, ^ 2, ^ 4, ...`` (``lg p2`` steps)."""
    partners = []
    mask = 1
    while mask < p2:
        partners.append(new_rank ^ mask)
        mask <<= 1
    return partners


def doubling_plan(rank, p):
    """Recursive doubling for any ``p``, as ``[(action, peer)]`` (see :func:`fold`).

    Actions: ``give`` (send the whole vector to ``peer`` and sit out), ``take`` (receive the
    finished result from ``peer``), ``absorb`` (receive a folded rank's vector and combine it),
    ``exchange`` (swap vectors with ``peer`` and combine), ``return`` (send the finished result
    back to the folded rank). Combining always puts the lower rank's operand first, so both
    partners of an exchange compute the same bits.
    """
    if p == 1:
        return []
    new_rank, partner = fold(rank, p)
    if new_rank is None:
        return [("give", partner), ("take", partner)]
    plan = [("absorb", partner)] if partner is not None else []
    plan += [("exchange", unfold_rank(q, p)) for q in doubling_partners(new_rank, pow2_floor(p))]
    if partner is not None:
        plan.append(("return", partner))
    return plan
