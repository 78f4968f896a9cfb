"""Gradient compression (``compression="bf16"``/``"fp16"``) against a float64 reference and
the documented error bound (ringreduce/collectives/compress.py): a result element sees at most
1 + r roundings, r = p - 1 for the ring and ceil(lg p) + 1 for rhd, doubling and the tree, each
of relative size u (2**-8 bf16, 2**-11 fp16) of the sum of magnitudes. Results are bitwise
identical on every rank; bad input and mismatches raise on every rank."""
import math

import numpy as np
import pytest
from mpi4py import MPI

import ringreduce as rr

P = MPI.COMM_WORLD.Get_size()
RANK = MPI.COMM_WORLD.Get_rank()
U = {"bf16": 2.0 ** -8, "fp16": 2.0 ** -11}
STEPS = {"ring": P - 1, "rhd": math.ceil(math.log2(P)) + 1 if P > 1 else 0,
         "doubling": math.ceil(math.log2(P)) + 1 if P > 1 else 0,
         "tree": math.ceil(math.log2(P)) if P > 1 else 0}
LENGTHS = sorted({0, 1, max(P - 1, 1), 13, 997})


def inputs(n, rank, scale=1.0):
    rng = np.random.default_rng([rank, n])
    return (rng.standard_normal(n) * scale * 10.0 ** rng.uniform(-2, 2, n)).astype(np.float32)


@pytest.mark.parametrize("compression", ["bf16", "fp16"])
@pytest.mark.parametrize("algorithm", list(STEPS) + ["auto"])
@pytest.mark.parametrize("op", ["sum", "avg"])
def test_within_the_documented_bound(compression, algorithm, op, comm):
    steps = max(STEPS.values()) if algorithm == "auto" else STEPS[algorithm]
    for n in LENGTHS:
        xs = [inputs(n, r) for r in range(P)]
        got = rr.allreduce(xs[RANK], op, algorithm=algorithm, compression=compression,
                           segment_bytes=64)
        assert got.dtype == np.float32 and got.shape == (n,)
        stacked = np.stack([x.astype(np.float64) for x in xs])
        exact, size = stacked.sum(0), np.abs(stacked).sum(0)
        if op == "avg":
            exact, size = exact / P, size / P
        # Float32 work between the roundings adds a little more than u each: 5% slack.
        bound = 1.05 * (1 + steps) * U[compression] * size
        bad = np.abs(got - exact) > bound
        assert not bad.any(), (n, np.flatnonzero(bad)[:5])
        everyone = comm.allgather(got.tobytes())
        assert all(b == everyone[0] for b in everyone), "ranks differ"


def test_fp16_scaling_keeps_large_and_small_values(comm):
    big = np.full(9, 60000.0, np.float32)          # p of these overflow fp16 unscaled
    np.testing.assert_allclose(rr.allreduce(big, compression="fp16"), 60000.0 * P, rtol=2e-3)
    tiny = np.full(9, 3e-8, np.float32)            # below fp16's smallest normal
    np.testing.assert_allclose(rr.allreduce(tiny, compression="fp16"), 3e-8 * P, rtol=2e-3)
    inf = np.array([np.inf, 1.0], np.float32)
    assert np.isinf(rr.allreduce(inf, compression="fp16")[0])


def test_grouped_and_async_compress_like_allreduce(comm):
    arrays = [inputs(n, RANK) for n in (5, 0, 300, 7)]
    single = [rr.allreduce(a, algorithm="ring", compression="bf16") for a in arrays]
    grouped = rr.grouped_allreduce(arrays, algorithm="ring", compression="bf16",
                                   fusion_threshold=0)
    for s, g in zip(single, grouped):
        np.testing.assert_array_equal(s, g)
    handles = [rr.allreduce_async(a, name=f"c{i}", algorithm="ring", compression="bf16")
               for i, a in enumerate(arrays)]
    for h, a in zip(handles, arrays):
        got = h.wait()
        assert got.dtype == np.float32 and got.shape == a.shape


def test_error_feedback_carries_the_rounding(comm):
    """With a residual, what bf16 rounds away from a rank's input is added to its next
    input: over k calls the rank sent k * g - r exactly (on COMM_SELF, where no reduction
    rounds; the engine path is GradSync's, tested in tests/jobs). Without, it loses the same
    rounding at every call."""
    g = np.full(64, 1.0 + 2.0 ** -10, np.float32)  # rounds to 1.0 in bf16 every time
    res = [np.zeros_like(g)]
    sent = np.zeros(64, np.float64)
    for _ in range(32):
        sent += rr.grouped_allreduce([g], compression="bf16", residuals=res,
                                     comm=MPI.COMM_SELF)[0]
    np.testing.assert_allclose(sent + res[0], 32 * g.astype(np.float64), rtol=0, atol=1e-6)
    assert np.all(np.abs(res[0]) <= 2.0 ** -8)
    plain = rr.grouped_allreduce([g], compression="bf16", comm=MPI.COMM_SELF)[0]
    assert plain[0] == 1.0
    # Across the ranks the same residuals make the sum over steps closer to the exact one.
    res = [np.zeros_like(g)]
    fed = sum(rr.grouped_allreduce([g], compression="bf16", residuals=res)[0].astype(np.float64)
              for _ in range(32))
    assert abs(fed[0] - 32 * P * float(g[0])) < abs(32 * P * float(plain[0]) - 32 * P * float(g[0]))


def raises_everywhere(call, kind, *needles):
    with pytest.raises(kind) as info:
        call()
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    np.testing.assert_array_equal(rr.allreduce(np.ones(2)), np.full(2, P))


def test_bad_compression_raises_everywhere(comm):
    last = RANK == P - 1
    raises_everywhere(lambda: rr.allreduce(np.ones(3, np.int32 if last else np.float32),
                                           compression="bf16"), TypeError, "float32")
    raises_everywhere(lambda: rr.allreduce(np.ones(3, np.float32),
                                           compression="zip" if last else None), ValueError,
                      "compression")
    raises_everywhere(lambda: rr.allreduce(np.ones(3, np.float32), "max", compression="bf16"),
                      ValueError, "'sum' and 'avg'")
    if P > 1:
        raises_everywhere(lambda: rr.allreduce(np.ones(3, np.float32),
                                               compression="bf16" if last else "fp16"),
                          rr.MismatchError, "compression")


def test_bfloat16_arrays_every_algorithm(comm):
    import ml_dtypes
    for alg in ["ring", "rhd", "tree", "doubling", "auto", "shm", "hierarchical"]:
        for n in LENGTHS:
            x = ((np.arange(n) + RANK) % 9).astype(ml_dtypes.bfloat16)
            got = rr.allreduce(x, algorithm=alg, segment_bytes=6)
            ref = sum(((np.arange(n) + r) % 9) for r in range(P)) if n else np.zeros(0)
            assert got.dtype == x.dtype
            np.testing.assert_array_equal(got.astype(np.float64), ref)
            got = rr.allreduce(x, "max", algorithm=alg, segment_bytes=6)
            ref = np.max([((np.arange(n) + r) % 9) for r in range(P)], 0) if n else np.zeros(0)
            np.testing.assert_array_equal(got.astype(np.float64), ref)
