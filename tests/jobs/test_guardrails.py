"""Guard rails, triggered for real in small MPI jobs: stalls, a rank that raises, bad or
differing configuration, and the timeline surviving a crash. Every job runs with a timeout,
so a hang fails the test instead of stalling the suite.

The coordinator's rules (when a stall warning or shutdown is due, what it says, mismatched
metadata) are unit-tested with a fake clock in tests/unit/test_coordinator.py; the stall jobs
here only show the wiring, with thresholds of a fraction of a second."""
import json
import os
import shutil
import sys
import textwrap
import time

import pytest

import _jobs

MPIEXEC = shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec")


def run_job(tmp_path, script, n=2, env=None, timeout=90, sections=None):
    """Run ``script`` on ``n`` ranks; returns (returncode, output, seconds)."""
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(script))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RINGREDUCE_")}
    full_env.update(env or {})
    # Output stays block-buffered and scripts print with flush=True: one write per line, so
    # lines of different ranks cannot interleave mid-line.
    full_env.pop("PYTHONUNBUFFERED", None)
    if sections:  # MPMD: [(ranks, {VAR: value}), ...] in Hydra's syntax
        cmd = [MPIEXEC]
        for i, (ranks, extra) in enumerate(sections):
            if i:
                cmd.append(":")
            cmd += ["-n", str(ranks)]
            for k, v in extra.items():
                cmd += ["-env", k, v]
            cmd += [sys.executable, str(path)]
    else:
        cmd = [MPIEXEC, "-n", str(n), sys.executable, str(path)]
    start = time.monotonic()
    rc, out, err = _jobs.run_job(cmd, env=full_env, timeout=timeout)
    return rc, out + err, time.monotonic() - start


def test_stall_warning_names_missing_rank_and_tensor(tmp_path):
    rc, out, _ = run_job(tmp_path, """
        import time, numpy as np, ringreduce as rr
        from mpi4py import MPI
        rank = MPI.COMM_WORLD.Get_rank()
        rr.init()
        if rank == 1:
            time.sleep(1.5)  # three stall-check periods
        h = rr.allreduce_async(np.ones(4), name="layer1.weight.grad")
        print(f"rank {rank} result {h.wait(timeout=60)[0]}", flush=True)
    """, env={"RINGREDUCE_STALL_CHECK_SECONDS": "0.5"})
    assert rc == 0, out
    assert "stall warning" in out and "ranks [1] have not submitted 'layer1.weight.grad'" in out
    assert "rank 0 result 2.0" in out and "rank 1 result 2.0" in out


def test_stall_shutdown_errors_every_waiting_rank_and_ends_job(tmp_path):
    rc, out, seconds = run_job(tmp_path, """
        import time, numpy as np, ringreduce as rr
        from mpi4py import MPI
        rank = MPI.COMM_WORLD.Get_rank()
        rr.init()
        if rank == 1:
            time.sleep(120)          # never submits in time
        h = rr.allreduce_async(np.ones(4), name="stuck")
        try:
            h.wait(timeout=100)
        except rr.StallError as exc:
            print(f"rank {rank} StallError: {exc}", flush=True)
            time.sleep(1)
            raise
    """, n=3, env={"RINGREDUCE_STALL_CHECK_SECONDS": "0.5",
                   "RINGREDUCE_STALL_SHUTDOWN_SECONDS": "1"})
    assert rc != 0, out
    assert seconds < 60, f"took {seconds:.0f} s"
    for r in (0, 2):
        assert f"rank {r} StallError" in out, out
    assert "ranks [1] have not submitted 'stuck'" in out


def test_uncaught_exception_on_one_rank_ends_job_quickly(tmp_path):
    rc, out, seconds = run_job(tmp_path, """
        import numpy as np, ringreduce as rr
        from mpi4py import MPI
        if MPI.COMM_WORLD.Get_rank() == 1:
            raise RuntimeError("boom on rank 1")
        rr.allreduce(np.ones(1000))   # rank 0 waits here for rank 1
        print("rank 0 finished", flush=True)
    """, n=3)
    assert rc != 0
    assert seconds < 60, f"took {seconds:.0f} s"
    assert "boom on rank 1" in out and "aborting the job" in out
    assert "rank 0 finished" not in out


# One allreduce; each rank prints the ValueError it got, on a line of its own.
REPORT_VALUE_ERROR = """
        import numpy as np, ringreduce as rr
        from mpi4py import MPI
        rank = MPI.COMM_WORLD.Get_rank()
        try:
            rr.allreduce(np.ones(3))
        except ValueError as exc:
            print(f"rank {rank} ValueError: {exc}", flush=True)
"""


def value_error_line(out, rank):
    """The line rank ``rank`` printed for its ValueError, or "" if it printed none."""
    return next((l for l in out.splitlines() if l.startswith(f"rank {rank} ValueError")), "")


def test_bad_variable_is_an_error_on_every_rank(tmp_path):
    rc, out, _ = run_job(tmp_path, REPORT_VALUE_ERROR, env={"RINGREDUCE_FUSION_THRESHOLD": "abc"})
    assert rc == 0, out
    for r in (0, 1):
        line = value_error_line(out, r)
        assert "RINGREDUCE_FUSION_THRESHOLD='abc'" in line and "whole number of bytes" in line


def test_ranks_with_different_settings_are_told(tmp_path):
    rc, out, _ = run_job(tmp_path, REPORT_VALUE_ERROR,
                         sections=[(1, {"RINGREDUCE_CYCLE_TIME_MS": "2"}), (1, {})])
    assert rc == 0, out
    for r in (0, 1):
        line = value_error_line(out, r)
        assert "RINGREDUCE_CYCLE_TIME_MS" in line and "different" in line
        assert "2.0" in line and "5.0" in line


