"""Which implementation serves which CPU reduction, and that the choices keep their promises:
numpy's ufunc (no Numba import) for every full-precision case but integer and complex prod and
complex avg, and the shm fold's fused first step giving the bits of a copy and a reduce."""
import subprocess
import sys

import numpy as np
import pytest

from ringreduce.kernels import cpu, loops
from ringreduce.core.tables import DTYPES

OPS = ("sum", "prod", "min", "max")


def values(rng, n, dtype):
    if dtype.kind in "iu":
        return rng.integers(0 if dtype.kind == "u" else -50, 50, n).astype(dtype)
    x = rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3, n)
    if dtype.kind == "c":
        x = x + 1j * rng.standard_normal(n)
    x = x.astype(dtype)
    if dtype.kind == "f" and n > 3:
        x[1], x[2] = np.nan, -0.0  # a NaN wins min and max; signed zero is kept as it is
    return x


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != np.float16], ids=str)
@pytest.mark.parametrize("op", OPS)
def test_the_table_and_the_fused_first_step(dtype, op):
    if dtype.kind == "c" and op in ("min", "max"):
        return
    kernel = cpu.reduce_kernel(op, dtype)
    numba = op == "prod" and dtype.kind in "iuc"
    assert (kernel is loops.NUMBA[op]) == numba, (op, dtype)
    rng = np.random.default_rng(5)
    for n in (0, 1, 7, 1001):
        a, b = values(rng, n, dtype), values(rng, n, dtype)
        want = a.copy()
        kernel(want, b)
        if not (op == "prod" and dtype.kind == "c"):  # complex multiply: numpy's rounds
            # differently (the reason Numba's serves it); elsewhere the bits are the same.
            other = cpu.reduce_kernel(op, dtype, impl="numpy" if numba else "numba")
            again = a.copy()
            other(again, b)
            assert again.tobytes() == want.tobytes(), (op, dtype, n)
        first = cpu.first_kernel(kernel)
        out = np.empty_like(a)
        first(out, a, b)
        assert out.tobytes() == want.tobytes(), (op, dtype, n)


def test_the_half_kernels_have_no_fused_first_step():
    assert cpu.first_kernel(cpu.reduce_kernel("sum", np.float16)) is None


def test_avg_scaling_of_float_data_is_numpys_and_complex_numbas():
    assert cpu.scale_kernel(np.float32) is cpu._np_scale
    assert cpu.scale_kernel(np.complex64) is loops.nb_scale
    x = np.arange(7, dtype=np.float32) * np.float32(1.1)
    y = x.copy()
    cpu.scale_kernel(np.float32)(x, 3)
    loops.nb_scale(y, 3)
    assert x.tobytes() == y.tobytes()


def test_a_float32_allreduce_does_not_import_numba():
    code = ("import sys, numpy as np, ringreduce as rr\n"
            "x = np.arange(5, dtype=np.float32)\n"
            "rr.allreduce(x); rr.allreduce(x, 'avg'); rr.grouped_allreduce([x, x[:2]])\n"
            "print('numba' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
