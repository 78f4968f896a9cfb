"""The abort hook prints what a wrapping excepthook captured before it ends the job."""
import io
import sys

from ringreduce.engine import abort


def test_a_captured_traceback_reaches_the_real_stderr(monkeypatch):
    real, captured = io.StringIO(), io.StringIO()
    captured.write("[rank0]: ValueError: --batch-size 47 must divide by the 2 ranks\n")
    monkeypatch.setattr(sys, "__stderr__", real)
    monkeypatch.setattr(sys, "stderr", captured)
    abort._release_captured_stderr()
    assert real.getvalue() == "[rank0]: ValueError: --batch-size 47 must divide by the 2 ranks\n"
    assert captured.getvalue() == ""  # not printed twice should the wrapper still write it


def test_a_real_stream_is_left_alone(monkeypatch):
    real = io.StringIO()
    real.write("already on its way\n")
    monkeypatch.setattr(sys, "__stderr__", real)
    monkeypatch.setattr(sys, "stderr", real)
    abort._release_captured_stderr()
    assert real.getvalue() == "already on its way\n"
