"""algorithm="hierarchical" on pretend nodes: every layout at every rank count.

Runs at any rank count (plain ``pytest`` is 1 rank; ``mpiexec -n N python -m pytest`` is N).
The nodes of one machine are one node, so each layout is made on a fresh library communicator
whose levels are pre-seeded before its first call: ``local_size`` k (``RINGREDUCE_LOCAL_SIZE``'s
split: nodes of k consecutive ranks, the last one smaller when k does not divide p), or a node
communicator of any shape (round-robin placement, nodes of different sizes). The environment
variable itself is exercised by real jobs in tests/jobs/test_hierarchical_jobs.py.
"""
import importlib

import numpy as np
import pytest
from mpi4py import MPI

import ringreduce as rr
# _allreduce first: it imports the algorithms package, which cannot be imported on its own.
from ringreduce.core.choose import choose_algorithm
from ringreduce.core.tables import DTYPES
from ringreduce.transport.comm import Comm, PoliteComm

hmod = importlib.import_module("ringreduce.algorithms.hierarchical")
topo = importlib.import_module("ringreduce.transport.topology")

P = MPI.COMM_WORLD.Get_size()
RANK = MPI.COMM_WORLD.Get_rank()

# name -> (local_size or None, node colour of a rank or None)
LAYOUTS = {
    "real": (0, None),                     # what MPI reports: one node on this machine
    "k1": (1, None),                       # every rank its own node: leaders only
    "k2": (2, None),                       # pairs; at odd p the last node has one rank
    "k3": (3, None),                       # triples; at 4 and 5 ranks the nodes differ
    "round-robin": (None, lambda r: r % 2),            # nodes {0, 2, ..}, {1, 3, ..}
    "uneven": (None, lambda r: 0 if r in (0, P - 1) else 1 + r % 2),  # {0, p-1}, rest split
}


def expected_nodes(layout):
    """Node sizes in leader order (a leader is its node's lowest rank). Collective for
    "real", which asks MPI (one node on one machine, whatever the hosts of a real run)."""
    k, colour = LAYOUTS[layout]
    if k == 0:
        node = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED, key=RANK)
        lowest = node.allreduce(RANK, op=MPI.MIN)
        sizes = dict(MPI.COMM_WORLD.allgather((lowest, node.Get_size())))
        node.Free()
        return [sizes[lo] for lo in sorted(sizes)]
    if colour is None:
        colour = lambda r: r // k  # noqa: E731
    nodes = {}
    for r in range(P):
        nodes.setdefault(colour(r), []).append(r)
    return [len(m) for m in sorted(nodes.values())]


# One library communicator per layout (and class), made on first use by every rank in the same
# test, and kept: every test of this module runs on every rank in the same order.
_COMMS = {}


def comm_for(layout, cls=Comm):
    key = (layout, cls)
    c = _COMMS.get(key)
    if c is None:
        c = cls(MPI.COMM_WORLD)
        k, colour = LAYOUTS[layout]
        if colour is None:
            topo.levels(c, local_size=k)
        else:
            topo.levels(c, node=c.mpi.Split(colour(c.rank), c.rank))
        _COMMS[key] = c
    return c


@pytest.fixture(params=list(LAYOUTS))
def hcomm(request):
    return comm_for(request.param), request.param


def allgather_bytes(comm, a):
    everyone = comm.allgather(a.tobytes())
    return all(b == everyone[0] for b in everyone)


def test_layout(hcomm, comm):
    c, layout = hcomm
    st = topo.levels(c)
    assert list(st.node_sizes) == expected_nodes(layout)
    # The leader is node rank 0 and the lowest world rank of its node.
    assert st.node.mpi.allreduce(RANK, op=MPI.MIN) == st.node.mpi.bcast(RANK, root=0)
    assert (st.leaders is not None) == (st.node.rank == 0)
    if st.leaders is not None:
        assert st.leaders.size == len(st.node_sizes)
    assert st.node.size == st.node.mpi.Get_size()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_native_and_float64_and_is_bitwise_identical(hcomm, dtype, comm):
    """Random floats of many magnitudes: within rounding of the float64 sum and of native
    MPI_Allreduce, bit for bit the same on every rank. The sizes take the leader step through
    doubling, rhd and the ring (see test_leader_step_runs_the_chosen_algorithm)."""
    c, _ = hcomm
    rng = np.random.default_rng([RANK, 29])
    for n in [1, P + 1, 1009, 40000, 100_003]:
        x = (rng.standard_normal(n) * 10 ** rng.uniform(-3, 3, n)).astype(dtype)
        native = np.empty_like(x)
        comm.Allreduce(x, native, op=MPI.SUM)
        seg = 4096 if n < 50_000 else 1 << 20  # many segments, without crawling at 100k
        got = rr.allreduce(x, algorithm="hierarchical", comm=c, segment_bytes=seg)
        everyone = [np.asarray(a, np.float64) for a in comm.allgather(x)]
        exact = np.sum(everyone, axis=0)
        scale = np.sum(np.abs(everyone), axis=0)
        tol = 1e-5 if dtype == "float32" else 1e-12
        assert np.all(np.abs(got - exact) <= tol * scale + 1e-30), f"n={n}"
        assert np.all(np.abs(got - native) <= 2 * tol * scale + 1e-30), f"n={n}"
        assert allgather_bytes(comm, got), f"ranks disagree bitwise at n={n}"


