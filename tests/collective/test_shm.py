"""algorithm="shm": races, in place, dtypes and ops, window growth, several "nodes".

Runs at any rank count (plain ``pytest`` is 1 rank; ``mpiexec -n N python -m pytest`` is N).
The shared-memory algorithm reduces every slice as a left fold over the ranks' inputs in rank
order, so its result must equal, bit for bit, the same fold computed here on every rank from
all inputs with the same kernel. Random floats of wildly different magnitudes make every
rounding visible: a rank that read a slot before its owner wrote it, or after its owner moved
on to the next block, would see other data and change the bits.
"""
import importlib

import numpy as np
import pytest
from mpi4py import MPI

import ringreduce as rr
from _comms import fresh_comm
from ringreduce.core.tables import DTYPES
from ringreduce.memory.host import HOST
from ringreduce.transport.comm import get_comm

# The module, not the function of the same name that ringreduce.algorithms re-exports.
shm_mod = importlib.import_module("ringreduce.algorithms.shm")

P = MPI.COMM_WORLD.Get_size()
RANK = MPI.COMM_WORLD.Get_rank()


@pytest.fixture
def one_node(comm):
    """The rank-order fold is what shm computes on one node; across (stand-in) nodes, as
    under RINGREDUCE_LOCAL_SIZE, the nodes' sums meet in a ring (test_several_nodes)."""
    if not shm_mod.on_one_node(get_comm(comm)):
        pytest.skip("the ranks span several nodes (RINGREDUCE_LOCAL_SIZE?)")


def fold(xs, op):
    """Left fold in rank order with the library's own kernel: the bits shm must produce."""
    reduce, scale = HOST.kernels(op, xs[0].dtype)
    acc = xs[0].copy()
    for x in xs[1:]:
        reduce(acc, x)
    if scale is not None:
        scale(acc, len(xs))
    return acc


def wild(rng, n, dtype):
    """Random values over many orders of magnitude, signs mixed: sums depend on order."""
    e = min(6.0, np.log10(np.finfo(dtype).max) / 4)  # float16 tops out at 65504
    x = rng.standard_normal(n) * 10.0 ** rng.uniform(-e, e, n)
    return x.astype(dtype)


