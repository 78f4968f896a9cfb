"""grouped_allreduce on every kind of memory, at any rank count, against numpy: mixed shapes
and dtypes, empty, 0-d and non-contiguous tensors, one or several buckets."""
import numpy as np
import pytest
from mpi4py import MPI

import ringreduce as rr
from _memory import Host, cases, put_like

P = MPI.COMM_WORLD.Get_size()
RANK = MPI.COMM_WORLD.Get_rank()
ALGS = ("auto", "ring", "tree", "rhd", "doubling")
CAPS = (0, 64, 1 << 20)  # no fusion, a bucket per few tensors, one bucket per dtype


def make_arrays(rank, seed=0):
    rng = np.random.default_rng([seed, rank])
    base = rng.integers(-9, 9, (6, 10)).astype(np.float64)
    return [
        rng.integers(-9, 9, 5).astype(np.float32),
        rng.integers(-9, 9, (3, 4)).astype(np.float64),
        np.zeros(0, np.float32),                       # empty
        rng.integers(-9, 9, 200).astype(np.float32),   # larger than a small cap
        base[:, ::3],                                  # non-contiguous
        rng.integers(-9, 9, 7).astype(np.int32),
        np.float64(rank + 1) * np.ones(()),            # 0-d
    ]


def expected(i):
    return np.sum([make_arrays(r)[i].astype(np.float64) for r in range(P)], axis=0)


def reference_cases(kind):
    """(algorithm, cap): every algorithm with every cap on the host; on the device every
    algorithm with several buckets (cap 64) and the ring with the other caps."""
    if kind is Host:
        return [(a, cap) for a in ALGS for cap in CAPS]
    return [(a, 64) for a in ALGS] + [("ring", cap) for cap in CAPS if cap != 64]


@pytest.mark.parametrize("memory,algorithm,cap", cases(reference_cases), indirect=["memory"],
                         ids=str)
def test_grouped_matches_reference(memory, algorithm, cap):
    host = make_arrays(RANK)
    arrays = [put_like(memory, a) for a in host]
    outs = rr.grouped_allreduce(arrays, algorithm=algorithm, fusion_threshold=cap,
                                segment_bytes=32)
    assert len(outs) == len(arrays)
    for i, (o, a, k) in enumerate(zip(outs, arrays, host)):
        assert memory.is_ours(o) and o.shape == a.shape and o.dtype == a.dtype
        np.testing.assert_array_equal(memory.get(o), expected(i).astype(a.dtype))
        np.testing.assert_array_equal(memory.get(a), k)


@pytest.mark.parametrize("cap", CAPS)
def test_grouped_inplace_writes_through_views(memory, cap):
    arrays = [put_like(memory, a) for a in make_arrays(RANK)]
    host_parent = np.random.default_rng(RANK).integers(-9, 9, (6, 10)).astype(np.float64)
    parent = memory.put(host_parent)
    arrays[4] = parent[:, ::3]
    total_view = np.sum([np.random.default_rng(r).integers(-9, 9, (6, 10)).astype(np.float64)[:, ::3]
                         for r in range(P)], axis=0)
    res = rr.grouped_allreduce(arrays, inplace=True, fusion_threshold=cap)
    assert all(r is a for r, a in zip(res, arrays))
    after = memory.get(parent)
    np.testing.assert_array_equal(after[:, ::3], total_view)
    np.testing.assert_array_equal(after[:, 1::3], host_parent[:, 1::3])
    np.testing.assert_array_equal(memory.get(arrays[0]), expected(0).astype(np.float32))


