"""Pure parts of fusion and configuration (no MPI traffic)."""
import numpy as np
import pytest

from ringreduce.config import DEFAULTS, parse
from ringreduce.core.fusion import assign_buckets, group_by_dtype, offsets_of
from ringreduce.memory.host import HOST


@pytest.mark.parametrize("sizes,cap,expect", [
    ([], 10, []),
    ([4, 4, 4], 8, [[0, 1], [2]]),
    ([4, 20, 4], 8, [[0], [1], [2]]),          # larger than the cap: a bucket of its own
    ([4, 4, 4], 0, [[0], [1], [2]]),           # cap 0: no fusion
    ([0, 4, 0, 4, 0], 8, [[0, 1, 2, 3, 4]]),   # empty tensors ride along
    ([8, 0, 1], 8, [[0, 1], [2]]),
    ([3, 3, 3, 3], 100, [[0, 1, 2, 3]]),
])
def test_assign_buckets(sizes, cap, expect):
    assert assign_buckets(sizes, cap) == expect


def test_assign_buckets_properties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = list(rng.integers(0, 50, rng.integers(0, 30)))
        cap = int(rng.integers(0, 120))
        buckets = assign_buckets(sizes, cap)
        assert [i for b in buckets for i in b] == list(range(len(sizes)))
        for b in buckets:
            total = sum(sizes[i] for i in b)
            assert total <= cap or sum(1 for i in b if sizes[i]) == 1


def test_assign_buckets_errors():
    with pytest.raises(ValueError, match="cap must be >= 0"):
        assign_buckets([1], -1)
    with pytest.raises(ValueError, match="tensor 1"):
        assign_buckets([1, -2], 5)


def test_pack_unpack_round_trip_with_views():
    base = np.arange(40.0).reshape(5, 8)
    arrays = [base[:, ::2], np.zeros(0), base.T[1:3], np.float64(7) * np.ones(())]
    offs, total = offsets_of(arrays)
    assert total == 20 + 0 + 10 + 1
    buf = np.empty(total)
    HOST.pack(arrays, buf, offs)
    outs = [np.empty_like(a) for a in arrays]
    HOST.unpack(buf, outs, offs)
    for a, o in zip(arrays, outs):
        np.testing.assert_array_equal(a, o)
    target = np.zeros((5, 8))
    HOST.unpack(buf[:20] * 2, [target[:, ::2]], [0])
    np.testing.assert_array_equal(target[:, ::2], base[:, ::2] * 2)
    assert np.all(target[:, 1::2] == 0)


def test_group_by_dtype_keeps_order():
    arrays = [np.zeros(1, np.float32), np.zeros(1, np.int64), np.zeros(1, np.float32)]
    assert group_by_dtype([a.dtype for a in arrays]) == {np.dtype(np.float32): [0, 2], np.dtype(np.int64): [1]}


def test_config_defaults_and_units():
    cfg = parse({})
    assert cfg.fusion_threshold == DEFAULTS["RINGREDUCE_FUSION_THRESHOLD"]
    assert cfg.stall_check_seconds == 60 and cfg.stall_shutdown_seconds == 0
    assert parse({"RINGREDUCE_FUSION_THRESHOLD": "25M"}).fusion_threshold == 25 << 20
    assert parse({"RINGREDUCE_FUSION_THRESHOLD": "0"}).fusion_threshold == 0
    assert parse({"RINGREDUCE_ALGORITHM": "ring"}).algorithm == "ring"
    assert cfg.adapt is True and parse({"RINGREDUCE_ADAPT": "0"}).adapt is False


@pytest.mark.parametrize("name,value,allowed", [
    ("RINGREDUCE_FUSION_THRESHOLD", "abc", "whole number of bytes"),
    ("RINGREDUCE_FUSION_THRESHOLD", "-5", "whole number of bytes"),
    ("RINGREDUCE_FUSION_THRESHOLD", "1.5", "whole number of bytes"),
    ("RINGREDUCE_CYCLE_TIME_MS", "nan", "milliseconds > 0"),
    ("RINGREDUCE_CYCLE_TIME_MS", "0", "milliseconds > 0"),
    ("RINGREDUCE_CYCLE_TIME_MS", "inf", "milliseconds > 0"),
    ("RINGREDUCE_STALL_CHECK_SECONDS", "-1", "seconds >= 0"),
    ("RINGREDUCE_STALL_SHUTDOWN_SECONDS", "soon", "seconds >= 0"),
    ("RINGREDUCE_ALGORITHM", "butterfly", "auto, ring, tree, rhd, doubling"),
    ("RINGREDUCE_SEGMENT_BYTES", "0", "bytes >= 1"),
    ("RINGREDUCE_ADAPT", "yes", "1 (race shm against the ring in the job) or 0"),
])
def test_config_errors_name_variable_and_allowed(name, value, allowed):
    with pytest.raises(ValueError) as info:
        parse({name: value})
    msg = str(info.value)
    assert name in msg and repr(value) in msg and allowed in msg


def test_plan_buckets_sends_large_contiguous_tensors_directly():
    from ringreduce.core.fusion import plan_buckets
    sizes = [10, 5000, 20, 30, 6000, 5]
    assert plan_buckets(sizes, 100, 1000) == [[0, 2, 3, 5], [1], [4]]
    # a large but non-contiguous tensor must be packed
    assert plan_buckets(sizes, 100, 1000, [True, False, True, True, True, True]) == \
        [[0], [1], [2, 3, 5], [4]]
    assert plan_buckets([], 100, 1000) == []


def test_local_size_default_value_and_errors():
    assert parse({}).local_size == DEFAULTS["RINGREDUCE_LOCAL_SIZE"] == 0
    assert parse({"RINGREDUCE_LOCAL_SIZE": "3"}).local_size == 3
    assert parse({"RINGREDUCE_LOCAL_SIZE": " 2 "}).local_size == 2
    assert ("RINGREDUCE_LOCAL_SIZE", 4) in parse({"RINGREDUCE_LOCAL_SIZE": "4"}).items()
    for bad in ("-1", "1.5", "two", "", "2K"):
        with pytest.raises(ValueError) as info:
            parse({"RINGREDUCE_LOCAL_SIZE": bad})
        assert str(info.value) == (f"RINGREDUCE_LOCAL_SIZE={bad!r} is not valid; expected a whole "
                                   "number of ranks per node >= 0 (0 uses the nodes MPI reports)")