def ops_for(dtype):
    ops = ["sum", "min", "max", "prod"]
    if dtype.kind in "fc":
        ops.append("avg")
    if dtype.kind == "c":
        ops = ["sum", "prod", "avg"]
    return ops


def int_valued(dtype, n, rank, op):
    """Small integer values: every op is exact in every dtype at <= 8 ranks, in any order."""
    rng = np.random.default_rng([rank, n, 3])
    if op == "prod":
        vals = rng.choice([-1, 1, 2] if dtype.kind != "u" else [1, 2], n)
    else:
        vals = rng.integers(0 if dtype.kind == "u" else -12, 12, n)
    x = vals.astype(dtype)
    if dtype.kind == "c":
        x = x + 1j * rng.integers(-3, 3, n).astype(dtype)
    return x


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_and_op_exact(hcomm, dtype, comm):
    c, _ = hcomm
    for op in ops_for(dtype):
        for n in (1, 2, 7, 97):
            x = int_valued(dtype, n, RANK, op)
            keep = x.copy()
            got = rr.allreduce(x, op, algorithm="hierarchical", comm=c,
                               segment_bytes=3 * dtype.itemsize)
            np.testing.assert_array_equal(x, keep, err_msg="input was modified")
            xs = np.stack([int_valued(dtype, n, r, op) for r in range(P)]).astype(
                np.complex128 if dtype.kind == "c" else np.float64)
            ref = {"sum": np.sum, "prod": np.prod, "min": np.min, "max": np.max,
                   "avg": np.mean}[op](xs, axis=0)
            if op == "avg":
                np.testing.assert_allclose(got, ref.astype(dtype),
                                           rtol=2e-3 if dtype == np.float16 else 1e-6)
            else:
                np.testing.assert_array_equal(got, ref.astype(dtype), err_msg=f"{op} n={n}")
            assert allgather_bytes(comm, got)


def test_in_place_and_out(hcomm, comm):
    c, _ = hcomm
    x = int_valued(np.dtype(np.float64), 101, RANK, "sum")
    ref = np.sum([int_valued(np.dtype(np.float64), 101, r, "sum") for r in range(P)], axis=0)
    y = x.copy()
    assert rr.allreduce(y, algorithm="hierarchical", comm=c, out=y, segment_bytes=40) is y
    np.testing.assert_array_equal(y, ref)
    out = np.full_like(x, np.nan)
    assert rr.allreduce(x, algorithm="hierarchical", comm=c, out=out, segment_bytes=40) is out
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(x, int_valued(np.dtype(np.float64), 101, RANK, "sum"))


def test_big_tiny_values_agree_bitwise(hcomm, comm):
    """MPICH's allred_float idea: BIG, -BIG and TINY make the summation order visible."""
    c, _ = hcomm
    big, tiny = np.float32(1e30), np.float32(1e-30)
    x = np.array([[big, -big, tiny][(RANK + i) % 3] for i in range(257)], np.float32)
    got = rr.allreduce(x, algorithm="hierarchical", comm=c, segment_bytes=64)
    assert allgather_bytes(comm, got)


