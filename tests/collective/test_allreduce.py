"""rr.allreduce on every kind of memory (the ``memory`` fixture: numpy arrays, and CUDA device
arrays under the simulator or on a GPU) against a float64 numpy reference, and on the host
against native MPI. What only device arrays do is in test_device.py.

Runs at any rank count: plain ``pytest`` is 1 rank, ``mpiexec -n N python -m pytest`` is N.
Small segment sizes make even tiny inputs cross many segments.
"""
import array

import numpy as np
import pytest
from mpi4py import MPI

import ringreduce as rr
from _memory import Host, cases
from ringreduce.core.choose import choose_algorithm

ALGS = list(Host.algorithms)
P = MPI.COMM_WORLD.Get_size()
RANK = MPI.COMM_WORLD.Get_rank()
LENGTHS = tuple(sorted({0, 1, 2, max(P - 1, 1), 7, 13, 97}))


def ops_for(dtype):
    ops = ["sum", "min", "max", "prod"]
    if dtype.kind in "fc":
        ops.append("avg")
    if dtype.kind == "c":
        ops = [o for o in ops if o not in ("min", "max")]
    return ops


def inputs(dtype, n, rank, op, seed=0):
    """Integer-valued data small enough that every op is exact in every dtype at <= 8 ranks."""
    rng = np.random.default_rng([seed, rank, n])
    if op == "prod":
        vals = rng.choice([-1, 1, 2] if dtype.kind != "u" else [1, 2], n)
    elif dtype.kind == "u":
        vals = rng.integers(0, 12, n)
    else:
        vals = rng.integers(-12, 12, n)
    x = vals.astype(dtype)
    if dtype.kind == "c":
        x = x + 1j * rng.integers(-3, 3, n).astype(dtype)
    return x


def reference(dtype, n, op, comm):
    xs = [inputs(dtype, n, r, op).astype(np.complex128 if dtype.kind == "c" else np.float64)
          for r in range(comm.Get_size())]
    ref = {"sum": np.sum, "prod": np.prod, "min": np.min, "max": np.max,
           "avg": np.mean}[op](np.stack(xs), axis=0) if n else np.zeros(0)
    return ref


def same_everywhere(comm, arr):
    everyone = comm.allgather(np.ascontiguousarray(arr).tobytes())
    assert all(b == everyone[0] for b in everyone), "ranks disagree bitwise"


def every_dtype(kind):
    """(algorithm, dtype, ops, lengths). The host: every algorithm, dtype, op and length. The
    device, whose cases must stay few (a kernel launch costs milliseconds in the simulator):
    every algorithm and length on float64 with sum and avg (the reduction and the scaling
    kernel), and every other dtype with every op on the ring (pipelined, many segments) at
    97 elements. The CUDA kernels of every dtype and op are also checked one by one in
    tests/_cuda_sim_checks.py."""
    if kind is Host:
        return [(a, d, ops_for(d), LENGTHS) for a in kind.algorithms for d in kind.dtypes]
    f64 = np.dtype(np.float64)
    return ([(a, f64, ["sum", "avg"], LENGTHS) for a in kind.algorithms]
            + [("ring", d, ops_for(d), (97,)) for d in kind.dtypes if d != f64])


def per_algorithm(kind):
    return [(a,) for a in kind.algorithms]


def case_id(value):
    if isinstance(value, tuple):
        return "n=" + ",".join(map(str, value))
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


@pytest.mark.parametrize("memory,algorithm,dtype,ops,lengths", cases(every_dtype),
                         indirect=["memory"], ids=case_id)
def test_every_dtype_op_and_length(memory, algorithm, dtype, ops, lengths, comm):
    seg = memory.segment_elems * dtype.itemsize
    for op in ops:
        for n in lengths:
            x = inputs(dtype, n, RANK, op)
            d = memory.put(x)
            got = rr.allreduce(d, op, algorithm=algorithm, segment_bytes=seg)
            assert memory.is_ours(got), type(got)
            got = memory.get(got)
            assert got.dtype == dtype and got.shape == x.shape
            np.testing.assert_array_equal(memory.get(d), x, err_msg="input was modified")
            ref = reference(dtype, n, op, comm)
            if op == "avg":
                np.testing.assert_allclose(got, ref.astype(dtype),
                                           rtol=2e-3 if dtype == np.float16 else 1e-6)
                same_everywhere(comm, got)
            else:
                # Exact on every rank, so the same bits on every rank.
                np.testing.assert_array_equal(got, ref.astype(dtype), err_msg=f"{op} n={n}")


