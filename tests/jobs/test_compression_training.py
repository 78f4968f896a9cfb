"""examples/train_mlp.py with compressed gradients (float32 sent as bf16 or fp16, with and
without error feedback) trains the bundled digits to the same >= 97% test accuracy as
uncompressed float32, at 2 ranks, every rank ending with bitwise-identical parameters."""
import json
import os
import shutil
import sys
import textwrap

import numpy as np
import pytest
from mpi4py import MPI

from _jobs import mpirun, run_job

pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.Get_size() > 1,
                                reason="starts its own mpiexec jobs; run under plain pytest")


@pytest.mark.parametrize("extra", [["--compression", "bf16", "--error-feedback"],
                                   ["--compression", "fp16"]])
def test_compressed_training_reaches_the_accuracy(tmp_path, extra):
    metrics = tmp_path / "m.json"
    params = str(tmp_path / "p_{rank}.npz")
    mpirun(2, ["--epochs", "8", "--dtype", "float32", "--no-progress", "--metrics-out",
               str(metrics), "--save-params", params, *extra])
    with open(metrics) as fh:
        acc = json.load(fh)["final_test_accuracy"]
    assert acc >= 0.97, acc
    ranks = [np.load(params.replace("{rank}", str(r))) for r in range(2)]
    for k in ranks[0].files:
        assert np.array_equal(ranks[0][k], ranks[1][k]), k


def test_compression_needs_float32(tmp_path):
    rc, out, err = mpirun(2, ["--epochs", "1", "--dtype", "float64", "--no-progress",
                              "--compression", "bf16"], expect_ok=False)
    assert rc != 0 and "compression='bf16' takes float32 data, got float64" in out + err


# Rank 0 loads Numba's kernels before its second call (BUY_SECONDS 0); the others keep the
# numpy twins: a job where ranks switch at different calls.
FIRST_CALLS = textwrap.dedent("""
    import sys
    import numpy as np
    import ringreduce as rr
    from mpi4py import MPI
    from ringreduce.kernels import cpu
    comm = MPI.COMM_WORLD
    rank, p = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(rank)
    xs = [rng.standard_normal(n).astype(np.float32) for n in (0, 1, 2, 7, 600_011)]
    exact = []
    for x in xs:
        e = np.empty(x.size)
        comm.Allreduce(x.astype(np.float64), e)
        exact.append(e)
    results, worst = [], 0.0
    for call in range(2):
        if call == 1 and rank == 0:
            cpu.BUY_SECONDS = 0.0
        for x, e in zip(xs, exact):
            for comp, op, ref in (("bf16", "sum", e), ("fp16", "avg", e / p)):
                for alg in ("ring", "rhd"):
                    r = rr.allreduce(x, op=op, compression=comp, algorithm=alg)
                    results.append(r)
                    err = np.max(np.abs(r - ref), initial=0.0)
                    worst = max(worst, err / max(np.max(np.abs(ref), initial=0.0), 1e-30))
        if call == 0:
            loaded = [m for m in ("numba", "ml_dtypes") if m in sys.modules]
    flat = np.concatenate([r.ravel() for r in results])
    same = comm.allreduce(flat.tobytes() == comm.bcast(flat.tobytes()), op=MPI.LAND)
    print(f"rank {rank} loaded {loaded} numba at the end {cpu.HALF.numba is not None} "
          f"same {same} worst {worst:.1e}", flush=True)
""")


@pytest.mark.parametrize("n", [2, 3])
def test_first_compressed_calls_load_nothing_and_agree_when_ranks_switch(n):
    """Compressed calls start on the numpy twins: neither Numba nor ml_dtypes is imported by
    them (what kept a first bf16 call at 1.7 s). A rank that switches to Numba's kernels
    before the others still gets the same bits as every rank, and results are within the
    compression's bound of the float64 sum."""
    mpiexec = shutil.which("mpiexec")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGREDUCE_")}
    rc, out, err = run_job([mpiexec, "-n", str(n), sys.executable, "-c", FIRST_CALLS], env=env)
    assert rc == 0, out + err
    for r in range(n):
        line = next((ln for ln in out.splitlines() if ln.startswith(f"rank {r} ")), out + err)
        assert f"loaded [] numba at the end {r == 0} same True" in line, out
        assert float(line.split()[-1]) < n * 2.0 ** -7, out
