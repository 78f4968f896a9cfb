"""The engine's coordinator (ringreduce.engine.coordinator) with a fake clock: no MPI, no
threads, no sleeps. Every time below is a number handed to the coordinator.

What must hold: a tensor is ready only when every rank submitted it; a response lists the
ready tensors sorted by name and goes out at most once per cycle; differing metadata is an
error naming the field and the ranks in the header pass's words; a tensor some ranks have not
submitted draws a warning after the stall check, naming the missing ranks and tensors, once
per period; after the stall shutdown it becomes a ("name", message, "stall") error of a
response due at once; with both set to 0 nothing is ever said. tests/jobs/test_guardrails.py
checks the same rules end to end in a few real jobs.
"""
import pytest

from ringreduce.collectives.header import mismatch_message
from ringreduce.engine.coordinator import META_FIELDS, Coordinator

CYCLE = 0.005
DEFAULTS = {"shape": (4,), "dtype": "float32", "op": "sum", "algorithm": "auto",
            "segment_bytes": 1 << 20, "memory": "host"}
# A value that differs from the default, for each field a mismatch test changes.
OTHER = {"shape": (5,), "dtype": "float64", "op": "max", "algorithm": "ring",
         "segment_bytes": 4096, "memory": "device"}


def meta(**fields):
    """A tensor's metadata tuple, in META_FIELDS order (None for a field not set here)."""
    values = dict(DEFAULTS, **fields)
    return tuple(values.get(f) for f in META_FIELDS)


def coordinator(size=3, *, check=0.0, shutdown=0.0, now=0.0):
    return Coordinator(size, cycle_time_s=CYCLE, stall_check_s=check,
                       stall_shutdown_s=shutdown, now=now)


def submit(c, ranks, name, t, **fields):
    for r in ranks:
        c.note(r, [(name, meta(**fields))], t)


# -- readiness, order, cycles ------------------------------------------------------------

def test_ready_only_when_every_rank_submitted():
    c = coordinator(3)
    submit(c, [0, 2], "w", 1.0)
    assert not c.has_work() and c.respond(10.0) is None
    c.note(1, [("w", meta())], 1.5)
    assert c.has_work()
    assert c.respond(10.0) == ([("w", 1.0, 1.5)], [])  # first and last submission
    assert not c.has_work() and c.respond(20.0) is None


def test_one_rank_is_ready_at_once():
    c = coordinator(1)
    c.note(0, [("a", meta())], 0.0)
    assert c.respond(CYCLE) == ([("a", 0.0, 0.0)], [])


def test_ready_tensors_are_sorted_by_name_whatever_the_submission_order():
    c = coordinator(3)
    names = ["fc2.bias", "conv1.weight", "b", "a", "fc1.weight"]
    orders = [names, names[::-1], names[2:] + names[:2]]
    for rank, order in enumerate(orders):
        c.note(rank, [(n, meta()) for n in order], 0.1 * rank)
    ready, errors = c.respond(1.0)
    assert [n for n, _, _ in ready] == sorted(names) and errors == []


def test_at_most_one_response_per_cycle():
    c = coordinator(2, now=0.0)
    submit(c, [0, 1], "a", 0.001)
    assert c.respond(0.004) is None                  # within the first cycle
    assert c.respond(0.006) == ([("a", 0.001, 0.001)], [])
    submit(c, [0, 1], "b", 0.007)
    assert c.respond(0.010) is None                  # 4 ms after the last response
    assert c.respond(0.0111) == ([("b", 0.007, 0.007)], [])
    assert c.respond(1.0) is None                    # nothing due: no empty responses


def test_several_cycles_in_one_response_keep_their_order():
    c = coordinator(2)
    submit(c, [0, 1], "z", 0.0)
    submit(c, [1, 0], "y", 0.001)
    ready, _ = c.respond(0.01)
    assert [n for n, _, _ in ready] == ["y", "z"]


# -- mismatches ------------------------------------------------------------------------

@pytest.mark.parametrize("field", sorted(OTHER))
def test_mismatched_metadata_is_an_error_naming_the_field_and_the_ranks(field):
    assert field in META_FIELDS
    c = coordinator(3)
    c.note(0, [("t", meta())], 0.0)
    c.note(2, [("t", meta())], 0.0)
    c.note(1, [("t", meta(**{field: OTHER[field]}))], 0.0)
    submit(c, [0, 1, 2], "fine", 0.0)
    ready, errors = c.respond(1.0)
    assert [n for n, _, _ in ready] == ["fine"]
    text = mismatch_message("allreduce", field, 0, DEFAULTS[field], 1, OTHER[field])
    assert errors == [("t", f"{text} (tensor 't')")]
    assert "rank 0" in text and "rank 1" in text


def test_a_mismatch_names_the_first_field_that_differs():
    c = coordinator(2)
    c.note(0, [("t", meta())], 0.0)
    c.note(1, [("t", meta(op="max", dtype="float64"))], 0.0)
    _, [(name, text)] = c.respond(1.0)
    first = min(("op", "dtype"), key=META_FIELDS.index)
    assert name == "t" and text.startswith(f"Mismatched allreduce {first}")


