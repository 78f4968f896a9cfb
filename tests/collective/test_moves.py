"""rr.broadcast, rr.allgather, rr.reduce_scatter and rr.barrier against numpy in float64 and
against native MPI, at any rank count, with odd lengths and small segments; bad input and
mismatches raise on every rank and leave the library usable."""
import numpy as np
import pytest
from mpi4py import MPI

import ringreduce as rr

P = MPI.COMM_WORLD.Get_size()
RANK = MPI.COMM_WORLD.Get_rank()
LENGTHS = sorted({0, 1, 2, max(P - 1, 1), 7, 13, 97})
DTYPES = [np.int8, np.uint16, np.int64, np.float16, np.float32, np.float64, np.complex64]


def data(dtype, shape, rank, seed=0):
    rng = np.random.default_rng([seed, rank, int(np.prod(shape))])
    return rng.integers(-9, 9, shape).astype(dtype) if np.dtype(dtype).kind != "u" else \
        rng.integers(0, 9, shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_broadcast_every_root(dtype, comm):
    for n in LENGTHS:
        for root in range(P):
            x = data(dtype, (n, 2), RANK)
            keep = x.copy()
            got = rr.broadcast(x, root, segment_bytes=3 * np.dtype(dtype).itemsize)
            np.testing.assert_array_equal(got, data(dtype, (n, 2), root))
            np.testing.assert_array_equal(x, keep, err_msg="input was modified")
            native = x.copy()
            comm.Bcast(native, root=root)
            np.testing.assert_array_equal(got, native)


def test_broadcast_in_place_out_and_non_contiguous(comm):
    base = data(np.float64, (6, 8), RANK)
    x = base[:, ::2]                   # non-contiguous, in place
    assert rr.broadcast(x, P - 1, out=x) is x
    np.testing.assert_array_equal(x, data(np.float64, (6, 8), P - 1)[:, ::2])
    np.testing.assert_array_equal(base[:, 1::2], data(np.float64, (6, 8), RANK)[:, 1::2])
    out = np.full((6, 4), -1.0)
    assert rr.broadcast(data(np.float64, (6, 4), RANK), 0, out=out) is out
    np.testing.assert_array_equal(out, data(np.float64, (6, 4), 0))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_allgather_matches_native(dtype, comm):
    for n in LENGTHS:
        x = data(dtype, (n, 3), RANK)
        got = rr.allgather(x, segment_bytes=2 * np.dtype(dtype).itemsize)
        native = np.empty((P * n, 3), dtype)
        comm.Allgather(x, native)
        assert got.shape == (P * n, 3) and got.dtype == dtype
        np.testing.assert_array_equal(got, native)


def test_allgather_scalar_and_out(comm):
    np.testing.assert_array_equal(rr.allgather(np.float32(RANK)), np.arange(P, dtype=np.float32))
    out = np.zeros((2 * P, 2), np.int32)
    assert rr.allgather(np.full((2, 2), RANK, np.int32), out=out) is out
    np.testing.assert_array_equal(out[:, 0], np.repeat(np.arange(P), 2))


OPS = {"sum": np.sum, "prod": np.prod, "min": np.min, "max": np.max, "avg": np.mean}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_reduce_scatter_against_float64(op, dtype, comm):
    if op == "avg" and np.dtype(dtype).kind == "i":
        pytest.skip("avg of an integer dtype is a TypeError (tested below)")
    for n in LENGTHS:
        xs = [data(dtype, (n * P, 2), r) for r in range(P)]
        got = rr.reduce_scatter(xs[RANK], op, segment_bytes=3 * np.dtype(dtype).itemsize)
        full = OPS[op](np.stack([x.astype(np.float64) for x in xs]), axis=0)
        assert got.shape == (n, 2) and got.dtype == dtype
        np.testing.assert_allclose(got, full[RANK * n:(RANK + 1) * n].astype(dtype), rtol=1e-6)


def test_reduce_scatter_out_and_native(comm):
    x = data(np.float64, (4 * P,), RANK)
    out = np.empty(4)
    assert rr.reduce_scatter(x, out=out) is out
    native = np.empty(4)
    comm.Reduce_scatter_block(x, native, op=MPI.SUM)
    np.testing.assert_allclose(out, native, rtol=1e-12)


def raises_everywhere(call, kind, *needles):
    with pytest.raises(kind) as info:
        call()
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    np.testing.assert_array_equal(rr.allreduce(np.ones(3)), np.full(3, P))  # still usable


def test_bad_input_on_one_rank_raises_everywhere(comm):
    last = RANK == P - 1
    raises_everywhere(lambda: rr.broadcast(np.zeros(3), root=P if last else 0), ValueError,
                      "root must be a rank in [0, ")
    raises_everywhere(lambda: rr.reduce_scatter(np.zeros(P + 1 if last else P) if P > 1
                                                else np.zeros(())), ValueError, "divisible by the")
    raises_everywhere(lambda: rr.reduce_scatter(np.zeros(P, np.int32), "avg"), TypeError, "avg")
    raises_everywhere(lambda: rr.allgather(np.zeros(2), out=np.zeros(3)), ValueError,
                      "out must have shape")
    raises_everywhere(lambda: rr.reduce_scatter(np.zeros(P), "band"), ValueError,
                      "unknown op 'band'")


@pytest.mark.skipif(P == 1, reason="needs two ranks to differ")
def test_mismatches_raise_everywhere(comm):
    raises_everywhere(lambda: rr.broadcast(np.zeros(3 + (RANK == 1))), rr.MismatchError,
                      "Mismatched broadcast")
    raises_everywhere(lambda: rr.broadcast(np.zeros(3), root=RANK % 2), rr.MismatchError,
                      "root")
    raises_everywhere(lambda: rr.allgather(np.zeros(2, np.float32 if RANK else np.float64)),
                      rr.MismatchError, "dtype")
    raises_everywhere(lambda: rr.barrier() if RANK == 0 else rr.allreduce(np.zeros(3)),
                      rr.MismatchError, "Mismatched collectives", "barrier", "allreduce")
    raises_everywhere(lambda: rr.reduce_scatter(np.zeros(P), "max" if RANK else "min"),
                      rr.MismatchError, "op")


def test_barrier_waits_for_every_rank(comm):
    # Rank 0 enters late; nobody may leave before it has entered.
    import time
    if RANK == 0:
        time.sleep(0.2)
    entered = time.monotonic() if RANK == 0 else 0.0
    rr.barrier()
    left = time.monotonic()
    entered = comm.bcast(entered, root=0)
    assert left >= entered  # one machine, one monotonic clock