def test_grouped_avg_bitwise_identical_and_as_on_the_host(memory):
    """Random floats: within rounding of float64, the same bits on every rank, and the bits
    of the host path for the same list (the same buckets, the same reduction order)."""
    sizes = (3, 1000, 17, 5000)
    rng = np.random.default_rng(RANK)
    host = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    outs = [memory.get(o) for o in rr.grouped_allreduce([memory.put(a) for a in host], "avg",
                                                        fusion_threshold=4096)]
    gens = [np.random.default_rng(r) for r in range(P)]
    ref = [np.mean([g.standard_normal(n).astype(np.float32).astype(np.float64) for g in gens],
                   axis=0) for n in sizes]
    for o, r in zip(outs, ref):
        np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-6)
    everyone = MPI.COMM_WORLD.allgather(b"".join(o.tobytes() for o in outs))
    assert all(e == everyone[0] for e in everyone)
    on_host = rr.grouped_allreduce(host, "avg", fusion_threshold=4096)
    for o, h in zip(outs, on_host):
        np.testing.assert_array_equal(o, h)


@pytest.mark.mpi(min_size=2)
def test_grouped_mismatched_tensor_count(memory):
    arrays = [memory.put(np.ones(3)) for _ in range(3 if RANK == 0 else 2)]
    with pytest.raises(rr.MismatchError, match="Mismatched grouped_allreduce tensor counts"):
        rr.grouped_allreduce(arrays)
    assert np.all(memory.get(rr.grouped_allreduce([memory.put(np.ones(2))])[0]) == P)


@pytest.mark.mpi(min_size=2)
def test_grouped_mismatched_shape_names_tensor(memory):
    arrays = [memory.put(np.ones(3)), memory.put(np.ones(4 if RANK == P - 1 else 5))]
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


def mixed_list(rank, dtype):
    """Tensors around one segment of 64 bytes: large ones go straight through, small ones
    are packed, with chunk and segment edges falling inside tensors."""
    rng = np.random.default_rng([7, rank])
    sizes = [3, 40, 17, 0, 101, 1, 16, 61, 5, 257]
    out = [rng.integers(-9, 9, n).astype(dtype) for n in sizes]
    wide = rng.integers(-9, 9, (9, 12)).astype(dtype)
    out.insert(4, wide[:, ::2])     # a non-contiguous large one: packed, not used in place
    out.insert(2, rng.integers(-9, 9, (4, 33)).astype(dtype))
    return out


def mixed_cases(kind):
    """(dtype, op, inplace): all of them on the host; on the device each dtype and op once,
    in place and not (each case is a dozen tensors, and a kernel launch costs milliseconds
    in the simulator)."""
    every = [(np.dtype(d), op, inplace) for d in (np.float32, np.int64, np.float16)
             for op in ("sum", "max", "avg") for inplace in (False, True)
             if not (op == "avg" and np.dtype(d).kind == "i")]
    if kind is Host:
        return every
    return [(np.dtype(np.float32), "sum", False), (np.dtype(np.float32), "max", True),
            (np.dtype(np.int64), "max", False), (np.dtype(np.float16), "avg", True)]


@pytest.mark.parametrize("memory,dtype,op,inplace", cases(mixed_cases), indirect=["memory"],
                         ids=str)
def test_mixed_sizes_dtypes_ops_in_place_or_not(memory, dtype, op, inplace):
    host = mixed_list(RANK, dtype)
    arrays = [put_like(memory, a) for a in host]
    everyone = [mixed_list(r, dtype) for r in range(P)]
    res = rr.grouped_allreduce(arrays, op, algorithm="ring", inplace=inplace,
                               fusion_threshold=1 << 20, segment_bytes=64)
    got = [memory.get(o) for o in res]
    for i, (o, a, k) in enumerate(zip(got, arrays, host)):
        stack = np.stack([e[i].astype(np.float64) for e in everyone])
        want = {"sum": stack.sum(0), "max": stack.max(0), "avg": stack.mean(0)}[op]
        assert o.shape == a.shape and o.dtype == a.dtype
        # Integer-valued data: every order of summation is exact (avg: one rounding).
        np.testing.assert_array_equal(o, want.astype(dtype), err_msg=f"tensor {i}")
        if inplace:
            assert res[i] is a
        else:
            np.testing.assert_array_equal(memory.get(a), k)
    everyone_got = MPI.COMM_WORLD.allgather(b"".join(o.tobytes() for o in got))
    assert all(g == everyone_got[0] for g in everyone_got)


