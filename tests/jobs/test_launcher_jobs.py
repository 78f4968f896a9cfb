"""ringreduce-run running jobs: the stand-in mpiexec (tests/_fake_mpiexec.py) with the argv and
hostfile the dry run shows, its exit status and a SIGTERM passed on; then a real job with
the installed MPI. The commands built without running them: tests/unit/test_launcher.py.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from _fake_mpiexec import HYDRA_VERSION, clean_env, dry_run, make_fake  # noqa: F401
from _jobs import ROOT
from ringreduce.launch.run import main


# --- the whole launcher, running the stand-in ---

def test_runs_with_the_argv_and_hostfile_shown(tmp_path, capsys, monkeypatch):
    fake, record = make_fake(tmp_path, HYDRA_VERSION)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("RINGREDUCE_ALGORITHM", "ring")
    argv = ["--mpiexec", fake, "-H", "node1:1,10.0.0.2:2", "python", f"$(touch {marker})"]
    shown, _ = dry_run(capsys, argv)
    assert main(argv) == 0
    got = json.loads(record.read_text())
    # Passed as one argv, no shell: the $(...) is an argument, never run.
    shown[4] = got["argv"][4]  # each run writes its own temporary hostfile
    assert got["argv"] == shown
    assert got["argv"][-1] == f"$(touch {marker})" and not marker.exists()
    assert got["hostfile"] == "node1:1\n10.0.0.2:2\n"
    assert not os.path.exists(got["argv"][4])


def test_exit_status_is_the_jobs(tmp_path, monkeypatch):
    fake, _ = make_fake(tmp_path, HYDRA_VERSION)
    monkeypatch.setenv("FAKE_EXIT", "7")
    assert main(["--mpiexec", fake, "-np", "1", "true"]) == 7


def test_sigterm_reaches_the_job(tmp_path):
    # SIGTERM sent to the launcher alone must end the job, not leave it running.
    ready, got = tmp_path / "ready", tmp_path / "got-term"
    fake = tmp_path / "mpiexec"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = --version ]; then echo 'HYDRA build details:'; exit 0; fi
        trap 'echo TERM > {got}; exit 143' TERM
        touch {ready}
        while :; do sleep 0.1; done
        """))
    fake.chmod(0o755)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT,
                                                                   os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "ringreduce.launch.run", "--mpiexec", str(fake),
                             "-np", "1", "true"], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, f"the launcher exited early ({proc.returncode})"
            assert time.monotonic() < deadline, "the stand-in mpiexec never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert got.read_text().strip() == "TERM"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- the real thing ---

@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec on PATH")
@pytest.mark.skipif(any(k in os.environ for k in ("PMI_RANK", "PMI_FD", "OMPI_COMM_WORLD_RANK")),
                    reason="starts its own MPI job; run under plain pytest, not mpiexec")
def test_real_job_gets_forwarded_environment(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""\
        import os
        from mpi4py import MPI
        c = MPI.COMM_WORLD
        seen = c.gather((os.environ.get("RINGREDUCE_CYCLE_TIME_MS"), os.environ.get("EXTRA")))
        if c.rank == 0:
            print("SEEN", c.size, seen, flush=True)
        """))
    env = dict(os.environ, RINGREDUCE_CYCLE_TIME_MS="2.5",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "ringreduce.launch.run", "-H", "localhost:2",
                           "--env", "EXTRA=a b;c", sys.executable, str(script)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SEEN 2 [('2.5', 'a b;c'), ('2.5', 'a b;c')]" in done.stdout
