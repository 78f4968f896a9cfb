"""algorithm="direct": the single-copy allreduce through cross-memory attach.

Runs at any rank count. Each slice is reduced by its owner as a left fold over the ranks'
inputs in rank order, so the result must equal, bit for bit, that fold computed here from all
inputs with the library's own kernel, on every rank: a rank that read a peer's segment before
the peer entered the call, or wrote a result over an input another rank had still to read,
would change the bits. Where the kernel refuses the copies, the call is the ring's: the
results must then still be right, and every rank must agree on which it was.
"""
import importlib

import numpy as np
import pytest
from mpi4py import MPI

import ringreduce as rr
from ringreduce.memory.host import HOST
from ringreduce.memory.spans import Spans
from ringreduce.transport.comm import get_comm
from test_shm import fold  # the left fold in rank order, with the library's kernel

direct_mod = importlib.import_module("ringreduce.algorithms.direct")

P = MPI.COMM_WORLD.Get_size()
RANK = MPI.COMM_WORLD.Get_rank()
LENGTHS = sorted({0, 1, max(P - 1, 1), 7, 97, 1009})


def wild(seed, n, dtype):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 6, n)).astype(dtype)


def test_every_rank_agrees_whether_it_runs(comm):
    ok = direct_mod.available(get_comm(comm))
    assert comm.allgather(ok) == [ok] * P
    if P > 1:
        assert ok == direct_mod.state(get_comm(comm)).peers.ok


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype,op", [("float32", "sum"), ("float64", "avg"),
                                      ("float32", "max"), ("int64", "prod"),
                                      ("complex128", "sum")])
@pytest.mark.parametrize("n", LENGTHS)
def test_the_bits_of_a_rank_order_fold(comm, n, dtype, op, inplace):
    dtype = np.dtype(dtype)
    if dtype.kind == "i":
        xs = [(np.arange(n) % 3 + 1 + r % 2).astype(dtype) for r in range(P)]
    elif dtype.kind == "c":
        xs = [wild(r, n, np.float64) + 1j * wild(r + 50, n, np.float64) for r in range(P)]
    else:
        xs = [wild(r, n, dtype) for r in range(P)]
    want = fold(xs, op)
    x = xs[RANK].copy()
    for seg in (24, 1 << 20):  # many segments per slice, and one
        x[...] = xs[RANK]
        got = rr.allreduce(x, op, algorithm="direct", segment_bytes=seg,
                           out=x if inplace else None)
        np.testing.assert_array_equal(got, want)
        if not inplace:
            np.testing.assert_array_equal(x, xs[RANK])


@pytest.mark.parametrize("inplace", [False, True])
def test_spans_of_several_arrays(comm, inplace):
    """Spans, as grouped_allreduce hands them over: segments end where arrays meet, and
    every piece gets the fold's bits."""
    sizes = [5, 1, 33, 2, 64]
    xs = [[wild(100 * r + i, k, np.float32) for i, k in enumerate(sizes)] for r in range(P)]
    want = [fold([xs[r][i] for r in range(P)], "sum") for i in range(len(sizes))]
    mine = [a.copy() for a in xs[RANK]]
    outs = mine if inplace else [np.empty_like(a) for a in mine]
    src = Spans(mine)
    dst = src if inplace else Spans(outs)
    c = get_comm(comm)
    reduce, _ = HOST.kernels("sum", np.dtype(np.float32))
    direct_mod.direct(c, src, dst, reduce, 16)
    for o, w in zip(outs, want):
        np.testing.assert_array_equal(o, w)


def test_a_failed_copy_raises_on_every_rank(comm, monkeypatch):
    """One rank's cross-memory copy fails: every rank raises (none returns a result with that
    rank's slice missing), and the next call works."""
    c = get_comm(comm)
    if not direct_mod.available(c):
        pytest.skip("cross-memory copies are refused here: direct runs as the ring")
    peers = direct_mod.state(c).peers
    if RANK == 0:
        def broken(j, local, address):
            raise OSError(14, "Bad address (injected)")
        monkeypatch.setattr(peers, "read", broken)
    with pytest.raises(OSError, match="injected" if RANK == 0 else "another rank"):
        rr.allreduce(np.ones(100, np.float32), algorithm="direct")
    monkeypatch.undo()
    np.testing.assert_array_equal(rr.allreduce(np.ones(100, np.float32), algorithm="direct"),
                                  np.full(100, P, np.float32))


def test_refused_copies_run_the_ring(comm, monkeypatch):
    """Where the kernel refuses (Peers.ok false on every rank) the call is the ring's."""
    c = get_comm(comm.Dup())  # a communicator of its own: its state is patched
    st = direct_mod.state(c)
    monkeypatch.setattr(st, "ok", False)
    x = wild(RANK, 101, np.float64)
    got = rr.allreduce(x, algorithm="direct", comm=c)
    want = rr.allreduce(x, algorithm="ring", comm=c)
    np.testing.assert_array_equal(got, want)