def test_back_to_back_random_sizes(hcomm, comm):
    """Many calls of random length, segment size, op and placement, each checked: a message
    of one call must never be taken for one of the next."""
    c, _ = hcomm
    shared = np.random.default_rng(20240611)   # the same draws on every rank
    for it in range(40):
        n = int(shared.integers(1, 1 << int(shared.integers(1, 13))))
        seg = int(shared.integers(1, 64)) * 8
        op = ["sum", "max", "min", "prod"][int(shared.integers(4))]
        in_place = bool(shared.integers(2))
        x = int_valued(np.dtype(np.float64), n, RANK + 100 * it, op)
        xs = comm.allgather(x)
        ref = {"sum": np.sum, "prod": np.prod, "min": np.min, "max": np.max}[op](xs, axis=0)
        if in_place:
            got = rr.allreduce(x, op, algorithm="hierarchical", comm=c, out=x, segment_bytes=seg)
        else:
            got = rr.allreduce(x, op, algorithm="hierarchical", comm=c, segment_bytes=seg)
        np.testing.assert_array_equal(got, ref, err_msg=f"call {it}: n={n} seg={seg} {op}")


def test_leader_step_runs_the_chosen_algorithm(hcomm, comm, monkeypatch):
    """The leaders run what choose_algorithm names for the full size on the leader count;
    the sizes are picked so doubling, rhd and the ring each run (with more than one node)."""
    c, _ = hcomm
    st = topo.levels(c)
    ran = []
    for name, fn in list(hmod._LEADER_ALGORITHMS.items()):
        def record(lead, *args, _name=name, _fn=fn):
            ran.append(_name)
            return _fn(lead, *args)
        monkeypatch.setitem(hmod._LEADER_ALGORITHMS, name, record)
    sizes = [1 << 10, 1 << 15, 1 << 17]  # float64 elements: 8 KiB, 256 KiB, 1 MiB
    for n in sizes:
        x = np.full(n, RANK + 1.0)
        got = rr.allreduce(x, algorithm="hierarchical", comm=c)
        assert np.all(got == P * (P + 1) / 2)
    nodes = len(st.node_sizes)
    if st.leaders is None or nodes == 1:
        assert ran == []
    else:
        assert ran == [choose_algorithm(8 * n, nodes) for n in sizes]
        assert set(ran) == {"doubling", "rhd", "ring"}


def test_grouped_allreduce(hcomm, comm):
    c, _ = hcomm
    arrays = [np.full(3, RANK + 1.0), np.arange(10, dtype=np.int32) * (RANK + 1),
              np.full((4, 5), RANK + 1.0, np.float32)]
    got = rr.grouped_allreduce(arrays, algorithm="hierarchical", comm=c, fusion_threshold=64)
    tri = P * (P + 1) // 2
    np.testing.assert_array_equal(got[0], np.full(3, float(tri)))
    np.testing.assert_array_equal(got[1], np.arange(10, dtype=np.int32) * tri)
    np.testing.assert_array_equal(got[2], np.full((4, 5), tri, np.float32))


def test_polite_comm_levels_are_polite(comm):
    """The background engine talks through a PoliteComm; both levels must poll politely too."""
    c = comm_for("k2", PoliteComm)
    st = topo.levels(c)
    assert type(st.node) is PoliteComm
    assert st.leaders is None or type(st.leaders) is PoliteComm
    x = np.arange(5000, dtype=np.float64) * (RANK + 1)
    got = rr.allreduce(x, algorithm="hierarchical", comm=c, segment_bytes=1024)
    np.testing.assert_array_equal(got, np.arange(5000) * (P * (P + 1) // 2))


def test_engine_runs_hierarchical(comm):
    h = rr.allreduce_async(np.full(100, RANK + 1.0), algorithm="hierarchical")
    assert np.all(h.wait(timeout=60) == P * (P + 1) / 2)


def test_resplit_is_refused_and_bad_local_size(comm):
    c = comm_for("k2")
    with pytest.raises(ValueError, match="already exist.*local_size=2.*local_size=3"):
        topo.levels(c, local_size=3)
    assert topo.levels(c, local_size=2) is topo.levels(c)
    with pytest.raises(ValueError, match="local_size must be a whole number >= 0, got -1"):
        topo.split_nodes(c, -1)


def test_default_split_follows_the_configuration(comm):
    """Without a pre-seeded split, the levels come from RINGREDUCE_LOCAL_SIZE (0 here unless
    the run sets it): the library's own communicator for COMM_WORLD."""
    from ringreduce.transport.comm import get_comm
    c = get_comm(comm)
    rr.allreduce(np.ones(3), algorithm="hierarchical")
    st = topo.levels(c)
    k = rr.get_config().local_size
    assert st.local_size == k
    if k == 0:
        node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=RANK)
        assert st.node.size == node.Get_size()
        node.Free()
    else:
        assert st.node.size == min(k, P - RANK // k * k)

