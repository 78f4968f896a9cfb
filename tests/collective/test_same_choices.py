"""The device path makes exactly the host's choices, for the same inputs: the same buckets
(``collectives.grouped.bucket_plan``), the same algorithm for "auto" (``collectives.run``
and ``core.choose``; shm, whose window is host memory, is never offered to device arrays),
and the same exception, type and text, for an invalid input where the rule is shared."""
import numpy as np
import pytest
from mpi4py import MPI

import ringreduce as rr
from _memory import Host, put_like
from ringreduce.algorithms import ALGORITHMS
from ringreduce.algorithms.shm import on_one_node
from ringreduce.collectives.grouped import bucket_plan
from ringreduce.collectives.run import run_algorithm
from ringreduce.config import get_config
from ringreduce.core import adapt
from ringreduce.core.choose import PIGGYBACK_CAP, choose_algorithm, shm_max_bytes
from ringreduce.transport.comm import mpi_library
from ringreduce.memory.device import DEVICE
from ringreduce.memory.host import HOST
from ringreduce.transport.comm import get_comm

P = MPI.COMM_WORLD.Get_size()
HOST_MEMORY = Host()


def tensor_list():
    """Mixed dtypes and sizes around the caps and segments below; empty, 0-d and
    non-contiguous (strided) members."""
    rng = np.random.default_rng(3)
    out = []
    for i, n in enumerate((3, 40, 0, 17, 257, 1, 64, 16, 600, 5)):
        out.append(rng.standard_normal(n).astype((np.float32, np.float64, np.int32)[i % 3]))
    out.insert(3, rng.standard_normal((9, 12)).astype(np.float32)[:, ::2])
    out.insert(7, rng.standard_normal((4, 33))[:, ::3])
    out.append(np.ones((), np.float64))
    return out


@pytest.mark.parametrize("cap", [0, 1, 64, 256, 4096, 1 << 20])
@pytest.mark.parametrize("seg", [8, 64, 1 << 20])
def test_bucket_plans_are_the_host_plans(device, cap, seg):
    host = [put_like(HOST_MEMORY, a) for a in tensor_list()]
    dev = [put_like(device, a) for a in tensor_list()]
    assert [DEVICE.contiguous(a) for a in dev] == [HOST.contiguous(a) for a in host]
    plan = bucket_plan(HOST, host, cap, seg)
    assert bucket_plan(DEVICE, dev, cap, seg) == plan
    assert sorted(i for _, members in plan for i in members) == list(range(len(host)))


def test_bucket_plans_cover_several_buckets_and_direct_tensors(device):
    # The plans compared above are not all trivial ones.
    host = [put_like(HOST_MEMORY, a) for a in tensor_list()]
    plan = bucket_plan(HOST, host, 256, 64)
    assert len(plan) > len({dtype for dtype, _ in plan}) > 1
    assert any(len(members) == 1 for _, members in plan)
    assert any(len(members) > 1 for _, members in plan)


SIZES = [8, 4 << 10, 32 << 10, 64 << 10, 512 << 10, 1 << 20, 4 << 20]


@pytest.fixture
def recorded(monkeypatch):
    """Every algorithm replaced by one that only records its name: the choice, not the run."""
    chosen = []
    for name in list(ALGORITHMS):
        monkeypatch.setitem(ALGORITHMS, name, lambda *args, name=name: chosen.append(name))
    return chosen


def test_auto_chooses_as_on_the_host_without_shm(device, recorded):
    c = get_comm()
    reduce = HOST.kernels("sum", np.dtype(np.float32))[0]
    dreduce = DEVICE.kernels("sum", np.dtype(np.float32))[0]
    for nbytes in SIZES:
        x = np.ones(nbytes // 4, np.float32)
        d = device.put(x)
        run_algorithm(c, HOST, "auto", x, x, reduce, 1 << 20)
        run_algorithm(c, DEVICE, "auto", d, d, dreduce, 1 << 20)
        host_choice, device_choice = recorded[-2:]
        one_node = P > 1 and on_one_node(c)
        shm_max = shm_max_bytes(mpi_library())  # the rule of the MPI this runs on
        if get_config().adapt and adapt.races(nbytes, P, one_node, True):
            assert host_choice in adapt.CANDIDATES, nbytes  # the race's turn (core/adapt.py)
        else:
            assert host_choice == choose_algorithm(nbytes, P, one_node, shm_max), nbytes
        assert device_choice == choose_algorithm(nbytes, P, False), nbytes
        if host_choice != "shm":
            assert device_choice == host_choice, nbytes
    assert "shm" not in recorded[1::2]


def test_allreduce_auto_runs_what_the_host_runs(device, recorded):
    # From 32 KiB the payload no longer rides in the header, so "auto" reaches an algorithm;
    # with every rank on one host host arrays ride up to 64 KiB (core/choose.py), device
    # arrays, which never ride, run what the rule says.
    one_host = get_comm().one_host
    for nbytes in SIZES[2:]:
        x = np.ones(nbytes // 4, np.float32)
        rr.allreduce(x)
        rides = one_host and nbytes <= PIGGYBACK_CAP
        before = len(recorded)
        rr.allreduce(device.put(x))
        device_choice = recorded[-1]
        if rides:
            assert len(recorded) == before + 1 and device_choice == choose_algorithm(nbytes, P)
            continue
        host_choice = recorded[-2]
        assert device_choice == (choose_algorithm(nbytes, P) if host_choice == "shm"
                                 else host_choice), nbytes


def error_of(call):
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the error itself is what is compared
        return type(exc), str(exc)
    return None


SHARED_RULES = {
    "unknown op": lambda put: rr.allreduce(put(np.ones(3)), "mean"),
    "unknown algorithm": lambda put: rr.allreduce(put(np.ones(3)), algorithm="butterfly"),
    "avg of an integer dtype": lambda put: rr.allreduce(put(np.ones(3, np.int16)), "avg"),
    "segment_bytes 0": lambda put: rr.allreduce(put(np.ones(3)), segment_bytes=0),
    "segment_bytes 2.5": lambda put: rr.allreduce(put(np.ones(3)), segment_bytes=2.5),
    "out of another shape": lambda put: rr.allreduce(put(np.ones(3)), out=put(np.ones(4))),
    "out of another dtype": lambda put: rr.allreduce(put(np.ones(3)),
                                                     out=put(np.ones(3, np.float32))),
    "grouped unknown op": lambda put: rr.grouped_allreduce([put(np.ones(3))], "mean"),
    "grouped avg of an integer dtype": lambda put: rr.grouped_allreduce(
        [put(np.ones(2)), put(np.ones(3, np.int64))], "avg"),
    "grouped fusion_threshold -1": lambda put: rr.grouped_allreduce(
        [put(np.ones(3))], fusion_threshold=-1),
    "grouped segment_bytes 0": lambda put: rr.grouped_allreduce([put(np.ones(3))],
                                                                segment_bytes=0),
    "async unknown op": lambda put: rr.allreduce_async(put(np.ones(3)), "mean"),
    "async avg of an integer dtype": lambda put: rr.allreduce_async(
        put(np.ones(3, np.int32)), "avg"),
    "async segment_bytes 0": lambda put: rr.allreduce_async(put(np.ones(3)), segment_bytes=0),
}


@pytest.mark.parametrize("rule", SHARED_RULES)
def test_invalid_input_raises_the_same_on_both(device, rule):
    on_host = error_of(lambda: SHARED_RULES[rule](HOST_MEMORY.put))
    on_device = error_of(lambda: SHARED_RULES[rule](device.put))
    assert on_host is not None, "the host accepted it"
    assert on_device == on_host
