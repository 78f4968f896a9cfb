"""grouped_allreduce at any rank count, against per-tensor allreduce and numpy."""
import numpy as np
import pytest
from mpi4py import MPI

import ringreduce as rr

P = MPI.COMM_WORLD.Get_size()
RANK = MPI.COMM_WORLD.Get_rank()


def make_arrays(rank, seed=0):
    rng = np.random.default_rng([seed, rank])
    base = rng.integers(-9, 9, (6, 10)).astype(np.float64)
    return [
        rng.integers(-9, 9, 5).astype(np.float32),
        rng.integers(-9, 9, (3, 4)).astype(np.float64),
        np.zeros(0, np.float32),                       # empty
        rng.integers(-9, 9, 1000).astype(np.float32),  # larger than a small cap
        base[:, ::3],                                  # non-contiguous
        rng.integers(-9, 9, 7).astype(np.int32),
        np.float64(rank + 1) * np.ones(()),            # 0-d
    ]


def expected(i):
    return np.sum([make_arrays(r)[i].astype(np.float64) for r in range(P)], axis=0)


@pytest.mark.parametrize("cap", [0, 64, 1 << 20])
@pytest.mark.parametrize("algorithm", ["auto", "ring", "tree", "rhd", "doubling"])
def test_grouped_matches_reference(cap, algorithm):
    arrays = make_arrays(RANK)
    keep = [a.copy() for a in arrays]
    outs = rr.grouped_allreduce(arrays, algorithm=algorithm, fusion_threshold=cap,
                                segment_bytes=32)
    assert len(outs) == len(arrays)
    for i, (o, a, k) in enumerate(zip(outs, arrays, keep)):
        assert o.shape == a.shape and o.dtype == a.dtype
        np.testing.assert_array_equal(o, expected(i).astype(a.dtype))
        np.testing.assert_array_equal(a, k)


@pytest.mark.parametrize("cap", [0, 64, 1 << 20])
def test_grouped_inplace_writes_through_views(cap):
    arrays = make_arrays(RANK)
    parent = np.random.default_rng(RANK).integers(-9, 9, (6, 10)).astype(np.float64)
    view = parent[:, ::3]
    arrays[4] = view
    before_other = parent[:, 1::3].copy()
    total_view = np.sum([np.random.default_rng(r).integers(-9, 9, (6, 10)).astype(np.float64)[:, ::3]
                         for r in range(P)], axis=0)
    res = rr.grouped_allreduce(arrays, inplace=True, fusion_threshold=cap)
    assert all(r is a for r, a in zip(res, arrays))
    np.testing.assert_array_equal(parent[:, ::3], total_view)
    np.testing.assert_array_equal(parent[:, 1::3], before_other)
    np.testing.assert_array_equal(arrays[0], expected(0).astype(np.float32))


def test_grouped_avg_and_bitwise_identical():
    rng = np.random.default_rng(RANK)
    arrays = [rng.standard_normal(n).astype(np.float32) for n in (3, 1000, 17, 50000)]
    outs = rr.grouped_allreduce(arrays, "avg", fusion_threshold=4096)
    gens = [np.random.default_rng(r) for r in range(P)]
    ref = [np.mean([g.standard_normal(n).astype(np.float32).astype(np.float64) for g in gens],
                   axis=0) for n in (3, 1000, 17, 50000)]
    for o, r in zip(outs, ref):
        np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-6)
    everyone = MPI.COMM_WORLD.allgather(b"".join(o.tobytes() for o in outs))
    assert all(e == everyone[0] for e in everyone)


@pytest.mark.mpi(min_size=2)
def test_grouped_mismatched_tensor_count():
    arrays = [np.ones(3)] * (3 if RANK == 0 else 2)
    with pytest.raises(rr.MismatchError, match="Mismatched grouped_allreduce tensor counts"):
        rr.grouped_allreduce(arrays)
    assert np.all(rr.grouped_allreduce([np.ones(2)])[0] == P)


@pytest.mark.mpi(min_size=2)
def test_grouped_mismatched_shape_names_tensor():
    arrays = [np.ones(3), np.ones(4 if RANK == P - 1 else 5)]
    with pytest.raises(rr.MismatchError) as info:
        rr.grouped_allreduce(arrays)
    msg = str(info.value)
    assert "tensor shapes" in msg and "for tensor 1" in msg and "(4,)" in msg and "(5,)" in msg


def test_grouped_bad_input():
    with pytest.raises(TypeError, match="list or tuple"):
        rr.grouped_allreduce(np.ones(3))
    with pytest.raises(ValueError, match="read-only"):
        a = np.ones(3)
        a.flags.writeable = False
        rr.grouped_allreduce([a], inplace=True)
    assert rr.grouped_allreduce([]) == []