def random_input(dtype, n, rank, seed):
    return np.random.default_rng([seed, rank, n, 7]).standard_normal(n).astype(dtype)


def float_cases(kind):
    """(algorithm, dtype): every algorithm with every float dtype on the host; on the device
    every algorithm with float32, and float64 and float16 with the ring and doubling."""
    floats = ("float64", "float32", "float16")
    if kind is Host:
        return [(a, d) for a in kind.algorithms for d in floats]
    return [(a, "float32") for a in kind.algorithms] + [
        (a, d) for a in ("ring", "doubling") for d in floats if d != "float32"]


@pytest.mark.parametrize("memory,algorithm,dtype", cases(float_cases), indirect=["memory"])
def test_random_floats_round_like_float64_and_like_the_host(memory, algorithm, dtype, comm):
    """Random floats: within rounding of the float64 reduction, the same bits on every rank,
    and the bits of the host path for the same algorithm and segment size (the same
    reduction order and the same IEEE operations, whatever the memory)."""
    dtype = np.dtype(dtype)
    rtol = {"float64": 1e-13, "float32": 1e-5, "float16": 1e-2}[dtype.name] * P
    seg = memory.segment_elems * dtype.itemsize
    for i, op in enumerate(("sum", "avg")):
        xs = [random_input(dtype, 97, r, i) for r in range(P)]
        got = memory.get(rr.allreduce(memory.put(xs[RANK]), op, algorithm=algorithm,
                                      segment_bytes=seg))
        ref = {"sum": np.sum, "avg": np.mean}[op](
            np.stack([x.astype(np.float64) for x in xs]), axis=0)
        np.testing.assert_allclose(got.astype(np.float64), ref, rtol=rtol, atol=rtol,
                                   err_msg=op)
        same_everywhere(comm, got)
        on_host = rr.allreduce(xs[RANK], op, algorithm=algorithm, segment_bytes=seg)
        np.testing.assert_array_equal(got, on_host, err_msg=f"{op}: not the host's bits")