def test_races_random_sizes_bitwise(comm, one_node):
    """Many calls of random length, segment size and placement, back to back, each compared
    bit for bit. Back-to-back calls matter: a fast rank starts the next call's copy-in while
    a slow one still copies out the last, which the double buffering must keep apart."""
    shared = np.random.default_rng(20240611)        # the same draws on every rank
    mine = np.random.default_rng([RANK, 7])          # this rank's data
    for it in range(300):
        n = int(shared.integers(1, 1 << int(shared.integers(1, 16))))
        blocks = int(shared.integers(1, 40))
        seg_elems = max(1, -(-n // blocks))
        dtype = np.dtype(["float32", "float64"][int(shared.integers(2))])
        op = ["sum", "sum", "sum", "prod", "min", "max", "avg"][int(shared.integers(7))]
        in_place = bool(shared.integers(2))
        x = wild(mine, n, dtype)
        if op == "prod":
            x = (1 + mine.uniform(-0.01, 0.01, n)).astype(dtype)
        xs = comm.allgather(x)
        want = fold(xs, op)
        keep = x.copy()
        if in_place:
            got = rr.allreduce(x, op, algorithm="shm", out=x, segment_bytes=seg_elems * dtype.itemsize)
            assert got is x
        else:
            got = rr.allreduce(x, op, algorithm="shm", segment_bytes=seg_elems * dtype.itemsize)
            assert got.tobytes() and x.tobytes() == keep.tobytes(), "input was modified"
        assert got.tobytes() == want.tobytes(), (
            f"call {it}: n={n} segment={seg_elems} {dtype} {op} in_place={in_place}: "
            f"{np.count_nonzero(got != want)} elements differ from the rank-order fold")


def test_every_dtype_and_op_bitwise(comm, one_node):
    rng = np.random.default_rng([RANK, 11])
    for dtype in DTYPES:
        ops = ["sum", "prod"] + (["min", "max"] if dtype.kind != "c" else [])
        ops += ["avg"] if dtype.kind in "fc" else []
        for op in ops:
            for n in (1, P + 1, 1001):
                if dtype.kind in "iu":
                    x = rng.integers(0 if dtype.kind == "u" else -50, 50, n).astype(dtype)
                else:
                    x = wild(rng, n, dtype)
                    if dtype.kind == "c":
                        x = x + 1j * wild(rng, n, dtype)
                xs = comm.allgather(x)
                got = rr.allreduce(x, op, algorithm="shm", segment_bytes=40 * dtype.itemsize)
                want = fold(xs, op)
                assert got.tobytes() == want.tobytes(), f"{dtype} {op} n={n}"


def test_window_is_reused_and_grows(comm):
    c = fresh_comm(comm)  # a communicator of its own: a fresh window, sized from scratch
    st_comm = get_comm(c)
    x = np.full(1000, RANK + 1.0)
    rr.allreduce(x, algorithm="shm", comm=c)
    if P == 1:
        assert st_comm.state.shm is None  # one rank: nothing to share
        return
    st = shm_mod.state(st_comm)
    first = st.window
    assert first.block_bytes >= 8000
    rr.allreduce(np.ones(100, np.float32), algorithm="shm", comm=c)
    assert st.window is first, "a smaller call must reuse the window"
    big = (np.arange(1 << 19, dtype=np.float64) % 97) * (RANK + 1)  # 4 MiB
    got = rr.allreduce(big, algorithm="shm", comm=c, segment_bytes=2 << 20)
    assert st.window is not first and st.window.block_bytes >= 2 << 20
    tri = P * (P + 1) // 2
    np.testing.assert_array_equal(got, (np.arange(1 << 19) % 97) * float(tri))
    grown = st.window
    got = rr.allreduce(x, algorithm="shm", comm=c)
    assert st.window is grown
    np.testing.assert_array_equal(got, np.full(1000, float(tri)))


def test_auto_uses_shm_on_one_node_for_mid_size_messages(comm, one_node):
    from ringreduce.core.choose import (AUTO_SHM_BYTES, AUTO_SHM_MAX_BYTES, PIGGYBACK_CAP,
                                        choose_algorithm)
    for p in (2, 3, 4, 8):
        assert choose_algorithm(AUTO_SHM_BYTES, p, one_node=True) == "shm"
        assert choose_algorithm(AUTO_SHM_MAX_BYTES - 1, p, one_node=True) == "shm"
        assert choose_algorithm(AUTO_SHM_MAX_BYTES - 1, p, one_node=False) != "shm"
        assert choose_algorithm(AUTO_SHM_BYTES - 1, p, one_node=True) == "doubling"
        # From 1 MiB the ring (rhd below its threshold), whose copies do not slow down when
        # the ranks' cores share no cache (docs/benchmarks.md, "Shared-memory allreduce").
        for n in (AUTO_SHM_MAX_BYTES, 64 << 20):
            assert choose_algorithm(n, p, one_node=True) == choose_algorithm(n, p)
    if P == 1:
        return
    c = fresh_comm(comm)
    # Past what rides in the header when every rank shares a host (64 KiB, core/choose.py).
    x = np.full(max(AUTO_SHM_BYTES, 2 * PIGGYBACK_CAP) // 4, RANK + 1, np.float32)
    got = rr.allreduce(x, comm=c)  # "auto"
    np.testing.assert_array_equal(got, np.full_like(x, P * (P + 1) / 2))
    assert shm_mod.state(get_comm(c)).window is not None, "auto did not run shm"


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("per_node", [1, 2])
def test_several_nodes(comm, monkeypatch, per_node):
    """Stand-in nodes of ``per_node`` consecutive ranks on this one machine (the windows still
    live in real shared memory, only the grouping is made up). Equal nodes run two-level
    (the cross-node ring between shm rounds); unequal ones the plain ring. Exact on integer
    data at every rank count, bitwise equal on every rank."""
    monkeypatch.setattr(shm_mod, "_split_node",
                        lambda c: c.mpi.Split(c.rank // per_node, c.rank))
    c = fresh_comm(comm)
    st = shm_mod.state(get_comm(c))
    nodes = -(-P // per_node)
    assert st.nodes == nodes and st.one_node == (nodes == 1)
    assert (st.cross is not None) == (nodes > 1 and P % per_node == 0)
    assert shm_mod.on_one_node(get_comm(c)) == (nodes == 1)
    rng = np.random.default_rng([RANK, 3])
    for n, seg in [(1, 8), (P + 3, 8), (1000, 24), (5000, 1 << 20)]:
        x = rng.integers(-1000, 1000, n).astype(np.float64)
        xs = comm.allgather(x)
        got = rr.allreduce(x, algorithm="shm", comm=c, segment_bytes=seg)
        np.testing.assert_array_equal(got, np.sum(xs, axis=0))
        y = rng.standard_normal(n).astype(np.float32)
        got = rr.allreduce(y, algorithm="shm", comm=c, segment_bytes=seg)
        everyone = comm.allgather(got.tobytes())
        assert all(b == everyone[0] for b in everyone), "ranks disagree bitwise"


def test_polite_comm_naps_while_it_waits(comm):
    """The background engine's PoliteComm must not spin a core in shm's barrier either."""
    from ringreduce.transport.comm import PoliteComm
    if P == 1:
        pytest.skip("one rank never waits")
    pc = PoliteComm(fresh_comm(comm))
    x = np.full(5000, RANK + 1.0)
    got = rr.allreduce(x, algorithm="shm", comm=pc, segment_bytes=8000)
    np.testing.assert_array_equal(got, np.full(5000, P * (P + 1) / 2))
    win = shm_mod.state(pc).window
    assert (win.spins, win.yields, win.nap) == (0, 0, PoliteComm.POLL_SLEEP)
    plain = shm_mod.state(get_comm(comm))
    rr.allreduce(x, algorithm="shm", comm=comm)
    assert plain.window.spins > 0
