"""python benchmarks/compare_modes.py --ranks 2 4 --repeats 2 --markdown modes.md

Trains the same model three ways with examples/train_mlp.py and compares them per rank count:

  dp        data parallel, gradients summed by the library's ring allreduce (--algorithm ring)
  ps        parameter server: the last S ranks own the parameters (S = 1, and S = p / 2 at 4
            ranks and more), the other ranks compute gradients
  pipeline  the layers split across the ranks, GPipe micro-batches (--micro-batches)

For each: samples/s (the rank-0 timer over every step but the first, which compiles the Numba
kernels), the bytes each rank hands to MPI per step, measured, next to the formula (ring:
2 n (p-1)/p sent per rank for n bytes of gradients; parameter server: a worker sends n and
receives n, "2n through the server", a server sends W n / S; pipeline: the activations
crossing a stage's boundaries), and the time a rank spends waiting for communication per step.
A one-rank run gives the speed-up baseline.

How the bytes are measured: ps and pipeline count what their code hands to MPI
(``ringreduce.modes.common.CountingComm``); for dp this script runs the example inside a wrapper
(``--count-dp``) that counts every buffer passed to the library's transport
(``ringreduce.transport.comm.Comm``: the allreduce's data and its 24-byte header exchanges, but not the
engine's small negotiation messages) between the ends of consecutive ``GradSync.wait`` calls,
i.e. per training step.

With ``ringreduce.perf.model`` present, the alpha-beta cost model also predicts samples/s at larger
rank counts on a cluster network (one rank per node, a fixed batch per rank) for the ring and
for a parameter server with 1 and p / 2 servers, from this machine's measured compute time per
sample. Configurations run interleaved, ``--repeats`` times each; the fastest run of each is
kept (on a shared machine other jobs only slow a run down).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_mlp.py")
TIMEOUT = 600


# ---------------------------------------------------------------------------------------------
# Inside mpiexec: data parallel with byte counters (python compare_modes.py --count-dp OUT ...)
# ---------------------------------------------------------------------------------------------

def count_dp(out_path, train_args):
    """Run train_mlp.main(train_args) on this rank, counting the bytes that the library's
    transport is handed in each training step; rank 0 writes every rank's counts to out_path."""
    from mpi4py import MPI

    import ringreduce.transport.comm as transport
    from ringreduce import training

    counts = {"sent": 0, "received": 0}

    def nbytes(buf):
        return buf.nbytes if hasattr(buf, "nbytes") else memoryview(buf).nbytes

    def counting(name, sent, received):
        original = getattr(transport.Comm, name)

        def method(self, *args):
            for i in sent:
                counts["sent"] += nbytes(args[i])
            for i in received:
                counts["received"] += nbytes(args[i])
            return original(self, *args)
        setattr(transport.Comm, name, method)

    # PoliteComm (the engine's) overrides send, recv and sendrecv with isend and irecv, so
    # counting these five methods of Comm counts every buffer exactly once.
    counting("isend", (0,), ())
    counting("send", (0,), ())
    counting("irecv", (), (0,))
    counting("recv", (), (0,))
    counting("sendrecv", (0,), (2,))

    steps = []  # after each GradSync.wait: (bytes sent, bytes received, seconds blocked)
    original_wait = training.GradSync.wait

    def wait(self):
        finite = original_wait(self)
        steps.append((counts["sent"], counts["received"], self.last_wait_seconds))
        return finite
    training.GradSync.wait = wait

    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import train_mlp
    train_mlp.main(train_args)

    # Step 0 also carries the set-up's first messages and is not timed by the example either.
    a = np.array(steps, dtype=np.float64)
    timed = len(a) - 1
    mine = {"bytes_sent_per_step": (a[-1, 0] - a[0, 0]) / timed if timed else None,
            "bytes_received_per_step": (a[-1, 1] - a[0, 1]) / timed if timed else None,
            "wait_seconds_per_step": float(a[1:, 2].mean()) if timed else None}
    comm = MPI.COMM_WORLD
    mine["role"] = f"rank {comm.Get_rank()}"
    everyone = comm.gather(mine, root=0)
    if comm.Get_rank() == 0:
        with open(out_path, "w") as fh:
            json.dump(everyone, fh)


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------

