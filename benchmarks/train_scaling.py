"""python benchmarks/train_scaling.py --repeats 3 --accuracy --plot scaling.png

Throughput of examples/train_mlp.py at 1 and 2 ranks on a compute-heavy synthetic setting
(256 inputs, two hidden layers of 1024, global batch 2048, float32: 1.3 million parameters,
5 MiB of gradients and 16 GFLOP per step), one BLAS thread per rank. The batch is large
because halving a rank's batch also makes its matmuls less efficient: at batch 1024 one rank
takes 86 ms a step, at 512 it takes 46 ms, not 43 (measured with this script's setting). Prints samples/s, the speed-up
over one rank, and the mean step time split into compute (data, forward, backward; bucket
allreduces start during it when overlap is on), waiting for communication (the part of the
allreduces that compute did not hide) and update (finite check and optimizer step), with
overlap on and off. ``--accuracy`` also trains on the bundled digits at 1, 2 and 4 ranks with
the same hyper-parameters and reports the final test accuracy.

The configurations run interleaved, ``--repeats`` times each, and the best throughput of each
is kept: on a shared machine other processes only ever slow a run down, so the best run is
the least disturbed one (the load average is printed for the record). ``--wait-quiet S``
also waits, before each run, until no other process has been runnable for 3 s. The first step of each
run compiles the Numba optimizer kernels and is not timed.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_mlp.py")
TIMEOUT = 600


def wait_until_quiet(limit_s):
    """Wait (at most ``limit_s``) until no other process is runnable for 3 s in a row.

    The 4th field of /proc/loadavg counts runnable tasks, this reader included, so 1 means
    the cores are free. Linux only; elsewhere it returns at once.
    """
    deadline = time.monotonic() + limit_s
    calm = 0
    while time.monotonic() < deadline:
        try:
            with open("/proc/loadavg") as fh:
                runnable = int(fh.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return
        calm = calm + 1 if runnable <= 1 else 0
        if calm >= 6:
            return
        time.sleep(0.5)


def run(n, args, extra_env=None):
    """Run the example on n ranks; return its metrics dict."""
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "m.json")
        cmd = ["mpiexec", "-n", str(n), sys.executable, SCRIPT, *args, "--no-progress",
               "--metrics-out", metrics]
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", **(extra_env or {}))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise SystemExit(f"{' '.join(cmd)} did not finish in {TIMEOUT} s")
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{out}\n{err}")
        with open(metrics) as fh:
            return json.load(fh)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=12, help="training steps per run")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--bucket-mb", type=float, default=1.0,
                   help="bucket cap; 1 MiB gives 4 buckets of the 5 MiB of gradients, so the "
                        "largest layer's allreduce can overlap the first layer's backward "
                        "(with one bucket there is nothing to overlap)")
    p.add_argument("--accuracy", action="store_true", help="digits accuracy at 1, 2, 4 ranks")
    p.add_argument("--plot", metavar="FILE.png", help="step-time breakdown as stacked bars")
    p.add_argument("--json", metavar="FILE.json", help="all results")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="before each run, wait up to SECONDS for no other runnable process "
                        "(for a shared machine)")
    args = p.parse_args()

    setting = ["--synthetic", "32768", "--features", "256", "--hidden", "1024,1024",
               "--batch-size", "2048", "--dtype", args.dtype, "--epochs", "1",
               "--max-steps", str(args.steps), "--bucket-mb", str(args.bucket_mb)]
    # (ranks, overlap, engine cycle in ms or None for the default)
    configs = [(1, True, None), (2, True, None), (2, False, None), (2, True, 5)]
    print(f"load average before: {os.getloadavg()}; setting: {' '.join(setting)}", flush=True)
    best = {}

    def label(config):
        n, overlap, cycle = config
        return (f"{n} rank(s), overlap {'on' if overlap else 'off'}"
                + (f", cycle {cycle} ms" if cycle else ""))
    for rep in range(args.repeats):
        for config in configs:
            n, overlap, cycle = config
            wait_until_quiet(args.wait_quiet)
            m = run(n, setting + ([] if overlap else ["--no-overlap"]),
                    {"RINGREDUCE_CYCLE_TIME_MS": str(cycle)} if cycle else None)
            print(f"  run {rep + 1}: {label(config)}: {m['samples_per_second']:.0f} samples/s",
                  flush=True)
            if config not in best or m["samples_per_second"] > best[config]["samples_per_second"]:
                best[config] = m
    base = best[configs[0]]["samples_per_second"]
    print()
    print("| ranks | overlap | engine cycle | samples/s | speed-up | compute ms | comm wait ms | "
          "update ms | step ms | buckets |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for config in configs:
        n, overlap, cycle = config
        m = best[config]
        t = {k: 1000 * v for k, v in m["step_time_seconds"].items()}
        engine = "-" if n == 1 or not overlap else f"{cycle or 1} ms"
        print(f"| {n} | {'on' if overlap else 'off'} | {engine} | "
              f"{m['samples_per_second']:.0f} | {m['samples_per_second'] / base:.2f}x | "
              f"{t['compute']:.1f} | {t['comm_wait']:.1f} | {t['update']:.1f} | "
              f"{t['total']:.1f} | {m['num_buckets']} |")

    accuracy = {}
    if args.accuracy:
        print()
        print("| ranks | final test accuracy (digits, 20 epochs, batch 64, lr 0.1 cosine) |")
        print("|---|---|")
        for n in (1, 2, 4):
            wait_until_quiet(args.wait_quiet)
            m = run(n, ["--epochs", "20"])
            accuracy[n] = m["final_test_accuracy"]
            print(f"| {n} | {accuracy[n]:.4f} |", flush=True)
    print(f"load average after: {os.getloadavg()}")

    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"setting": setting, "load_average": os.getloadavg(),
                       "runs": {label(c): best[c] for c in configs},
                       "digits_accuracy": accuracy}, fh, indent=1)
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        labels = [f"{n} rank{'s' if n > 1 else ''}\noverlap {'on' if o else 'off'}"
                  + (f"\ncycle {c} ms" if c else "") for n, o, c in configs]
        fig, ax = plt.subplots(figsize=(7, 4))
        bottom = [0.0] * len(configs)
        for part in ("compute", "comm_wait", "update"):
            heights = [1000 * best[c]["step_time_seconds"][part] for c in configs]
            ax.bar(labels, heights, bottom=bottom, label=part.replace("_", " "))
            bottom = [b + h for b, h in zip(bottom, heights)]
        for i, c in enumerate(configs):
            ax.text(i, bottom[i], f"{best[c]['samples_per_second']:.0f} samples/s",
                    ha="center", va="bottom")
        ax.set(ylabel="ms per step", title=f"train_mlp.py, synthetic, {args.dtype}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)


if __name__ == "__main__":
    main()
