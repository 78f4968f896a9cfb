"""The compressed ring (ringreduce/collectives/compress.py ``RingWire``): the codec inside the
ring's segment loop. Against a numpy simulation of the ring's own order (chunk c starts at
rank c rounded from float32, each later rank adds its float32 input to the 16-bit partial and
rounds once, the owner's 16-bit result is what everyone widens), bit for bit; bitwise identical
on every rank; within the documented bound (p roundings per element); error feedback that
loses nothing over the ranks; fp16 scaling that keeps large values finite. Lengths 0, 1, fewer
than ranks and primes; many segments per chunk (``segment_bytes=64``: 32 elements)."""
import math

import ml_dtypes
import numpy as np
import pytest
from mpi4py import MPI

import ringreduce as rr
from ringreduce.collectives.compress import fp16_scale
from ringreduce.core.choose import shm_max_bytes
from ringreduce.core.schedule import chunk_bounds
from ringreduce.transport.comm import mpi_library

P = MPI.COMM_WORLD.Get_size()
RANK = MPI.COMM_WORLD.Get_rank()
WIRE = {"bf16": np.dtype(ml_dtypes.bfloat16), "fp16": np.dtype(np.float16)}
U = {"bf16": 2.0 ** -8, "fp16": 2.0 ** -11}
LENGTHS = sorted({0, 1, max(P - 1, 1), 2, 3, 13, 997, 7919})
# 2 bytes an element on the wire: "auto" runs the ring from 512 KiB * sqrt(max(p, 4) / 4),
# and on one node from where shm stops for this MPI library (2 MiB).
AUTO_RING = max(600_011, shm_max_bytes(mpi_library()) // 2 + 11)


def inputs(n, rank, scale=1.0):
    rng = np.random.default_rng([rank, n, 7])
    return (rng.standard_normal(n) * scale * 10.0 ** rng.uniform(-2, 2, n)).astype(np.float32)


def simulated_ring(xs, compression, s=1.0):
    """What the ring computes, in numpy with ml_dtypes' casts: chunk c leaves rank c rounded,
    then ranks c + 1, ..., c + p - 1 (the owner last) each add their input in float32 and
    round once; everyone widens the owner's 16-bit values and divides by s."""
    wire, p, n = WIRE[compression], len(xs), xs[0].size
    out = np.empty(n, np.float32)
    for c, (lo, hi) in enumerate(chunk_bounds(n, p)):
        h = (xs[c][lo:hi] * np.float32(s)).astype(wire)
        for k in range(1, p):
            h = (h.astype(np.float32) + xs[(c + k) % p][lo:hi] * np.float32(s)).astype(wire)
        out[lo:hi] = h.astype(np.float32) * np.float32(1 / s)
    return out


def agreed_scale(xs, compression):
    if compression == "bf16":
        return 1.0
    return fp16_scale(max(float(np.abs(x).max()) if x.size else 0.0 for x in xs), len(xs))


def same_everywhere(comm, got):
    everyone = comm.allgather(got.tobytes())
    assert all(b == everyone[0] for b in everyone), "ranks differ"


@pytest.mark.parametrize("compression", ["bf16", "fp16"])
@pytest.mark.parametrize("op", ["sum", "avg"])
def test_the_ring_order_bit_for_bit(compression, op, comm):
    for n in LENGTHS + [AUTO_RING]:
        xs = [inputs(n, r) for r in range(P)]
        algorithms = ["ring", "auto"] if n == AUTO_RING else ["ring"]
        for algorithm in algorithms:
            got = rr.allreduce(xs[RANK], op, algorithm=algorithm, compression=compression,
                               segment_bytes=64 if n < AUTO_RING else None)
            assert got.dtype == np.float32 and got.shape == (n,)
            same_everywhere(comm, got)
            if P > 1:
                expected = simulated_ring(xs, compression, agreed_scale(xs, compression))
                if op == "avg":
                    expected /= np.float32(P)
                np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32),
                                              err_msg=f"n={n} {algorithm}")


