"""allreduce_async and the background engine on every kind of memory, at any rank count.

How the coordinator decides (readiness, order, mismatches, stalls) is unit-tested with a fake
clock in tests/unit/test_coordinator.py; these tests run it for real across ranks."""
import time

import numpy as np
import pytest
from mpi4py import MPI

import ringreduce as rr
from _memory import put_like

P = MPI.COMM_WORLD.Get_size()
RANK = MPI.COMM_WORLD.Get_rank()
TRI = P * (P + 1) // 2


def test_many_handles_any_submission_and_wait_order(memory):
    names = [f"t{i:02d}" for i in range(30)]
    rng = np.random.default_rng(RANK)
    order = list(rng.permutation(names))          # a different submission order per rank
    dtypes = [np.float32, np.float64, np.int32]
    handles = {}
    for n in order:
        i = int(n[1:])
        x = np.full(1 + 37 * i, RANK + 1, dtypes[i % 3])
        d = memory.put(x)
        handles[n] = (rr.allreduce_async(d, name=n), x, d)
    for n in names[::-1]:
        h, keep, d = handles[n]
        got = h.wait(timeout=60)
        assert h.done() and memory.is_ours(got)
        got = memory.get(got)
        assert got.dtype == keep.dtype and got.shape == keep.shape
        assert np.all(got == TRI), n
        np.testing.assert_array_equal(memory.get(d), keep)


def test_unnamed_in_same_order_and_ops(memory):
    hs = [rr.allreduce_async(memory.put(np.full(5, RANK + 1.0)), op)
          for op in ("sum", "max", "min", "avg")]
    res = [memory.get(h.wait(timeout=60)) for h in hs]
    assert np.all(res[0] == TRI) and np.all(res[1] == P) and np.all(res[2] == 1)
    np.testing.assert_allclose(res[3], TRI / P)


def test_out_and_in_place_and_non_contiguous(memory):
    host_base = np.arange(24, dtype=np.float64).reshape(4, 6) * (RANK + 1)
    base = memory.put(host_base)
    view = base[:, ::2]
    expect = np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2] * TRI
    h1 = rr.allreduce_async(view, name="nc-in", out=view)
    out = memory.put(np.empty((3, 4))).T
    h2 = rr.allreduce_async(memory.put(np.arange(12.0).reshape(4, 3) * (RANK + 1)),
                            name="nc-out", out=out)
    contiguous = memory.put(np.arange(7.0) * (RANK + 1))
    h3 = rr.allreduce_async(contiguous, name="in", out=contiguous)
    assert h1.wait(timeout=60) is view and h2.wait(timeout=60) is out
    assert h3.wait(timeout=60) is contiguous
    after = memory.get(base)
    np.testing.assert_array_equal(after[:, ::2], expect)
    np.testing.assert_array_equal(memory.get(out), np.arange(12.0).reshape(4, 3) * TRI)
    np.testing.assert_array_equal(after[:, 1::2], host_base[:, 1::2])
    np.testing.assert_array_equal(memory.get(contiguous), np.arange(7.0) * TRI)


def test_bitwise_identical_and_matches_sync(memory):
    rng = np.random.default_rng(100 + RANK)
    xs = [rng.standard_normal(n).astype(np.float32) for n in (10, 1000, 10000)]
    hs = [rr.allreduce_async(memory.put(x), name=f"b{i}") for i, x in enumerate(xs)]
    got = [memory.get(h.wait(timeout=60)) for h in hs]
    everyone = MPI.COMM_WORLD.allgather(b"".join(g.tobytes() for g in got))
    assert all(e == everyone[0] for e in everyone)
    for g, x in zip(got, xs):
        np.testing.assert_allclose(g, rr.allreduce(x), rtol=1e-5, atol=1e-5)


def test_overlaps_caller_work():
    """done() turns true while the caller keeps computing, without waiting."""
    h = rr.allreduce_async(np.ones(1 << 16), name="bg")
    deadline = time.monotonic() + 60
    while not h.done() and time.monotonic() < deadline:
        np.dot(np.ones((50, 50)), np.ones((50, 50)))
    assert h.done()
    assert np.all(h.wait() == P)


