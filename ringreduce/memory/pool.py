"""Blocks for the results of out-of-place grouped calls, reused once the caller drops them.

A fresh 100 MiB of result arrays per call costs about 20 ms of page faults here (the kernel
zeroes every page on first touch; glibc returns large frees to the kernel with munmap, so the
next call faults again), more than the fused reduction saves. So the results of one call are
views into one block per dtype, and a block goes back to work as soon as nothing refers to it
any more: every view holds a reference to its block (numpy's ``base``), so a block whose
reference count is the pool's own is free. A caller who keeps last step's results (or any
view of them) keeps their block; the call then takes another, and at most ``KEEP`` blocks per
dtype stay around.
"""
import sys

import numpy as np

KEEP = 2


class ResultPool:
    def __init__(self):
        self.blocks = {}  # dtype -> [1-D blocks]

    def _free_block(self, dtype, n):
        blocks = self.blocks.setdefault(dtype, [])
        # A free block is referenced by the list, the loop variable and getrefcount's
        # argument only (no enumerate: its result tuple would hold one more reference).
        for b in blocks:
            if b.size >= n and sys.getrefcount(b) <= 3:
                return b
        if len(blocks) >= KEEP:
            free = [k for k in range(len(blocks)) if sys.getrefcount(blocks[k]) <= 2]
            if not free:
                return np.empty(n, dtype)  # all in use: an unpooled block
            del blocks[free[0]]  # free but too small: make room
        b = np.empty(n, dtype)
        blocks.append(b)
        return b

    def arrays(self, layout):
        """Arrays of ``[(shape, dtype)]``, as views into one block per dtype."""
        totals = {}
        for shape, dtype in layout:
            totals[dtype] = totals.get(dtype, 0) + int(np.prod(shape, dtype=np.int64))
        blocks = {d: self._free_block(d, n) for d, n in totals.items()}
        offsets = dict.fromkeys(totals, 0)
        out = []
        for shape, dtype in layout:
            n = int(np.prod(shape, dtype=np.int64))
            off = offsets[dtype]
            out.append(blocks[dtype][off:off + n].reshape(shape))
            offsets[dtype] = off + n
        return out
