"""The CUDA kernels, checked in child processes by tests/_cuda_sim_checks.py and (bfloat16,
float16, the gradient codecs) tests/_cuda_half_checks.py.

Numba decides between the CUDA simulator and the real driver when it is first imported
(NUMBA_ENABLE_CUDASIM), and this process may already hold it either way, so each run of the
checks gets a fresh interpreter with the variable set as that run needs.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ROOT / "tests" / "_cuda_sim_checks.py"
HALF_CHECKS = ROOT / "tests" / "_cuda_half_checks.py"


def run_python(args, simulator, timeout):
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_checks(simulator, checks=CHECKS):
    # --noconftest: the checks need no MPI fixtures, and a child of an mpiexec rank must not
    # start MPI again.
    result = run_python(["-m", "pytest", str(checks), "-q", "-p", "no:cacheprovider",
                         "--noconftest"], simulator, timeout=280)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    return result.stdout


def real_gpu_present():
    """Asked in a child process too, so this process never initialises the driver."""
    probe = ("import numba, sys\n"
             "from numba import cuda\n"
             "sys.exit(0 if cuda.is_available() and not numba.config.ENABLE_CUDASIM else 1)\n")
    try:
        return run_python(["-c", probe], simulator=False, timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        return False


HAVE_GPU = real_gpu_present()


@pytest.mark.parametrize("checks", (CHECKS, HALF_CHECKS), ids=("kernels", "half"))
def test_kernels_under_the_cuda_simulator(checks):
    out = run_checks(simulator=True, checks=checks)
    assert " passed" in out and "skipped" not in out, out[-2000:]


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_GPU, reason="needs a CUDA GPU; the simulator run checks the same "
                                         "kernels without one")
@pytest.mark.parametrize("checks", (CHECKS, HALF_CHECKS), ids=("kernels", "half"))
def test_kernels_on_the_gpu(checks):
    out = run_checks(simulator=False, checks=checks)
    assert " passed" in out and "skipped" not in out, out[-2000:]


# The child loads the kernels the way the checks do (installed, or from the source checkout).
IMPORT_CUDA_KERNELS = (
    "import sys\n"
    f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
    "from _cuda_sim_checks import ck, optim\n"
)

CHECK_UNAVAILABLE = (
    "assert ck.cuda_available() is False\n"
    "for call in (lambda: ck.reduce_kernel('sum', 'float32'), lambda: ck.scale_kernel('f4'),\n"
    "             lambda: optim.get_optimizer_kernels('cuda')):\n"
    "    try:\n"
    "        call()\n"
    "    except RuntimeError as error:\n"
    "        assert WHY in str(error), str(error)\n"
    "    else:\n"
    "        raise AssertionError('no RuntimeError without CUDA')\n"
    "print('unavailable, as expected')\n"
)


def test_imports_and_refuses_politely_without_numba_cuda():
    # A None entry in sys.modules makes "from numba import cuda" raise ImportError, as it does
    # where numba-cuda is not installed.
    code = ("import sys; sys.modules['numba.cuda'] = None\n" + IMPORT_CUDA_KERNELS
            + "WHY = 'numba-cuda is not installed'\n" + CHECK_UNAVAILABLE)
    result = run_python(["-c", code], simulator=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "unavailable, as expected" in result.stdout


@pytest.mark.skipif(HAVE_GPU, reason="checks the behaviour on a machine without a GPU")
def test_imports_and_refuses_politely_without_a_gpu():
    code = IMPORT_CUDA_KERNELS + "WHY = 'no CUDA GPU'\n" + CHECK_UNAVAILABLE
    result = run_python(["-c", code], simulator=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "unavailable, as expected" in result.stdout