def test_local_errors_raise_at_submit(memory):
    x = memory.put(np.ones(2))
    with pytest.raises(ValueError, match="expected one of sum, avg"):
        rr.allreduce_async(x, "mean")
    with pytest.raises(TypeError, match="avg"):
        rr.allreduce_async(memory.put(np.ones(2, np.int64)), "avg")
    for bad in (0, -4, 2.5):
        with pytest.raises(ValueError, match=rf"segment_bytes must be an int >= 1, got {bad}"):
            rr.allreduce_async(x, segment_bytes=bad)
    h = rr.allreduce_async(x, name="dup")
    with pytest.raises(ValueError, match="already in flight"):
        rr.allreduce_async(memory.put(np.ones(2)), name="dup")
    assert np.all(memory.get(h.wait(timeout=60)) == P)


@pytest.mark.mpi(min_size=2)
def test_mismatched_shapes_error_on_every_rank(memory):
    n = 5 if RANK == 0 else 6
    h = rr.allreduce_async(memory.put(np.ones(n)), name="mm")
    ok = rr.allreduce_async(memory.put(np.ones(3)), name="fine")
    with pytest.raises(rr.MismatchError) as info:
        h.wait(timeout=60)
    msg = str(info.value)
    assert "Mismatched allreduce counts" in msg and "'mm'" in msg and "(5,)" in msg and "(6,)" in msg
    assert np.all(memory.get(ok.wait(timeout=60)) == P)
    h = rr.allreduce_async(memory.put(np.ones(2, np.float32 if RANK else np.float64)), name="dt")
    with pytest.raises(rr.MismatchError, match="dtype"):
        h.wait(timeout=60)


@pytest.mark.mpi(min_size=2)
def test_different_segment_sizes_error_on_every_rank(memory):
    # The segment size shapes the messages: ranks that differ must all get an error.
    h = rr.allreduce_async(memory.put(np.ones(300)), name="seg",
                           segment_bytes=64 if RANK == 0 else 128)
    with pytest.raises(rr.MismatchError, match="Mismatched allreduce segment_bytes") as info:
        h.wait(timeout=60)
    assert "'seg'" in str(info.value)
    after = rr.allreduce_async(memory.put(np.ones(3)), name="after").wait(timeout=60)
    assert np.all(memory.get(after) == P)


@pytest.mark.mpi(min_size=2)
def test_device_on_one_rank_host_on_another_errors_on_every_rank(device):
    # The memory is part of a tensor's metadata: ranks that differ get the mismatch, named.
    x = np.ones(4)
    h = rr.allreduce_async(device.put(x) if RANK == 0 else x, name="where")
    with pytest.raises(rr.MismatchError, match="memory") as info:
        h.wait(timeout=60)
    assert "'where'" in str(info.value)


def test_device_and_host_tensors_in_one_cycle(device):
    """Named device tensors in a different order on every rank, each beside a host tensor
    submitted in the same cycle: fused and reduced apart, by memory."""
    names = [f"g{i:02d}" for i in range(8)]
    order = list(np.random.default_rng(RANK).permutation(names))
    handles = {}
    for name in order:
        i = int(name[1:])
        x = np.full(1 + 13 * i, RANK + 1, (np.float64, np.float32, np.int64)[i % 3])
        d = device.put(x)
        out = d if i % 4 == 1 else None
        handles[name] = (rr.allreduce_async(d, name=name, out=out,
                                            segment_bytes=8 * x.itemsize), out, True)
        handles["host." + name] = (rr.allreduce_async(x.copy(), name="host." + name), None,
                                   False)
    strided = put_like(device, np.arange(12.0).reshape(4, 3) * (RANK + 1))
    h_strided = rr.allreduce_async(strided, "max", name="strided", out=strided)
    for name in sorted(handles, reverse=True):
        h, out, on_device = handles[name]
        got = h.wait(timeout=120)
        assert device.is_ours(got) == on_device, name
        assert out is None or got is out
        assert np.all((device.get(got) if on_device else got) == TRI), name
    assert h_strided.wait(timeout=120) is strided
    np.testing.assert_array_equal(device.get(strided), np.arange(12.0).reshape(4, 3) * P)
