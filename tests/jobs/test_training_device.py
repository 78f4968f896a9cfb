"""The optimizers (SGD, Adam) on CUDA device arrays, compared with the CPU path, each run in
a child interpreter: under the CUDA simulator, and on a real GPU where there is one. The CPU
path and the rest of ringreduce.training: tests/unit/test_training.py."""
import os
import subprocess
import sys

import pytest
from mpi4py import MPI


# The same optimizers on CUDA device arrays: the CUDA twins of the kernels through the same
# wrappers, compared with the CPU path. Numba picks the simulator or the driver when it is
# first imported, so each run gets a fresh interpreter.
DEVICE_CHECK = r"""
import numpy as np
from numba import cuda
from ringreduce.training import SGD, Adam

rng = np.random.default_rng(0)
for dtype, rtol in ((np.float32, 1e-5), (np.float64, 1e-12)):
    host = [rng.standard_normal((40, 3)).astype(dtype), rng.standard_normal(3).astype(dtype)]
    grads = [[rng.standard_normal(p.shape).astype(dtype) for p in host] for _ in range(3)]
    for make in (lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
                 lambda ps: SGD(ps, lr=0.1),
                 lambda ps: Adam(ps, lr=0.01, weight_decay=0.01)):
        cpu = [p.copy() for p in host]
        dev = [cuda.to_device(p) for p in host]
        a, b = make(cpu), make(dev)
        assert (a.device, b.device) == ("cpu", "cuda"), (a.device, b.device)
        for g in grads:
            a.step(g)
            b.step([cuda.to_device(x) for x in g], grad_scale=1.0)
        for p, q in zip(cpu, dev):  # updated in place on the device
            np.testing.assert_allclose(q.copy_to_host(), p, rtol=rtol, atol=rtol)
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert isinstance(sb[k], np.ndarray), (k, type(sb[k]))
            np.testing.assert_allclose(sb[k], sa[k], rtol=rtol, atol=rtol)
        c = make([cuda.to_device(p) for p in cpu])
        c.load_state_dict(sa)
        assert all(np.array_equal(v, sa[k]) for k, v in c.state_dict().items())
print("device optimizers ok", flush=True)
"""


def _device_check(simulator):
    if MPI.COMM_WORLD.Get_size() > 1:
        pytest.skip("starts a child interpreter, which must not start MPI under mpiexec")
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return subprocess.run([sys.executable, "-c", DEVICE_CHECK], env=env, capture_output=True,
                          text=True, timeout=280)


def test_optimizers_on_device_arrays_under_the_cuda_simulator():
    done = _device_check(simulator=True)
    assert done.returncode == 0 and "device optimizers ok" in done.stdout, done.stderr[-3000:]


@pytest.mark.gpu
def test_optimizers_on_device_arrays_on_a_gpu():
    probe = subprocess.run([sys.executable, "-c", "import numba.cuda as c, sys; "
                            "sys.exit(0 if c.is_available() else 1)"],
                           env={k: v for k, v in os.environ.items()
                                if k != "NUMBA_ENABLE_CUDASIM"},
                           capture_output=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip("needs a CUDA GPU; the simulator test runs the same check without one")
    done = _device_check(simulator=False)
    assert done.returncode == 0 and "device optimizers ok" in done.stdout, done.stderr[-3000:]
