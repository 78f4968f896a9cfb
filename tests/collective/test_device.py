"""What only CUDA device arrays do, at any rank count: errors that name device memory, the two
transports (staging through pinned host buffers, and handing device memory to a CUDA-aware
MPI), and the staging pool. Everything the host shares runs over both kinds of memory in
test_allreduce.py, test_grouped.py and test_async.py; the choices the two make alike are in
test_same_choices.py."""
import numpy as np
import pytest
from mpi4py import MPI

import ringreduce as rr
from _memory import Device, put_like
from ringreduce.transport.comm import get_comm
from ringreduce.transport.device import _query_cuda_support, device_comm

P = MPI.COMM_WORLD.Get_size()
RANK = MPI.COMM_WORLD.Get_rank()
ALGS = ("ring", "tree", "rhd", "doubling")


def test_the_device_dtypes_are_the_kernels(device):
    assert set(Device.dtypes) == set(device.ck.DTYPES)


def test_device_results_are_device_arrays_and_host_results_host_arrays(device):
    got = rr.allreduce(device.put(np.arange(3.0)))
    assert device.is_ours(got)
    assert isinstance(rr.allreduce(np.arange(3.0)), np.ndarray)


@pytest.mark.mpi(min_size=2)
def test_device_on_one_rank_host_on_another(device):
    x = np.arange(5.0) + RANK
    arg = device.put(x) if RANK == 0 else x
    with pytest.raises(rr.MismatchError, match="Mismatched allreduce memory") as info:
        rr.allreduce(arg)
    assert "device" in str(info.value) and "host" in str(info.value)
    arg = [device.put(x)] if RANK == 0 else [x]
    with pytest.raises(rr.MismatchError, match="grouped_allreduce.*memory"):
        rr.grouped_allreduce(arg)
    assert np.all(device.get(rr.allreduce(device.put(np.ones(2)))) == P)


def test_complex_device_array_on_one_rank(device):
    # Complex has no CUDA kernel: a TypeError on the rank that passed it, and on the others.
    bad = device.put(np.ones(4, np.complex64) if RANK == P - 1 else np.ones(4, np.float32))
    with pytest.raises(TypeError, match="complex64"):
        rr.allreduce(bad)


def test_host_out_for_a_device_x(device):
    out = np.empty(5) if RANK == 0 else None
    with pytest.raises(TypeError, match="out must be a CUDA device array"):
        rr.allreduce(device.put(np.arange(5.0)), out=out)


@pytest.mark.parametrize("algorithm", ["shm", "hierarchical"])
def test_host_only_algorithms_are_refused(device, algorithm):
    with pytest.raises(ValueError, match=f"algorithm '{algorithm}' works on host memory only"):
        rr.allreduce(device.put(np.ones(3)), algorithm=algorithm)


def test_host_and_device_arrays_in_one_list(device):
    x = np.arange(5.0)
    with pytest.raises(TypeError, match=r"not both.*arrays\[1\]"):
        rr.grouped_allreduce([device.put(x), x])


class RefusingArray:
    """PyTorch raises for the interface of a CUDA tensor that requires grad."""
    @property
    def __cuda_array_interface__(self):
        raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")


def test_an_interface_that_raises_on_one_rank(device, request):
    x = RefusingArray() if RANK == P - 1 else device.put(np.arange(5.0))
    with pytest.raises(RuntimeError if RANK == P - 1 else ValueError, match="requires grad"):
        rr.allreduce(x)


def test_a_bad_cuda_aware_setting_on_one_rank(device, monkeypatch):
    if RANK == 0:
        monkeypatch.setenv("RINGREDUCE_CUDA_AWARE", "maybe")
    with pytest.raises(ValueError, match="RINGREDUCE_CUDA_AWARE"):
        rr.allreduce(device.put(np.arange(5.0)))
    monkeypatch.undo()
    assert np.all(device.get(rr.allreduce(device.put(np.ones(2)))) == P)


def test_staging_buffers_are_reused(device, monkeypatch):
    monkeypatch.setenv("RINGREDUCE_CUDA_AWARE", "0")
    dc = None
    x = device.put(np.arange(1000.0))
    for algorithm in ALGS:
        rr.allreduce(x, algorithm=algorithm, segment_bytes=800)
        dc = device_comm(get_comm())
        before = dc.pinned_bytes
        rr.allreduce(x, algorithm=algorithm, segment_bytes=800)
        assert not dc.aware and dc.pinned_bytes == before, (algorithm, before, dc.pinned_bytes)
        free = sum(b.size for bufs in dc.free.values() for b in bufs)
        assert free == dc.pinned_bytes, f"{algorithm}: {free} of {dc.pinned_bytes} bytes back"


def aware_possible(device):
    """Device memory may be handed to MPI: always under the simulator (it is host memory
    there), on a GPU only with an MPI built with CUDA."""
    if not device.simulator and not _query_cuda_support():
        pytest.skip("this MPI is not CUDA-aware (MPIX_Query_cuda_support); forcing "
                    "RINGREDUCE_CUDA_AWARE=1 would hand it device pointers")


def test_cuda_aware_transport(device, cuda_aware):
    """RINGREDUCE_CUDA_AWARE=1: no staging, the same results, for every algorithm, in place,
    into out=, grouped and async."""
    aware_possible(device)
    tri = P * (P + 1) // 2
    for algorithm in ALGS:
        for n in sorted({0, 1, max(P - 1, 1), 97}):
            x = np.arange(n, dtype=np.float64) * (RANK + 1)
            want = np.arange(n, dtype=np.float64) * tri
            got = rr.allreduce(device.put(x), algorithm=algorithm, segment_bytes=64)
            np.testing.assert_array_equal(device.get(got), want)
            d = device.put(x)
            assert rr.allreduce(d, algorithm=algorithm, out=d, segment_bytes=64) is d
            np.testing.assert_array_equal(device.get(d), want)
        o = device.empty(13, np.float64)
        got = rr.allreduce(device.put(np.arange(13.0) * (RANK + 1)), "max", algorithm=algorithm,
                           out=o)
        assert got is o
        np.testing.assert_array_equal(device.get(o), np.arange(13.0) * P)
    dc = device_comm(get_comm())
    assert dc.aware and dc.pinned_bytes == 0
    host = [np.arange(7.0) * (RANK + 1), np.ones((3, 4), np.float32)[:, ::2] * (RANK + 1),
            np.zeros(0, np.int32)]
    outs = rr.grouped_allreduce([put_like(device, a) for a in host], fusion_threshold=64,
                                segment_bytes=16)
    for o, a in zip(outs, host):
        np.testing.assert_array_equal(device.get(o), a / (RANK + 1) * tri)
    h = rr.allreduce_async(device.put(np.full(33, RANK + 1.0)), name="aware")
    assert np.all(device.get(h.wait(timeout=60)) == tri)
    assert dc.pinned_bytes == 0
