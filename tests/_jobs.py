"""Starting processes and small MPI jobs from a test: one helper for every test file that does
so, so every job has a timeout and a hang kills the whole job rather than stalling the suite."""
import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_MLP = os.path.join(ROOT, "examples", "train_mlp.py")
TIMEOUT = 120  # seconds per job; a small job takes a few seconds even at 4 ranks on 2 cores


def run_job(cmd, *, env=None, cwd=ROOT, timeout=TIMEOUT):
    """Run ``cmd`` in a session of its own; return (returncode, stdout, stderr).

    A job past ``timeout`` is killed with its whole process group (mpiexec and every rank it
    started) and fails the test with what it printed so far."""
    cmd = [str(c) for c in cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} hung for {timeout} s\nstdout:\n{out[-6000:]}\n"
                    f"stderr:\n{err[-6000:]}")
    return proc.returncode, out, err


def mpirun(n, args, *, script=TRAIN_MLP, expect_ok=True, timeout=TIMEOUT):
    """Run ``mpiexec -n n python script args`` with one BLAS thread per rank; return
    (returncode, stdout, stderr). ``expect_ok`` fails the test on a non-zero exit."""
    cmd = ["mpiexec", "-n", str(n), sys.executable, *([script] if script else []), *args]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    rc, out, err = run_job(cmd, env=env, timeout=timeout)
    if expect_ok and rc != 0:
        pytest.fail(f"{' '.join(cmd)} exited {rc}\nstdout:\n{out}\nstderr:\n{err}")
    return rc, out, err