def test_timeline_is_valid_json_after_a_crash(tmp_path):
    trace = tmp_path / "trace.json"
    rc, out, _ = run_job(tmp_path, """
        import numpy as np, ringreduce as rr
        from mpi4py import MPI
        rank = MPI.COMM_WORLD.Get_rank()
        hs = [rr.allreduce_async(np.ones(100 * (i + 1)), name=f"grad{i}") for i in range(5)]
        [h.wait(timeout=60) for h in hs]
        MPI.COMM_WORLD.Barrier()
        if rank == 1:
            raise RuntimeError("crash after the step")
        rr.allreduce(np.ones(3))
    """, env={"RINGREDUCE_TIMELINE": str(trace)})
    assert rc != 0
    events = json.loads(trace.read_text())["traceEvents"]
    phases = {e["name"] for e in events if e.get("ph") == "X"}
    assert {"WAIT_FOR_DATA", "NEGOTIATE", "QUEUE", "ALLREDUCE"} <= phases
    names = {e["args"]["name"] for e in events if e.get("ph") == "M"}
    assert {f"grad{i}" for i in range(5)} <= names


def test_tune_writes_a_file_that_auto_then_follows(tmp_path):
    """``python -m ringreduce.tune`` writes an entry for this library and rank count; with
    RINGREDUCE_TUNING_FILE naming a file whose rule differs from the built-in one, "auto"
    follows it (and reduces correctly), and without it the built-in rule holds."""
    out = tmp_path / "tuning.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGREDUCE_")}
    rc, text, err = _jobs.run_job([MPIEXEC, "-n", "2", sys.executable, "-m", "ringreduce.tune",
                                   "--max-bytes", "128K", "--iters", "3", "--out", out],
                                  env=env, timeout=120)
    assert rc == 0, text + err
    assert "RINGREDUCE_TUNING_FILE=" in text
    data = json.loads(out.read_text())
    from mpi4py import MPI
    library = MPI.get_vendor()[0]
    (e,) = data["entries"]
    assert (e["library"], e["ranks"], e["one_node"]) == (library, 2, True)
    assert set(e["measured_us"]) == {"32768", "65536", "131072"}
    # a rule no measurement would give: no shm, the ring from 64 KiB
    forced = tmp_path / "forced.json"
    forced.write_text(json.dumps({"ringreduce_tuning": 1, "entries": [dict(
        library=library, ranks=2, one_node=True, shm_min=0, shm_max=0, ring=64 << 10)]}))
    script = """
        import numpy as np, ringreduce as rr
        from mpi4py import MPI
        from ringreduce.collectives.run import auto_choice
        from ringreduce.memory import HOST
        from ringreduce.transport.comm import get_comm
        comm = MPI.COMM_WORLD
        x = np.random.default_rng(comm.Get_rank()).standard_normal(32768)  # 256 KiB
        ref = np.empty_like(x)
        comm.Allreduce(x, ref)
        got = rr.allreduce(x)
        c = get_comm()
        print(f"rank {comm.Get_rank()} chose {auto_choice(c, HOST, x.nbytes)} "
              f"{auto_choice(c, HOST, 48 << 10)} ok {np.allclose(got, ref, rtol=1e-13)}",
              flush=True)
    """
    rc, text, _ = run_job(tmp_path, script, env={"RINGREDUCE_TUNING_FILE": str(forced)})
    assert rc == 0, text
    for r in (0, 1):
        assert f"rank {r} chose ring rhd ok True" in text, text
    rc, text, _ = run_job(tmp_path, script)
    assert rc == 0, text
    for r in (0, 1):
        assert f"rank {r} chose shm shm ok True" in text, text


def test_bench_names_its_mpi_and_checks_its_results(tmp_path):
    """``python -m ringreduce.bench`` (the issue's name for ``ringreduce.perf.bench``) prints
    the MPI library it runs on in its first line and counts no wrong element, native beside."""
    from mpi4py import MPI
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGREDUCE_")}
    rc, text, err = _jobs.run_job([MPIEXEC, "-n", "2", sys.executable, "-m", "ringreduce.bench",
                                   "--sizes", "8", "4K", "-a", "native", "auto", "ring",
                                   "-n", "3"], env=env, timeout=120)
    assert rc == 0, text + err
    lines = text.splitlines()
    assert lines[0].startswith("# python -m ringreduce.bench: 2 ranks, "), text
    assert MPI.get_vendor()[0] in lines[0], text
    rows = [ln.split() for ln in lines if ln.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["8", "4096"], text
    # per algorithm: time algbw busbw #wrong [/native]; #wrong is the 4th field after "|"
    for r in rows:
        cells = " ".join(r).split("|")[1:]
        assert all(c.split()[3] == "0" for c in cells), text


def test_ranks_with_different_tuning_files_are_told(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path, ring in ((a, 1 << 20), (b, 2 << 20)):
        path.write_text(json.dumps({"ringreduce_tuning": 1, "entries": [dict(
            library="MPICH", ranks=2, one_node=True, shm_min=0, shm_max=0, ring=ring)]}))
    rc, out, _ = run_job(tmp_path, REPORT_VALUE_ERROR,
                         sections=[(1, {"RINGREDUCE_TUNING_FILE": str(a)}),
                                   (1, {"RINGREDUCE_TUNING_FILE": str(b)})])
    assert rc == 0, out
    for r in (0, 1):
        line = value_error_line(out, r)
        assert "RINGREDUCE_TUNING_FILE" in line and "different" in line