def test_auto_on_megabytes_of_tensors():
    # 2 MiB of float32: auto sends the large ones by the ring; random data, so the check is
    # against float64 and bitwise agreement between ranks.
    rng = np.random.default_rng(RANK)
    sizes = [300_000, 7, 100_000, 70_001, 33, 54_321]
    arrays = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    res = rr.grouped_allreduce(arrays)
    gens = [np.random.default_rng(r) for r in range(P)]
    per_rank = [[g.standard_normal(n).astype(np.float32) for n in sizes] for g in gens]
    for i, o in enumerate(res):
        want = np.sum([pr[i].astype(np.float64) for pr in per_rank], axis=0)
        np.testing.assert_allclose(o, want, rtol=1e-5, atol=1e-5 * P)
    got = MPI.COMM_WORLD.allgather(b"".join(o.tobytes() for o in res))
    assert all(g == got[0] for g in got)


@pytest.mark.mpi(min_size=2)
def test_ranks_with_different_fusion_thresholds_all_raise(memory):
    cap = 4096 if RANK == P - 1 else 1 << 20
    with pytest.raises(rr.MismatchError, match="Mismatched grouped_allreduce fusion_threshold"):
        rr.grouped_allreduce([memory.put(np.ones(3)), memory.put(np.ones(5))],
                             fusion_threshold=cap)
    assert np.all(memory.get(rr.grouped_allreduce([memory.put(np.ones(2))])[0]) == P)


@pytest.mark.parametrize("kwargs,message", [
    (dict(fusion_threshold=-1), "fusion_threshold must be an int >= 0 .*got -1"),
    (dict(fusion_threshold=1.5), "fusion_threshold must be an int >= 0 .*got 1.5"),
    (dict(segment_bytes=0), "segment_bytes must be an int >= 1, got 0"),
])
def test_bad_sizes_raise_on_every_rank(memory, kwargs, message):
    bad = kwargs if RANK == 0 else {}  # only rank 0 passes it: every rank must still raise
    with pytest.raises(ValueError, match=message if RANK == 0 else "rejected the input on"):
        rr.grouped_allreduce([memory.put(np.ones(3)), memory.put(np.ones(4))], **bad)
    assert np.all(memory.get(rr.grouped_allreduce([memory.put(np.ones(2))])[0]) == P)


@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("op", ["sum", "avg", "max"])
def test_one_ring_over_large_tensors_and_the_fused_small_ones(inplace, op):
    """With the ring (or direct) chosen, large tensors (at least a segment) and the fusion buffer of the
    small ones go through one ring as Spans: results as float64 says, the same bits on every
    rank, inputs untouched out of place; odd lengths, a non-contiguous large tensor, empty."""
    seg = 64  # bytes: float64 tensors of 8 or more elements are "large"
    def arrays(rank):
        rng = np.random.default_rng([7, rank])
        wide = rng.standard_normal((5, 26))
        return [rng.standard_normal(n) for n in (13, 3, 0, 97, 1, 8, 7, 31)] + [wide[:, ::2]]
    mine = arrays(RANK)
    keep = [a.copy() for a in mine]
    ref = [np.stack([arrays(r)[i] for r in range(P)]) for i in range(len(mine))]
    want = [{"sum": r.sum(0), "avg": r.sum(0) / P, "max": r.max(0)}[op] for r in ref]
    for algorithm in ("ring", "direct", "auto"):
        work = [a.copy() for a in mine]
        got = rr.grouped_allreduce(work, op, algorithm=algorithm, inplace=inplace,
                                   segment_bytes=seg, fusion_threshold=1 << 20)
        for i, (g, w) in enumerate(zip(got, want)):
            np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-13, err_msg=f"tensor {i}")
        if not inplace:
            for w, k in zip(work, keep):
                np.testing.assert_array_equal(w, k)
        everyone = MPI.COMM_WORLD.allgather(b"".join(np.ascontiguousarray(g).tobytes()
                                                     for g in got))
        assert all(e == everyone[0] for e in everyone)
