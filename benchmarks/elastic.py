"""python benchmarks/elastic.py --python /path/to/openmpi-venv/bin/python --runs 5
python benchmarks/elastic.py --python ... -- --epochs 3 --no-progress      # the digits MLP

What ringreduce.elastic costs (docs/benchmarks.md, "Elastic"), with Open MPI's ULFM:

- recovery: a 3-rank ``examples/train_mlp.py --elastic`` job in which rank 1 SIGKILLs itself
  before step --kill-step; the time from its kill (the time it prints just before) to the
  first step done again on the 2 survivors, and the part of it spent shrinking and rebuilding
  the world (``state.recoveries``);
- commit: the same job without a kill, the median ``state.commit()`` against the median step,
  and so the share of the step time that a commit every --commit-every steps costs.

Medians over --runs jobs of each kind. The default model is the 1.3 M-parameter MLP of
train_mlp.py's throughput run (256 -> 1024 -> 1024 -> 10, float64, batch 1024).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_MLP = os.path.join(os.path.dirname(HERE), "examples", "train_mlp.py")
MODEL = ["--synthetic", "8192", "--features", "256", "--hidden", "1024,1024",
         "--batch-size", "1024", "--epochs", "4", "--no-progress"]


def job(python, n, args, env, timeout=600):
    mpirun = os.path.join(os.path.dirname(python), "mpirun")
    cmd = [mpirun, "--allow-run-as-root", "--oversubscribe", "--with-ft", "ulfm", "--mca",
           "pml", "ob1", "--mca", "btl", "tcp,self", "-n", str(n), python, TRAIN_MLP,
           "--elastic", *args]
    full = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", OMPI_MCA_osc="^ucx",
                **env)
    out = subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stderr[-3000:]}")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[2])
    p.add_argument("--python", required=True, help="python of the Open MPI environment")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--ranks", type=int, default=3)
    p.add_argument("--kill-step", type=int, default=20)
    p.add_argument("--commit-every", type=int, default=10)
    p.add_argument("model", nargs="*", help="train_mlp.py arguments instead of the default "
                   "(after --)")
    a = p.parse_args()
    model = a.model or MODEL
    rows = {"kill_to_running_s": [], "rebuild_s": [], "commit_s": [], "step_s": []}
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "m.json")
        for _ in range(a.runs):
            out = job(a.python, a.ranks, [*model, "--commit-every", str(a.commit_every),
                                          "--metrics-out", metrics],
                      {"TRAIN_MLP_ELASTIC_KILL": f"{a.kill_step}:1"})
            m = json.load(open(metrics))
            killed = float(re.search(r"ELASTIC_KILL rank 1 step \d+ unix ([\d.]+)",
                                     out.stderr).group(1))
            rows["kill_to_running_s"].append(m["resumed_unix"][0] - killed)
            rows["rebuild_s"].append(m["recoveries"][0]["seconds"])
            job(a.python, a.ranks, [*model, "--commit-every", str(a.commit_every),
                                    "--metrics-out", metrics], {})
            m = json.load(open(metrics))
            rows["commit_s"].append(m["median_commit_seconds"])
            rows["step_s"].append(m["median_step_seconds"])
    rows["commit_share"] = [c / (a.commit_every * t) for c, t in zip(rows["commit_s"],
                                                                       rows["step_s"])]
    med = {k: statistics.median(v) for k, v in rows.items()}
    share = med["commit_share"]  # per run, so a loaded run's slow steps and commits pair up
    print(f"{a.ranks} -> {a.ranks - 1} ranks, {a.runs} runs, model {' '.join(model)}")
    for k, v in rows.items():
        print(f"  {k:18s} median {med[k]:.4f}   runs {', '.join(f'{x:.4f}' for x in v)}")
    print(f"  commit every {a.commit_every} steps: {100 * share:.2f}% of the step time")


if __name__ == "__main__":
    main()
