"""Tensor fusion: pure bucket assignment, kept apart from the packing (each memory backend's
``pack``/``unpack``) and the sending (``collectives/grouped.py``).

A *bucket* is a run of whole tensors of one dtype, packed into one contiguous fusion buffer
and reduced with one allreduce (Horovod's fusion buffer; PyTorch DDP's buckets). Fusing pays
once per bucket the latency a per-tensor call would pay per tensor; the cap bounds the
buffer's memory and lets the first bucket start before the last tensor is packed.
"""
import numpy as np


def assign_buckets(sizes, cap):
    """Greedy, order-preserving buckets: ``[[index, ...], ...]``.

    ``sizes`` in bytes. A bucket takes tensors in order while its total stays within ``cap``;
    a tensor larger than ``cap`` gets a bucket of its own; ``cap == 0`` means no fusion (one
    tensor per bucket). Empty tensors join the current bucket (they cost nothing).
    """
    if cap < 0:
        raise ValueError(f"bucket cap must be >= 0 bytes, got {cap}")
    buckets, current, total = [], [], 0
    for i, size in enumerate(sizes):
        if size < 0:
            raise ValueError(f"tensor sizes must be >= 0 bytes, got {size} for tensor {i}")
        if current and (cap == 0 or total + size > cap) and size > 0:
            buckets.append(current)
            current, total = [], 0
        current.append(i)
        total += size
    if current:
        buckets.append(current)
    return buckets


def plan_buckets(sizes, cap, direct_bytes, contiguous=None):
    """Buckets for a list of tensors: those of at least ``direct_bytes`` (and contiguous)
    are reduced where they lie, one per bucket, without being copied into a fusion buffer;
    the others are fused by :func:`assign_buckets`. Buckets come in order of their first
    tensor. Packing costs two copies of every byte it moves, which for large tensors costs
    more than the per-call latency that fusion saves (docs/benchmarks.md, "Fusion").
    """
    contiguous = contiguous or [True] * len(sizes)
    direct = [i for i, (n, c) in enumerate(zip(sizes, contiguous)) if c and n >= direct_bytes]
    direct_set = set(direct)
    small = [i for i in range(len(sizes)) if i not in direct_set]
    fused = [[small[j] for j in b] for b in assign_buckets([sizes[i] for i in small], cap)]
    return sorted([[i] for i in direct] + fused, key=lambda b: b[0])


def offsets_of(arrays):
    """Element offsets of each array in a fusion buffer, and the total element count."""
    offs, total = [], 0
    for a in arrays:
        offs.append(total)
        total += a.size
    return offs, total


def group_by_dtype(dtypes):
    """``{dtype: [index, ...]}`` in order of first appearance: buckets never mix dtypes."""
    groups = {}
    for i, dtype in enumerate(dtypes):
        groups.setdefault(np.dtype(dtype), []).append(i)
    return groups