def launch(n, argv):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = ["mpiexec", "-n", str(n), sys.executable, *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and every rank it started
        proc.communicate()
        raise SystemExit(f"{' '.join(cmd)} did not finish in {TIMEOUT} s")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{out}\n{err}")


def run(n, mode, setting, extra=()):
    """One training job; returns its metrics, with ``per_rank`` counters for every mode."""
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "m.json")
        args = [*setting, "--no-progress", "--metrics-out", metrics, "--mode", mode, *extra]
        if mode == "dp":
            counts = os.path.join(tmp, "counts.json")
            launch(n, [os.path.abspath(__file__), "--count-dp", counts, "--", *args])
        else:
            launch(n, [SCRIPT, *args])
        with open(metrics) as fh:
            m = json.load(fh)
        if mode == "dp":
            with open(counts) as fh:
                m["per_rank"] = json.load(fh)
        return m


def formula(mode, m, n_bytes, p):
    """Bytes sent per step by each rank according to the textbook formula."""
    if mode == "dp":
        return [2 * n_bytes * (p - 1) / p] * p
    return m["formula_bytes_sent_per_step"]  # ps and pipeline compute theirs from the run


def fmt_bytes(b):
    if b is None:
        return "-"
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if b >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{b:.0f} B"


def role_groups(m):
    """[(label, [rank indices])]: ranks with the same role kind grouped (workers, servers,
    stages are listed one by one since their traffic differs)."""
    roles = [r["role"] for r in m["per_rank"]]
    if m.get("mode") == "ps":
        workers = [i for i, r in enumerate(roles) if r.startswith("worker")]
        servers = [i for i, r in enumerate(roles) if r.startswith("server")]
        return [("worker", workers), ("server", servers)]
    if m.get("mode") == "pipeline":
        return [(f"stage {i}", [i]) for i in range(len(roles))]
    return [("each rank", list(range(len(roles))))]


def table_rows(results, base, n_bytes):
    rows = []
    for (p, mode, label), m in results.items():
        f = formula(mode, m, n_bytes, p)
        sent, wait = [], []
        for name, ranks in role_groups(m):
            measured = max(m["per_rank"][r]["bytes_sent_per_step"] for r in ranks)
            expected = max(f[r] for r in ranks)
            sent.append(f"{name}: {fmt_bytes(measured)} ({fmt_bytes(expected)})")
            w = np.mean([m["per_rank"][r]["wait_seconds_per_step"] for r in ranks])
            wait.append(f"{name}: {1000 * w:.1f}")
        step_ms = 1000 * m["step_time_seconds"]["total"]
        rows.append(f"| {p} | {label} | {m['samples_per_second']:.0f} | "
                    f"{m['samples_per_second'] / base:.2f}x | {step_ms:.1f} | "
                    f"{'; '.join(sent)} | {'; '.join(wait)} |")
    return rows