@pytest.mark.parametrize("algorithm", ALGS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_native_mpi_and_is_bitwise_identical(algorithm, dtype, comm):
    """Random floats: the sum order differs from MPI's, so compare with a tolerance, but all
    ranks must agree bit for bit."""
    rng = np.random.default_rng(RANK + 17)
    for n in [1, P + 1, 1009, 40000]:
        x = (rng.standard_normal(n) * 10 ** rng.uniform(-3, 3, n)).astype(dtype)
        native = np.empty_like(x)
        comm.Allreduce(x, native, op=MPI.SUM)
        got = rr.allreduce(x, algorithm=algorithm, segment_bytes=4096)
        exact = np.sum([np.asarray(a, np.float64) for a in comm.allgather(x)], axis=0)
        tol = 1e-5 if dtype == "float32" else 1e-12
        scale = np.sum([np.abs(np.asarray(a, np.float64)) for a in comm.allgather(x)], axis=0)
        assert np.all(np.abs(got - exact) <= tol * scale + 1e-30)
        assert np.all(np.abs(native - exact) <= tol * scale + 1e-30)
        same_everywhere(comm, got)


@pytest.mark.parametrize("memory,algorithm", cases(per_algorithm), indirect=["memory"])
def test_big_tiny_values_agree_bitwise(memory, algorithm, comm):
    """MPICH's allred_float idea: BIG, -BIG and TINY make the sum order visible."""
    big, tiny = np.float32(1e30), np.float32(1e-30)
    x = np.array([[big, -big, tiny][(RANK + i) % 3] for i in range(257)], np.float32)
    got = memory.get(rr.allreduce(memory.put(x), algorithm=algorithm, segment_bytes=64))
    same_everywhere(comm, got)


@pytest.mark.parametrize("memory,algorithm", cases(per_algorithm), indirect=["memory"])
def test_in_place_and_out(memory, algorithm, comm):
    x = inputs(np.dtype(np.float64), 101, RANK, "sum")
    ref = reference(np.dtype(np.float64), 101, "sum", comm)
    y = memory.put(x)
    res = rr.allreduce(y, algorithm=algorithm, out=y, segment_bytes=40)
    assert res is y
    np.testing.assert_array_equal(memory.get(y), ref)
    src, out = memory.put(x), memory.put(np.full_like(x, np.nan))
    res = rr.allreduce(src, algorithm=algorithm, out=out, segment_bytes=40)
    assert res is out
    np.testing.assert_array_equal(memory.get(out), ref)
    np.testing.assert_array_equal(memory.get(src), x)


def shape_cases(kind):
    """Every algorithm on the host; the device's views and copies do not depend on the
    algorithm, so there the ring and the tree (a pipelined and a rooted schedule) do."""
    return per_algorithm(kind) if kind is Host else [("ring",), ("tree",)]


@pytest.mark.parametrize("memory,algorithm", cases(shape_cases), indirect=["memory"])
def test_shapes_and_non_contiguous(memory, algorithm, comm):
    host_base = np.arange(60, dtype=np.float32).reshape(6, 10) * (RANK + 1)
    base = memory.put(host_base)
    tri = P * (P + 1) // 2
    seg = memory.segment_elems * 4
    for x in (base[:, ::3], base.T, base[::2], memory.put(np.float32(RANK + 1) * np.ones(())),
              base[:0]):
        keep = memory.get(x)
        got = rr.allreduce(x, algorithm=algorithm, segment_bytes=seg)
        assert memory.is_ours(got) and got.shape == x.shape
        np.testing.assert_array_equal(memory.get(got), keep / (RANK + 1) * tri)
        np.testing.assert_array_equal(memory.get(x), keep)
    # in place on a non-contiguous view writes through to the parent
    parent = memory.put(host_base)
    view = parent[:, 1::2]
    assert rr.allreduce(view, algorithm=algorithm, out=view, segment_bytes=seg) is view
    after = memory.get(parent)
    np.testing.assert_array_equal(after[:, 1::2], host_base[:, 1::2] / (RANK + 1) * tri)
    np.testing.assert_array_equal(after[:, 0::2], host_base[:, 0::2])
    # a non-contiguous out, and one that leaves its neighbours alone
    out = memory.put(np.zeros((10, 6), np.float32)).T
    rr.allreduce(base, algorithm=algorithm, out=out, segment_bytes=seg)
    np.testing.assert_array_equal(memory.get(out), host_base / (RANK + 1) * tri)
    target_base = memory.put(np.full((6, 20), -7, np.float32))
    rr.allreduce(base, algorithm=algorithm, out=target_base[:, 1::2], segment_bytes=seg)
    after = memory.get(target_base)
    np.testing.assert_array_equal(after[:, 1::2], host_base / (RANK + 1) * tri)
    np.testing.assert_array_equal(after[:, ::2], np.full((6, 10), -7, np.float32))


def test_array_like_inputs(comm):
    buf = array.array("d", [RANK + 1.0] * 5)          # buffer protocol
    got = rr.allreduce(buf)
    assert isinstance(got, np.ndarray) and np.all(got == P * (P + 1) / 2)

    class Interface:                                   # __array_interface__ only
        def __init__(self, a):
            self.a = a
            self.__array_interface__ = a.__array_interface__
    a = np.full(4, RANK, np.int32)
    target = Interface(a)
    assert rr.allreduce(Interface(a.copy()), out=target) is target
    assert np.all(a == P * (P - 1) // 2)


def test_auto_matches_choice(comm):
    for nbytes in [8, 1 << 12, 1 << 16, 1 << 22]:
        name = choose_algorithm(nbytes, P)
        assert name in rr.ALGORITHM_NAMES
    assert choose_algorithm(8, P) == "doubling"


def test_errors_on_every_rank_for_bad_input(memory, comm):
    x = memory.put(np.ones(4))
    with pytest.raises(ValueError, match="expected one of sum, avg, min, max, prod"):
        rr.allreduce(x, "mean")
    with pytest.raises(ValueError, match="expected one of auto, ring, tree, rhd, doubling"):
        rr.allreduce(x, algorithm="butterfly")
    with pytest.raises(TypeError, match="avg.*floating"):
        rr.allreduce(memory.put(np.ones(3, np.int32)), "avg")
    with pytest.raises(ValueError, match="out must have x's shape"):
        rr.allreduce(x, out=memory.put(np.ones(5)))
    with pytest.raises(ValueError, match="overlaps"):
        y = memory.put(np.ones(8))
        rr.allreduce(y[:4], out=y[2:6])
    # still usable
    assert np.all(memory.get(rr.allreduce(x)) == P)


def test_host_only_input_errors(comm):
    with pytest.raises(TypeError, match="complex"):
        rr.allreduce(np.ones(3, np.complex64), "max")
    with pytest.raises(TypeError, match="unsupported dtype bool"):
        rr.allreduce(np.ones(3, bool))
    with pytest.raises(TypeError, match="numeric array"):
        rr.allreduce([object()])
    assert np.all(rr.allreduce(np.ones(2)) == P)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("memory,algorithm", cases(per_algorithm), indirect=["memory"])
def test_mismatched_counts_error_everywhere(memory, algorithm, comm):
    n = 10 if RANK != 1 else 12
    with pytest.raises(rr.MismatchError) as info:
        rr.allreduce(memory.put(np.ones(n, np.float32)), algorithm=algorithm)
    msg = str(info.value)
    assert "Mismatched allreduce count" in msg and "(12,)" in msg and "(10,)" in msg
    assert np.all(memory.get(rr.allreduce(memory.put(np.ones(3)), algorithm=algorithm)) == P)


@pytest.mark.mpi(min_size=2)
def test_mismatched_dtype_op_shape_algorithm(memory, comm):
    last = RANK == P - 1
    cases_ = [
        (dict(x=np.ones(6, np.float64 if last else np.float32)), "dtype", "float32"),
        (dict(x=np.ones(6), op="max" if last else "sum"), "op", "'max'"),
        (dict(x=np.ones((2, 3) if last else (3, 2))), "tensor shapes", "(2, 3)"),
        (dict(x=np.ones(6), algorithm="ring" if last else "tree"), "algorithm", "'ring'"),
    ]
    for kwargs, what, named in cases_:
        x = memory.put(kwargs.pop("x"))
        with pytest.raises(rr.MismatchError, match=f"Mismatched allreduce {what}") as info:
            rr.allreduce(x, **kwargs)
        assert named in str(info.value) and f"rank {P - 1}" in str(info.value) + f"rank {RANK}"
    assert np.all(memory.get(rr.allreduce(memory.put(np.ones(2)))) == P)


@pytest.mark.mpi(min_size=2)
def test_bad_input_on_one_rank_errors_everywhere(memory, comm):
    op = "bogus" if RANK == 0 else "sum"
    with pytest.raises(ValueError, match="bogus"):
        rr.allreduce(memory.put(np.ones(3)), op)
    assert np.all(memory.get(rr.allreduce(memory.put(np.ones(3)))) == P)


def test_private_communicator_does_not_collide(comm):
    """A user receive posted with ANY_TAG before the call must not catch library traffic."""
    if P == 1:
        pytest.skip("needs a peer")
    got = np.zeros(1)
    req = comm.Irecv(got, source=(RANK - 1) % P, tag=MPI.ANY_TAG)
    res = rr.allreduce(np.ones(1000) * RANK, algorithm="ring", segment_bytes=64)
    comm.Send(np.array([42.0]), dest=(RANK + 1) % P, tag=7)
    req.Wait()
    assert got[0] == 42.0 and np.all(res == P * (P - 1) / 2)


def test_sub_communicator(memory, comm):
    sub = comm.Split(RANK % 2, RANK)
    try:
        got = rr.allreduce(memory.put(np.full(5, RANK, np.int64)), comm=sub, algorithm="ring")
        members = [r for r in range(P) if r % 2 == RANK % 2]
        assert np.all(memory.get(got) == sum(members))
    finally:
        sub.Free()


def test_the_small_call_hot_path_keeps_every_guard(comm):
    """A small host call repeats (its plan is cached, the hot path serves it), then one rank
    changes its count, op or dtype, or passes a read-only array for in place, or a
    non-contiguous one: every case still agrees, reduces or raises on every rank."""
    for _ in range(3):
        x = np.arange(5, dtype=np.float32) + RANK
        assert np.array_equal(rr.allreduce(x), np.arange(5) * P + P * (P - 1) / 2)
        y = x.copy()
        assert rr.allreduce(y, "max", out=y) is y and np.array_equal(y, np.arange(5) + P - 1)
        assert np.array_equal(rr.allreduce(x.reshape(1, 5), "avg"),
                              ((np.arange(5) * P + P * (P - 1) / 2) / P).reshape(1, 5))
    frozen = np.ones(5, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        rr.allreduce(frozen, out=frozen)
    strided = np.ones(10, np.float32)[::2]
    assert np.array_equal(rr.allreduce(strided), np.full(5, P))
    if P > 1:
        n = 6 if RANK == P - 1 else 5
        with pytest.raises(rr.MismatchError, match="count"):
            rr.allreduce(np.ones(n, np.float32))
        with pytest.raises(rr.MismatchError, match="op"):
            rr.allreduce(np.ones(5, np.float32), "min" if RANK == 0 else "sum")
    assert np.array_equal(rr.allreduce(np.ones(5, np.float32)), np.full(5, P))


def test_the_hot_path_with_a_separate_out(comm):
    """The hot path writes into a plain ``out`` and leaves ``x`` alone; an overlapping,
    wrongly shaped or read-only ``out`` still gets the general path's answer or error."""
    x = np.arange(6, dtype=np.float64) + RANK
    want = np.arange(6) * P + P * (P - 1) / 2
    for _ in range(3):
        out = np.full(6, np.nan)
        assert rr.allreduce(x, out=out) is out and np.array_equal(out, want)
        assert np.array_equal(x, np.arange(6) + RANK)
    with pytest.raises(ValueError, match="shape"):
        rr.allreduce(x, out=np.empty(5))
    frozen = np.empty(6)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        rr.allreduce(x, out=frozen)
    base = np.zeros(7)
    base[:6] = x
    with pytest.raises(ValueError, match="overlaps"):
        rr.allreduce(base[:6], out=base[1:])


def test_the_pair_path_meets_the_general_body(comm):
    """At two ranks a small contiguous call takes its result straight from the header pass's
    one exchange; a partner on the general body (a non-contiguous input) sends the same
    messages, so both get the same bits, and a mismatch between the two paths raises on both.
    A repeated ``out`` that became read-only or changed shape is still refused."""
    x = (np.arange(7, dtype=np.float32) + RANK) / 3
    arg = np.repeat(x, 2)[::2] if RANK == P - 1 else x
    for op in ("sum", "avg", "min", "prod"):
        got = rr.allreduce(arg, op)
        assert all(np.array_equal(got, g) for g in comm.allgather(got))
        ref = {"sum": np.sum, "avg": np.mean, "min": np.min, "prod": np.prod}[op](
            [(np.arange(7) + r) / 3 for r in range(P)], axis=0)
        assert np.allclose(got, ref, rtol=1e-5)
    if P > 1:
        wide = np.repeat(x.astype(np.float64), 2)[::2] if RANK == P - 1 else x
        with pytest.raises(rr.MismatchError, match="dtype"):
            rr.allreduce(wide)
    out = np.empty(7, np.float32)
    for _ in range(2):
        assert rr.allreduce(x, out=out) is out
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        rr.allreduce(x, out=out)
    out.flags.writeable = True
    out.shape = (7, 1)
    with pytest.raises(ValueError, match="shape"):
        rr.allreduce(x, out=out)
    assert np.array_equal(rr.allreduce(np.ones(3, np.int32)), np.full(3, P))
