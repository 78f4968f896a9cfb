"""Spans (host arrays seen as one vector) and segment_bounds with cuts: every segment the ring
takes lies in one array, and the segments cover the range exactly."""
import numpy as np
import pytest

from ringreduce.core.schedule import segment_bounds
from ringreduce.memory.spans import Spans


@pytest.mark.parametrize("seg", [1, 3, 4, 100])
def test_segments_cover_the_range_and_never_cross_a_cut(seg):
    cuts = (3, 7, 8, 20)
    for lo in range(0, 24):
        for hi in range(lo, 25):
            segs = segment_bounds(lo, hi, seg, cuts)
            if lo == hi:
                assert segs == []
                continue
            assert [s for s, _ in segs] == [lo] + [e for _, e in segs[:-1]]
            assert segs[-1][1] == hi
            for s, e in segs:
                assert 0 < e - s <= seg
                assert not any(s < c < e for c in cuts)
    assert segment_bounds(0, 10, 4) == segment_bounds(0, 10, 4, ())


def test_slices_are_views_of_one_array_or_spans_again():
    a, b, c = np.arange(3.0), np.arange(10.0, 14.0), np.arange(20.0, 25.0)
    s = Spans([a, np.empty(0), b, c])  # empty arrays are dropped
    assert s.size == 12 and s.cuts == (3, 7) and s.nbytes == 96
    one = s[4:6]
    assert isinstance(one, np.ndarray) and np.shares_memory(one, b)
    assert list(one) == [11.0, 12.0]
    whole = np.concatenate([a, b, c])
    for lo in range(13):
        for hi in range(lo, 13):
            got = s[lo:hi]
            flat = got if isinstance(got, np.ndarray) else np.concatenate(got.arrays)
            assert list(flat) == list(whole[lo:hi])
    sub = s[2:9]
    assert isinstance(sub, Spans) and sub.cuts == (1, 5)
    sub[1:3][...] = -1.0  # writes land in the caller's arrays
    assert list(b[:2]) == [-1.0, -1.0]


def test_bad_spans_are_refused():
    with pytest.raises(ValueError):
        Spans([np.arange(3.0), np.arange(3, dtype=np.float32)])
    with pytest.raises(ValueError):
        Spans([np.arange(6.0)[::2]])
    with pytest.raises(TypeError):
        Spans([np.arange(3.0)])[::2]