def prediction(per_sample_seconds, n_bytes, batch_per_rank, ranks, networks):
    """Lines of a markdown table: predicted samples/s from ringreduce.perf.model, or a note."""
    try:
        from ringreduce.perf import model
    except ImportError:
        return ["(ringreduce.perf.model is not available: no prediction for larger rank counts)"]
    lines = ["| network | ranks | dp ring | ps, 1 server | ps, p/2 servers |",
             "|---|---|---|---|---|"]
    for key in networks:
        net = model.NETWORKS[key]
        for p in ranks:
            compute = batch_per_rank * per_sample_seconds
            ring = model.cluster_time("ring", n_bytes, p, 1, net)

            def ps_time(servers):
                # Push, then pull: in each, a server handles its W messages of n / S bytes one
                # after another, and a worker its S messages of n bytes in all; the busier of
                # the two sets the pace. A message between nodes costs what the model charges
                # the ring's (its _across rule: the library's alpha plus the network's, the
                # slower of the two betas).
                workers = p - servers
                cost = model._across(model.THIS_MACHINE["ring"], net)
                server = workers * (cost.alpha + n_bytes / servers * cost.beta)
                worker = servers * cost.alpha + n_bytes * cost.beta
                return 2 * max(server, worker)

            cells = [batch_per_rank * p / (compute + ring)]
            for servers in (1, p // 2):
                cells.append(batch_per_rank * (p - servers) / (compute + ps_time(servers)))
            lines.append(f"| {net.name} | {p} | " + " | ".join(f"{c:,.0f}" for c in cells) + " |")
    return lines


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--count-dp"]:
        if len(argv) < 3 or argv[2] != "--":
            raise SystemExit("usage: compare_modes.py --count-dp OUT.json -- TRAIN_ARGS")
        return count_dp(argv[1], argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12, help="training steps per run")
    ap.add_argument("--hidden", default="512,512,512",
                    help="hidden layers; the pipeline needs as many layers as ranks")
    ap.add_argument("--features", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--micro-batches", type=int, default=8)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--markdown", metavar="FILE", help="write the tables here")
    ap.add_argument("--json", metavar="FILE", help="every run's metrics")
    ap.add_argument("--predict-ranks", type=int, nargs="+", default=[8, 64, 512])
    ap.add_argument("--networks", nargs="+", default=["25gbe", "ib100"])
    args = ap.parse_args(argv)

    # One epoch longer than --steps, so no run stops at an epoch end to evaluate mid-way.
    samples = args.batch_size * (args.steps + 1)
    setting = ["--synthetic", str(samples), "--features", str(args.features), "--hidden",
               args.hidden, "--batch-size", str(args.batch_size), "--dtype", args.dtype,
               "--epochs", "1", "--max-steps", str(args.steps), "--schedule", "constant",
               "--lr", "0.01"]
    hidden = [int(h) for h in args.hidden.split(",")]
    sizes = [args.features, *hidden, 10]
    itemsize = np.dtype(args.dtype).itemsize
    n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    n_bytes = n_params * itemsize

    configs = [(1, "dp", "dp (1 rank)", [])]
    for p in args.ranks:
        configs.append((p, "dp", "dp, ring allreduce", ["--algorithm", "ring"]))
        configs.append((p, "ps", "ps, 1 server", ["--servers", "1"]))
        if p >= 4:
            configs.append((p, "ps", f"ps, {p // 2} servers", ["--servers", str(p // 2)]))
        if p <= len(sizes) - 1:
            configs.append((p, "pipeline", f"pipeline, {args.micro_batches} micro-batches",
                            ["--micro-batches", str(args.micro_batches)]))
    print(f"load average before: {os.getloadavg()}; model {sizes} {args.dtype} "
          f"({n_params} parameters, {fmt_bytes(n_bytes)}), global batch {args.batch_size}",
          flush=True)
    best = {}
    for rep in range(args.repeats):
        for p, mode, label, extra in configs:
            m = run(p, mode, setting, extra)
            print(f"  run {rep + 1}: {p} rank(s), {label}: {m['samples_per_second']:.0f} "
                  f"samples/s", flush=True)
            key = (p, mode, label)
            if key not in best or m["samples_per_second"] > best[key]["samples_per_second"]:
                best[key] = m
    load_after = os.getloadavg()
    base = best[(1, "dp", "dp (1 rank)")]["samples_per_second"]

    lines = [f"Model {sizes} ({n_params} parameters, n = {fmt_bytes(n_bytes)} of {args.dtype} "
             f"gradients), global batch {args.batch_size}, {args.steps} steps, best of "
             f"{args.repeats}; load average {load_after[0]:.1f} after the runs.", "",
             "| ranks | mode | samples/s | vs 1 rank | step ms | bytes sent per step, measured "
             "(formula) | waiting ms per step |",
             "|---|---|---|---|---|---|---|"]
    lines += table_rows(best, base, n_bytes)
    per_sample = 1.0 / base  # one rank's seconds per sample, communication-free
    lines += ["", f"Predicted by ringreduce.perf.model (one rank per node, {args.batch_size // 4} "
              f"samples per rank and step, this machine's {1e6 * per_sample:.0f} us of compute "
              f"per sample), samples/s:", ""]
    lines += prediction(per_sample, n_bytes, args.batch_size // 4, args.predict_ranks,
                        args.networks)
    text = "\n".join(lines)
    print()
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"setting": setting, "load_average_after": load_after,
                       "runs": {f"{p} {label}": m for (p, _, label), m in best.items()}},
                      fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