@pytest.mark.parametrize("compression", ["bf16", "fp16"])
def test_within_p_roundings_in_place_and_out_of_place(compression, comm):
    for n in LENGTHS:
        xs = [inputs(n, r) for r in range(P)]
        stacked = np.stack([x.astype(np.float64) for x in xs])
        exact, size = stacked.sum(0), np.abs(stacked).sum(0)
        out_of_place = rr.allreduce(xs[RANK], algorithm="ring", compression=compression,
                                    segment_bytes=64)
        mine = xs[RANK].copy()
        in_place = rr.allreduce(mine, algorithm="ring", compression=compression,
                                segment_bytes=64, out=mine)
        np.testing.assert_array_equal(in_place, out_of_place)
        # One rounding where a chunk leaves its first rank, one at each of the p - 1 hops;
        # the float32 work between them adds a little more than u each: 5% slack.
        bound = 1.05 * max(P, 1) * U[compression] * size
        bad = np.abs(out_of_place - exact) > bound
        assert not bad.any(), (n, np.flatnonzero(bad)[:5])


def test_fp16_large_values_stay_finite(comm):
    for n in (1, 5, 997):
        xs = [np.full(n, 6.0e4, np.float32) * (1 + r) for r in range(P)]
        xs = [x * np.where(np.arange(n) % 2, 1, -1).astype(np.float32) for x in xs]
        got = rr.allreduce(xs[RANK], algorithm="ring", compression="fp16", segment_bytes=64)
        assert np.isfinite(got).all()
        exact = np.stack(xs).astype(np.float64).sum(0)
        assert (np.abs(got - exact) <= 1.05 * P * U["fp16"] * np.abs(np.stack(xs)).sum(0)).all()
        same_everywhere(comm, got)


@pytest.mark.parametrize("compression", ["bf16", "fp16"])
def test_error_feedback_loses_nothing_over_the_ranks(compression, comm):
    """Each rank's residual holds what its own roundings removed (its step-0 chunk's
    compression, its sum at every other chunk), so the residuals summed over the ranks plus the
    result give back the inputs summed over the ranks, at every call; over k calls the results
    add up to k times the inputs but for the last residuals."""
    for n in (1, max(P - 1, 1), 13, 997):
        g = inputs(n, RANK, scale=1.0)
        res = [np.zeros_like(g)]
        total = np.zeros(n, np.float64)
        for _ in range(8):
            before = comm.allreduce(g.astype(np.float64) + res[0].astype(np.float64))
            got = rr.grouped_allreduce([g], algorithm="ring", compression=compression,
                                       residuals=res, segment_bytes=64)[0]
            same_everywhere(comm, got)
            left = comm.allreduce(res[0].astype(np.float64))
            scale = comm.allreduce(np.abs(g).astype(np.float64)) + np.abs(before)
            # Exact but for the float32 roundings of g + r and of each sum: 2**-22 relative.
            assert (np.abs(got + left - before) <= 2.0 ** -22 * P * scale).all(), n
            total += got
        every = comm.allreduce(g.astype(np.float64))
        fed = np.abs(total + comm.allreduce(res[0].astype(np.float64)) - 8 * every)
        assert (fed <= 2.0 ** -20 * 8 * P * comm.allreduce(np.abs(g).astype(np.float64))).all()
        if P > 1 and n > 1:
            plain = sum(rr.allreduce(g, algorithm="ring", compression=compression,
                                     segment_bytes=64).astype(np.float64) for _ in range(8))
            assert np.abs(total - 8 * every).sum() < np.abs(plain - 8 * every).sum()


def test_error_feedback_in_the_fusion_buffer(comm):
    """Several tensors with their residuals go through one bucket, packed and unpacked."""
    arrays = [inputs(n, RANK) for n in (5, 0, 301, 7)]
    res = [np.zeros_like(a) for a in arrays]
    got = rr.grouped_allreduce(arrays, algorithm="ring", compression="bf16", residuals=res,
                               segment_bytes=64)
    for a, r, out in zip(arrays, res, got):
        before = comm.allreduce(a.astype(np.float64))
        left = comm.allreduce(r.astype(np.float64))
        assert (np.abs(out + left - before) <= 2.0 ** -22 * P * 2 * comm.allreduce(
            np.abs(a).astype(np.float64))).all()
    assert math.isfinite(sum(float(np.abs(r).sum()) for r in res))
