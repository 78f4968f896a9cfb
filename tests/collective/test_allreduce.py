"""rr.allreduce against native MPI and a float64 numpy reference.

Runs at any rank count: plain ``pytest`` is 1 rank, ``mpiexec -n N python -m pytest`` is N.
Small segment sizes make even tiny inputs cross many segments.
"""
import array

import numpy as np
import pytest
from mpi4py import MPI

import ringreduce as rr
from ringreduce.core.choose import choose_algorithm
from ringreduce.core.tables import DTYPES

ALGS = ["auto", "ring", "tree", "rhd", "doubling", "shm", "hierarchical"]
P = MPI.COMM_WORLD.Get_size()
RANK = MPI.COMM_WORLD.Get_rank()
LENGTHS = sorted({0, 1, 2, max(P - 1, 1), 7, 13, 97, 1000})


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


@pytest.mark.parametrize("algorithm", ALGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_op_and_length(algorithm, dtype, comm):
    for op in ops_for(dtype):
        for n in LENGTHS:
            x = inputs(dtype, n, RANK, op)
            keep = x.copy()
            got = rr.allreduce(x, op, algorithm=algorithm, segment_bytes=3 * dtype.itemsize)
            assert got.dtype == dtype and got.shape == x.shape
            np.testing.assert_array_equal(x, keep, err_msg="input was modified")
            ref = reference(dtype, n, op, comm)
            if op == "avg":
                np.testing.assert_allclose(got, ref.astype(dtype), rtol=2e-3 if dtype == np.float16 else 1e-6)
            else:
                np.testing.assert_array_equal(got, ref.astype(dtype), err_msg=f"{op} n={n}")


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
        everyone = comm.allgather(got.tobytes())
        assert all(b == everyone[0] for b in everyone), "ranks disagree bitwise"


@pytest.mark.parametrize("algorithm", ALGS)
def test_big_tiny_values_agree_bitwise(algorithm, comm):
    """MPICH's allred_float idea: BIG, -BIG and TINY make the sum order visible."""
    big, tiny = np.float32(1e30), np.float32(1e-30)
    x = np.array([[big, -big, tiny][(RANK + i) % 3] for i in range(257)], np.float32)
    got = rr.allreduce(x, algorithm=algorithm, segment_bytes=64)
    everyone = comm.allgather(got.tobytes())
    assert all(b == everyone[0] for b in everyone)


@pytest.mark.parametrize("algorithm", ALGS)
def test_in_place_and_out(algorithm, comm):
    x = inputs(np.dtype(np.float64), 101, RANK, "sum")
    ref = reference(np.dtype(np.float64), 101, "sum", comm)
    y = x.copy()
    res = rr.allreduce(y, algorithm=algorithm, out=y, segment_bytes=40)
    assert res is y
    np.testing.assert_array_equal(y, ref)
    out = np.full_like(x, np.nan)
    res = rr.allreduce(x, algorithm=algorithm, out=out, segment_bytes=40)
    assert res is out
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(x, inputs(np.dtype(np.float64), 101, RANK, "sum"))


@pytest.mark.parametrize("algorithm", ALGS)
def test_shapes_and_non_contiguous(algorithm, comm):
    base = np.arange(60, dtype=np.float32).reshape(6, 10) * (RANK + 1)
    tri = P * (P + 1) // 2
    for x in (base[:, ::3], base.T, base[::2], np.float32(RANK + 1) * np.ones(()), base[:0]):
        keep = np.array(x, copy=True)
        got = rr.allreduce(x, algorithm=algorithm, segment_bytes=8)
        assert got.shape == x.shape
        np.testing.assert_array_equal(got, keep / (RANK + 1) * tri)
        np.testing.assert_array_equal(x, keep)
    # in place on a non-contiguous view writes through to the parent
    parent = base.copy()
    view = parent[:, 1::2]
    rr.allreduce(view, algorithm=algorithm, out=view, segment_bytes=8)
    np.testing.assert_array_equal(parent[:, 1::2], base[:, 1::2] / (RANK + 1) * tri)
    np.testing.assert_array_equal(parent[:, 0::2], base[:, 0::2])
    # a non-contiguous out
    out = np.zeros((10, 6), np.float32).T
    rr.allreduce(base, algorithm=algorithm, out=out, segment_bytes=8)
    np.testing.assert_array_equal(out, base / (RANK + 1) * tri)


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


def test_errors_on_every_rank_for_bad_input(comm):
    x = np.ones(4)
    with pytest.raises(ValueError, match="expected one of sum, avg, min, max, prod"):
        rr.allreduce(x, "mean")
    with pytest.raises(ValueError, match="expected one of auto, ring, tree, rhd, doubling"):
        rr.allreduce(x, algorithm="butterfly")
    with pytest.raises(TypeError, match="avg.*floating"):
        rr.allreduce(np.ones(3, np.int32), "avg")
    with pytest.raises(TypeError, match="complex"):
        rr.allreduce(np.ones(3, np.complex64), "max")
    with pytest.raises(TypeError, match="unsupported dtype bool"):
        rr.allreduce(np.ones(3, bool))
    with pytest.raises(TypeError, match="numeric array"):
        rr.allreduce([object()])
    with pytest.raises(ValueError, match="out must have x's shape"):
        rr.allreduce(x, out=np.ones(5))
    with pytest.raises(ValueError, match="overlaps"):
        y = np.ones(8)
        rr.allreduce(y[:4], out=y[2:6])
    # still usable
    assert np.all(rr.allreduce(x) == P)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algorithm", ALGS)
def test_mismatched_counts_error_everywhere(algorithm, comm):
    n = 10 if RANK != 1 else 12
    with pytest.raises(rr.MismatchError) as info:
        rr.allreduce(np.ones(n, np.float32), algorithm=algorithm)
    msg = str(info.value)
    assert "Mismatched allreduce count" in msg and "(12,)" in msg and "(10,)" in msg
    assert np.all(rr.allreduce(np.ones(3), algorithm=algorithm) == P)


@pytest.mark.mpi(min_size=2)
def test_mismatched_dtype_op_shape_algorithm(comm):
    last = RANK == P - 1
    cases = [
        (dict(x=np.ones(6, np.float64 if last else np.float32)), "dtype", "float32"),
        (dict(x=np.ones(6), op="max" if last else "sum"), "op", "'max'"),
        (dict(x=np.ones((2, 3) if last else (3, 2))), "tensor shapes", "(2, 3)"),
        (dict(x=np.ones(6), algorithm="ring" if last else "tree"), "algorithm", "'ring'"),
    ]
    for kwargs, what, named in cases:
        x = kwargs.pop("x")
        with pytest.raises(rr.MismatchError, match=f"Mismatched allreduce {what}") as info:
            rr.allreduce(x, **kwargs)
        assert named in str(info.value) and f"rank {P - 1}" in str(info.value) + f"rank {RANK}"
    assert np.all(rr.allreduce(np.ones(2)) == P)


@pytest.mark.mpi(min_size=2)
def test_bad_input_on_one_rank_errors_everywhere(comm):
    op = "bogus" if RANK == 0 else "sum"
    with pytest.raises(ValueError, match="bogus"):
        rr.allreduce(np.ones(3), op)
    assert np.all(rr.allreduce(np.ones(3)) == P)


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


def test_sub_communicator(comm):
    sub = comm.Split(RANK % 2, RANK)
    try:
        got = rr.allreduce(np.full(5, RANK, np.int64), comm=sub, algorithm="ring")
        members = [r for r in range(P) if r % 2 == RANK % 2]
        assert np.all(got == sum(members))
    finally:
        sub.Free()