def test_shape_mismatch_uses_horovods_wording():
    c = coordinator(2)
    c.note(0, [("t", meta(shape=(2, 3)))], 0.0)
    c.note(1, [("t", meta(shape=(3, 2)))], 0.0)
    _, [(_, text)] = c.respond(1.0)
    assert text == ("Mismatched allreduce tensor shapes: rank 0 sent a tensor of shape (2, 3) "
                    "(6 elements), but rank 1 sent a tensor of shape (3, 2) (6 elements) "
                    "(tensor 't')")


# -- stalls ----------------------------------------------------------------------------

def test_stall_warning_names_the_missing_ranks_and_tensors_once_per_period():
    c = coordinator(3, check=1.0)
    submit(c, [0, 2], "layer1.weight.grad", 0.0)
    submit(c, [0, 1], "layer2.bias", 0.2)
    assert c.inspect(0.5) == (None, None)
    assert c.inspect(1.0) == (None, None)            # not before the period has passed
    warning, shutdown = c.inspect(1.1)
    assert shutdown is None
    assert "more than 1 s (RINGREDUCE_STALL_CHECK_SECONDS)" in warning
    assert "ranks [1] have not submitted 'layer1.weight.grad'" in warning
    assert "layer2.bias" not in warning               # waited 0.9 s so far
    warning, _ = c.inspect(1.3)
    assert warning is not None and "ranks [2] have not submitted 'layer2.bias'" in warning
    assert "layer1" not in warning                    # warned 0.2 s ago
    assert c.inspect(2.0) == (None, None)
    warning, _ = c.inspect(2.15)                      # one period after the first warning
    assert "'layer1.weight.grad'" in warning and "layer2.bias" not in warning
    # Submitted at last: ready, and no more warnings for it.
    c.note(1, [("layer1.weight.grad", meta())], 2.2)
    assert [n for n, _, _ in c.respond(2.2)[0]] == ["layer1.weight.grad"]
    for t in (3.2, 4.4, 5.6):
        warning, _ = c.inspect(t)
        assert warning is None or "layer1" not in warning


def test_stall_warning_groups_tensors_by_the_ranks_missing():
    c = coordinator(4, check=1.0)
    submit(c, [0, 1], "a", 0.0)
    submit(c, [0, 1], "b", 0.0)
    submit(c, [0, 2, 3], "c", 0.0)
    warning, _ = c.inspect(2.0)
    assert ("ranks [1] have not submitted 'c'; ranks [2, 3] have not submitted 'a', 'b'"
            in warning)


def test_stall_warning_lists_ten_names_and_counts_the_rest():
    c = coordinator(2, check=1.0)
    for i in range(13):
        c.note(0, [(f"t{i:02d}", meta())], 0.0)
    warning, _ = c.inspect(2.0)
    assert "'t09'" in warning and "'t10'" not in warning and "and 3 more" in warning


def test_stall_shutdown_turns_stalled_tensors_into_errors_due_at_once():
    c = coordinator(3, check=1.0, shutdown=2.0)
    submit(c, [0, 2], "stuck", 0.0)
    submit(c, [0, 1, 2], "done", 1.999)
    c.respond(1.999)                                  # the last response, just now
    assert c.inspect(1.5)[1] is None
    warning, shutdown = c.inspect(2.01)
    assert shutdown == ("ringreduce: stall shutdown after 2 s: ranks [1] have not submitted "
                        "'stuck'")
    assert warning is None                            # the stalled tensor is gone from the table
    # Due at once, within the cycle of the last response.
    ready, errors = c.respond(2.011)
    assert ready == []
    assert errors == [("stuck", "stalled: ranks [1] have not submitted 'stuck'; shutting down "
                                "after RINGREDUCE_STALL_SHUTDOWN_SECONDS=2", "stall")]
    assert c.inspect(10.0) == (None, None)


def test_stall_shutdown_without_a_stall_check():
    c = coordinator(2, check=0.0, shutdown=1.0)
    c.note(1, [("x", meta())], 0.0)
    assert c.inspect(0.9) == (None, None)
    warning, shutdown = c.inspect(1.1)
    assert warning is None and "ranks [0] have not submitted 'x'" in shutdown
    assert c.respond(1.1)[1][0][2] == "stall"


def test_stall_check_alone_never_shuts_down():
    c = coordinator(2, check=1.0, shutdown=0.0)
    c.note(0, [("x", meta())], 0.0)
    for t in (1.5, 10.0, 1000.0):
        warning, shutdown = c.inspect(t)
        assert warning is not None and shutdown is None
    assert c.respond(1000.0) is None


def test_nothing_is_said_when_both_are_off():
    c = coordinator(3, check=0.0, shutdown=0.0)
    submit(c, [0], "x", 0.0)
    for t in (1.0, 60.0, 1e6):
        assert c.inspect(t) == (None, None)
    assert c.respond(1e6) is None
