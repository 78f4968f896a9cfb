"""Starting small MPI jobs from a test: one helper for every test file that does so."""
import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_MLP = os.path.join(ROOT, "examples", "train_mlp.py")
TIMEOUT = 120  # seconds per job; a small job takes a few seconds even at 4 ranks on 2 cores


def mpirun(n, args, *, script=TRAIN_MLP, expect_ok=True, timeout=TIMEOUT):
    """Run ``mpiexec -n n python script args``; return (returncode, stdout, stderr).

    A job past ``timeout`` is killed with every rank it started and fails the test, so a hang
    fails the test rather than the suite; ``expect_ok`` fails it on a non-zero exit."""
    cmd = ["mpiexec", "-n", str(n), sys.executable, *([script] if script else []), *args]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and every rank it started
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} hung for {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    if expect_ok and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}")
    return proc.returncode, out, err
