"""The tuning file of ``python -m ringreduce.tune``: thresholds from measured times, the file
read, validated and merged, and "auto" following a measured rule (its job runs in
tests/jobs/test_guardrails.py)."""
import json

import pytest

from ringreduce.config import parse, read_tuning
from ringreduce.core.choose import (AUTO_DIRECT_BYTES, AUTO_SMALL_BYTES, Rule, choose_algorithm,
                                   default_rule, may_use_direct)
from ringreduce.perf.tune import thresholds, write

K = 1 << 10


def table(rows):
    """{size: {alg: us}} from [(size, rhd, ring, shm)]."""
    return {n: {"rhd": a, "ring": b, "shm": c} for n, a, b, c in rows}


def test_thresholds_take_the_longest_shm_run_and_the_last_ring_crossing():
    t = table([(32 * K, 5, 9, 4), (64 * K, 9, 12, 10), (128 * K, 20, 21, 15),
               (256 * K, 40, 35, 30), (512 * K, 80, 60, 50), (1024 * K, 150, 100, 120),
               (2048 * K, 300, 210, 200), (4096 * K, 600, 400, 500)])
    # shm wins at 32K alone, then from 128K to 512K (the longest run), and at 2M alone;
    # the ring is at least as fast as rhd from 256K on
    assert thresholds(t, one_node=True) == Rule(128 * K, 1024 * K, 256 * K)
    # off one node shm is not measured and never chosen
    off = {n: {"rhd": v["rhd"], "ring": v["ring"]} for n, v in t.items()}
    assert thresholds(off, one_node=False) == Rule(0, 0, 256 * K)


def test_thresholds_past_the_largest_size_and_ties():
    t = table([(32 * K, 5, 6, 4), (64 * K, 9, 8, 7)])
    assert thresholds(t, one_node=True) == Rule(32 * K, 128 * K, 64 * K)  # shm to the end
    never = table([(32 * K, 5, 6, 9), (64 * K, 9, 10, 11)])
    assert thresholds(never, one_node=True) == Rule(0, 0, 128 * K)  # rhd everywhere measured
    tie = table([(32 * K, 5, 5, 9), (64 * K, 9, 9, 11)])
    assert thresholds(tie, one_node=True).ring == 32 * K  # a tie goes to the ring


def test_auto_follows_a_rule():
    rule = Rule(0, 0, 64 * K)  # no shm; the ring from 64 KiB
    assert choose_algorithm(AUTO_SMALL_BYTES - 1, 2, True, rule=rule) == "doubling"
    assert choose_algorithm(32 * K, 2, True, rule=rule) == "rhd"
    assert choose_algorithm(64 * K, 2, True, rule=rule) == "ring"
    assert choose_algorithm(64 * K, 2, True, rule=Rule(64 * K, 128 * K, 32 * K)) == "shm"
    assert choose_algorithm(64 * K, 2, False, rule=Rule(64 * K, 128 * K, 32 * K)) == "ring"
    # the built-in rule is the same whether passed or not
    for n in (32 * K, 256 * K, 1 << 20, 4 << 20):
        for p in (2, 4, 16):
            assert choose_algorithm(n, p, True, rule=default_rule(p)) == choose_algorithm(
                n, p, True)


def test_direct_from_its_threshold_where_the_ranks_reach_each_other():
    """``direct`` only where every rank can copy from and into every other's memory (one
    node), from AUTO_DIRECT_BYTES on, under the built-in rule and a tuned one alike."""
    n = AUTO_DIRECT_BYTES
    assert choose_algorithm(n, 2, True, direct=True) == "direct"
    assert choose_algorithm(n - 1, 2, True, direct=True) == "ring"
    assert choose_algorithm(n, 2, True) == "ring"
    assert choose_algorithm(n, 1, True, direct=True) == "doubling"
    assert choose_algorithm(n, 4, True, rule=Rule(0, 0, 64 * K), direct=True) == "direct"
    assert may_use_direct(n, 2) and not may_use_direct(n - 1, 2) and not may_use_direct(n, 1)


def entry(**kw):
    e = {"library": "MPICH", "ranks": 2, "one_node": True, "shm_min": 32 * K,
         "shm_max": 1 << 20, "ring": 256 * K}
    e.update(kw)
    return e


def test_read_tuning_and_the_configuration(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"ringreduce_tuning": 1, "entries": [
        entry(ranks=4, measured_us={"32768": {"rhd": 1.0}}), entry()]}))
    got = read_tuning(str(path))
    assert got == (("MPICH", 2, True, 32 * K, 1 << 20, 256 * K),
                   ("MPICH", 4, True, 32 * K, 1 << 20, 256 * K))
    assert parse({"RINGREDUCE_TUNING_FILE": str(path)}).tuning_file == got
    assert parse({}).tuning_file == ()


@pytest.mark.parametrize("text, message", [
    ("not json", "cannot be read"),
    (json.dumps({"entries": []}), "is not a ringreduce tuning file"),
    (json.dumps({"ringreduce_tuning": 1, "entries": [{"library": "MPICH"}]}), "needs the keys"),
    (json.dumps({"ringreduce_tuning": 1, "entries": [entry(ranks=1)]}), "is not valid"),
    (json.dumps({"ringreduce_tuning": 1, "entries": [entry(shm_min=5, shm_max=4)]}),
     "shm_min <= shm_max"),
    (json.dumps({"ringreduce_tuning": 1, "entries": [entry(one_node="yes")]}), "is not valid"),
])
def test_a_bad_tuning_file_names_the_variable(tmp_path, text, message):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        parse({"RINGREDUCE_TUNING_FILE": str(path)})
    assert "RINGREDUCE_TUNING_FILE" in str(info.value)
    with pytest.raises(ValueError, match="cannot be read"):
        parse({"RINGREDUCE_TUNING_FILE": str(tmp_path / "missing.json")})


def test_write_replaces_only_its_own_entry(tmp_path):
    path = str(tmp_path / "t.json")
    write(path, entry(ranks=2, ring=1))
    write(path, entry(ranks=4, ring=2))
    write(path, entry(ranks=2, ring=3))
    assert [e[5] for e in read_tuning(path)] == [3, 2]
