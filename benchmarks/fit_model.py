"""Fit ringreduce.perf.model's parameters to benchmark tables and report how well they predict;
predict the gradient sync of real models at scale from them.

    for p in 2 3 4; do
      mpiexec -n $p python -m ringreduce.perf.bench -b 1K -e 64M -f 4 \\
          -a native ring rhd doubling tree shm --memcpy --json bench$p.json
    done
    python benchmarks/fit_model.py bench2.json bench3.json bench4.json [--markdown FILE]

gamma (time per byte reduced) is measured here, with the library's float32 sum kernel on two
64 MiB arrays, because the timings cannot separate it from beta: the ring and halving-doubling
always send two bytes per byte they reduce. Everything else is fitted per algorithm
(``model.fit``: least squares on relative residuals), first on the tables where every rank has
a core of its own (the parameters kept in ``model.THIS_MACHINE``), whose predictions for more
ranks than cores add ``model.timeshare``, then on all tables at once. Repeated tables of one
rank count are merged cell by cell, keeping the fastest. The report gives, per algorithm and
rank count, the median and the largest relative error, and how much time auto's thresholds
and the fitted model lose against the measured best.

    RINGREDUCE_LOCAL_SIZE=2 mpiexec -n 4 python -m ringreduce.perf.bench -b 1K -e 64M -f 4 \\
        -a hierarchical shm --json local2.json
    python benchmarks/fit_model.py --local-size 2 local2.json

checks the composed two-level models on stand-in nodes of one machine.

    python benchmarks/fit_model.py --scaling [--markdown FILE]

prints the predicted gradient-sync time per step of ResNet-50 (161 float32 tensors,
``shapes.resnet50``) and of the example MLP (256-1024-1024-10) at 8 to 1,024 ranks, 8 per
node, on each network preset, with and without fusion (64 MiB buckets, the library's default,
else one allreduce per tensor) and with and without the two-level algorithms, and the scaling
efficiency that follows for a given compute time per step (no overlap of compute and
communication, so a lower bound).
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ringreduce.perf import model  # noqa: E402
from ringreduce.core.fusion import assign_buckets  # noqa: E402
from ringreduce.kernels.cpu import reduce_kernel  # noqa: E402

FREE = {"shm": ("alpha", "barrier", "copy")}
DEFAULT_FREE = ("alpha", "beta")


def merge(docs):
    """One table per rank count: where several runs timed the same cell, the fastest. On a
    shared machine other processes only ever slow a run down, so the fastest of repeated
    medians is the least disturbed (benchmarks/train_scaling.py does the same)."""
    merged = {}
    for d in docs:
        m = merged.setdefault(d["ranks"], {"ranks": d["ranks"], "rows": {}})
        for row in d["rows"]:
            have = m["rows"].get(row["bytes"])
            if have is None:
                m["rows"][row["bytes"]] = json.loads(json.dumps(row))
                continue
            for spec, res in row["results"].items():
                if spec not in have["results"] or res["time_us"] < have["results"][spec]["time_us"]:
                    have["results"][spec] = res
            if "memcpy_us" in row:
                have["memcpy_us"] = min(have.get("memcpy_us", row["memcpy_us"]), row["memcpy_us"])
    return [{"ranks": m["ranks"], "rows": [m["rows"][b] for b in sorted(m["rows"])]}
            for _, m in sorted(merged.items())]


def measure_gamma(nbytes=64 << 20, repeat=9):
    """Seconds per byte of dst for the float32 sum kernel on arrays far larger than cache."""
    n = nbytes // 4
    dst, src = np.ones(n, np.float32), np.ones(n, np.float32)
    kern = reduce_kernel("sum", np.float32)
    kern(dst, src)
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        kern(dst, src)
        t.append(time.perf_counter() - t0)
    return float(min(t)) / nbytes  # the least disturbed call, as in merge()


def errors(costs, algorithm, points, cores):
    """[(bytes, ranks, measured s, predicted s, relative error)]."""
    out = []
    for n, p, t in points:
        pred = model.predict(algorithm, n, p, {algorithm: costs}, cores=cores)
        out.append((n, p, t, pred, (pred - t) / t))
    return out


def summary(errs, ranks):
    sel = [abs(e[4]) for e in errs if e[1] == ranks]
    if not sel:
        return None
    return float(np.median(sel)), float(max(sel))


FLAT = ("ring", "rhd", "doubling", "tree")
TWO_LEVEL = ("hierarchical", "shm2")
RANKS = (8, 16, 32, 64, 128, 256, 512, 1024)
PER_NODE = 8
FUSION_BYTES = 64 << 20   # RINGREDUCE_FUSION_THRESHOLD's default


def workloads():
    """name -> (tensor sizes in bytes, compute seconds per step, where that time comes from)."""
    from shapes import count, resnet50
    mlp = [(256, 1024), (1024,), (1024, 1024), (1024,), (1024, 10), (10,)]
    return {
        "ResNet-50": ([4 * count([s]) for s in resnet50()], 64 / 367,
                      "batch 64 per GPU at 367 img/s, one V100 in FP32 (NVIDIA "
                      "DeepLearningExamples, PyTorch ResNet-50 v1.5 README)"),
        "MLP": ([4 * count([s]) for s in mlp], MLP_COMPUTE_S, MLP_COMPUTE_SOURCE),
    }


# The MLP's forward, backward and update for a batch of 1024 on one core of the development
# machine: OPENBLAS_NUM_THREADS=1 python examples/train_mlp.py --synthetic 16384 --features
# 256 --hidden 1024,1024 --batch-size 1024 --epochs 1 (benchmarks/train_scaling.py's setting)
# at 1 rank, compute + update per step from --metrics-out, best of three runs (0.206 s).
MLP_COMPUTE_S = 0.206
MLP_COMPUTE_SOURCE = ("batch 1024 per rank, one core of the development machine, "
                      "examples/train_mlp.py")


def sync_time(sizes, p, net, fusion, algorithms):
    """Seconds of gradient sync per step: one allreduce per bucket, each with the fastest of
    ``algorithms`` for its size, one after another."""
    k = min(PER_NODE, p)
    nodes = max(1, p // k)
    if fusion:
        buckets = [sum(sizes[i] for i in b) for b in assign_buckets(sizes, FUSION_BYTES)]
    else:
        buckets = sizes
    return sum(model.best(n, nodes, k, net, algorithms=algorithms)[1] for n in buckets)


def winners(net, p, algorithms):
    """"a < 64K <= b < 2M <= c": the fastest of ``algorithms`` over 1 KiB .. 1 GiB."""
    k = min(PER_NODE, p)
    nodes = max(1, p // k)
    out, last = [], None
    for e in range(10, 31):
        a = model.best(1 << e, nodes, k, net, algorithms=algorithms)[0]
        if a != last:
            out.append(a if last is None else f"{model._fmt_size(1 << e)} <= {a}")
            last = a
    return " < ".join(out)


RING_RULES = {
    "fixed": lambda p: 512 << 10,
    "x p / 4": lambda p: (512 << 10) * max(p, 4) / 4,
    "x sqrt(p / 4)": lambda p: (512 << 10) * math.sqrt(max(p, 4) / 4),
}


def ring_rules():
    """Time lost, by the model, when rhd and the ring are chosen at a threshold of 512 KiB
    (AUTO_RING_BYTES) kept fixed or scaled with p, against the better of the two per size."""
    lines = ["### The rhd-to-ring threshold beyond 4 ranks (8 ranks per node)", "",
             "Time lost against the better of rhd and the ring, mean / worst over 32 KiB .. 1 GiB:",
             "", "| network | ranks | " + " | ".join(f"512 KiB {r}" for r in RING_RULES) + " |",
             "|---|---:|" + "---:|" * len(RING_RULES)]
    for key in ("25gbe", "ib100"):
        net = model.NETWORKS[key]
        for p in (16, 64, 256, 1024):
            cells = []
            for rule in RING_RULES.values():
                lost = []
                for e in range(15, 31):
                    n = 1 << e
                    t_rhd = model.cluster_time("rhd", n, p // PER_NODE, PER_NODE, net)
                    t_ring = model.cluster_time("ring", n, p // PER_NODE, PER_NODE, net)
                    lost.append((t_rhd if n < rule(p) else t_ring) / min(t_rhd, t_ring) - 1)
                cells.append(f"{np.mean(lost):.0%} / {max(lost):.0%}")
            lines.append(f"| {net.name} | {p} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def scaling(markdown=None):
    lines = ring_rules()
    lines += ["### Which algorithm the model picks (message sizes 1 KiB to 1 GiB, 8 ranks per node)", ""]
    lines += ["| network | ranks | flat algorithms only | with the two-level ones |", "|---|---:|---|---|"]
    for key in ("25gbe", "ib100"):
        for p in (16, 64, 256, 1024):
            lines.append(f"| {model.NETWORKS[key].name} | {p} | {winners(model.NETWORKS[key], p, FLAT)} "
                         f"| {winners(model.NETWORKS[key], p, FLAT + TWO_LEVEL)} |")
    lines.append("")
    for name, (sizes, compute, source) in workloads().items():
        lines.append(f"### {name}: {len(sizes)} tensors, {sum(sizes) / 2**20:.1f} MiB of "
                     f"float32 gradients; compute {compute * 1e3:.0f} ms per step ({source})")
        lines.append("")
        for key in ("25gbe", "ib100"):
            net = model.NETWORKS[key]
            lines.append(f"{net.name}: predicted sync time per step in ms (scaling efficiency "
                         f"compute / (compute + sync))")
            lines.append("")
            cols = [("flat, per tensor", False, FLAT), ("flat, fused", True, FLAT),
                    ("two-level, per tensor", False, FLAT + TWO_LEVEL),
                    ("two-level, fused", True, FLAT + TWO_LEVEL)]
            lines.append("| ranks (nodes x 8) | " + " | ".join(c[0] for c in cols) + " |")
            lines.append("|---:|" + "---:|" * len(cols))
            for p in RANKS:
                cells = []
                for _, fusion, algs in cols:
                    t = sync_time(sizes, p, net, fusion, algs)
                    cells.append(f"{t * 1e3:.1f} ({compute / (compute + t):.0%})")
                lines.append(f"| {p} ({max(1, p // PER_NODE)} x {min(PER_NODE, p)}) | "
                             + " | ".join(cells) + " |")
            lines.append("")
    text = "\n".join(lines)
    print(text)
    if markdown:
        with open(markdown, "a") as f:
            f.write(text + "\n")
    return 0


CANDIDATES = ("ring", "rhd", "doubling", "tree", "shm")


def auto_report(docs, fitted, cores):
    """How much slower than the measured best the threshold rule and the fitted model pick,
    per rank count: mean and worst over the sizes."""
    from ringreduce.core.choose import choose_algorithm
    lines = ["auto's pick against the measured best, time lost (mean / worst over the sizes):",
             "", "| ranks | thresholds (choose_algorithm) | fitted model |", "|---:|---:|---:|"]
    for d in docs:
        p = d["ranks"]
        lost = {"thresholds": [], "model": []}
        for row in d["rows"]:
            res = {a: row["results"][a]["time_us"] for a in CANDIDATES if a in row["results"]}
            if len(res) < len(CANDIDATES):
                continue
            n, best = row["bytes"], min(res.values())
            lost["thresholds"].append(res[choose_algorithm(n, p, one_node=True)] / best - 1)
            pick = min(CANDIDATES, key=lambda a: model.predict(a, n, p, fitted, cores=cores))
            lost["model"].append(res[pick] / best - 1)
        if lost["model"]:
            lines.append(f"| {p} | " + " | ".join(
                f"{np.mean(v):.0%} / {max(v):.0%}" for v in lost.values()) + " |")
    return lines


def two_level(docs, local_size, cores, gamma=None):
    """The composed models against tables measured with RINGREDUCE_LOCAL_SIZE=k: stand-in
    nodes on one machine, so the "network" between them is this machine's own shared memory
    (no wire: the fitted costs alone)."""
    same_box = model.Network("one machine", 0.0, 0.0, "the fitted costs alone")
    costs = dict(model.THIS_MACHINE)
    names = {"hierarchical": "hierarchical", "shm": "shm2"}
    lines = [f"Two-level algorithms on stand-in nodes of {local_size} ranks "
             "(RINGREDUCE_LOCAL_SIZE), measured vs ringreduce.perf.model (THIS_MACHINE):", "",
             "| ranks | size | algorithm | measured (us) | predicted (us) | error |",
             "|---:|---:|---|---:|---:|---:|"]
    for d in docs:
        p = d["ranks"]
        nodes, k = p // local_size, local_size
        for row in d["rows"]:
            for spec, name in names.items():
                res = row["results"].get(spec)
                if res is None:
                    continue
                t = res["time_us"]
                pred = model.cluster_time(name, row["bytes"], nodes, k, same_box, costs) \
                    * model.timeshare(p, cores) * 1e6
                lines.append(f"| {p} | {model._fmt_size(row['bytes'])} | {spec} | {t:.0f} | "
                             f"{pred:.0f} | {(pred - t) / t:+.0%} |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tables", nargs="*", help="ringreduce.perf.bench --json outputs")
    ap.add_argument("--scaling", action="store_true",
                    help="predict ResNet-50's and the MLP's gradient sync at scale instead")
    ap.add_argument("--gamma", type=float, help="seconds per byte reduced (default: measure)")
    ap.add_argument("--markdown", help="append the report as markdown to this file")
    ap.add_argument("--json", help="write the fitted parameters and errors here")
    ap.add_argument("--cores", type=int, default=os.cpu_count(),
                    help="cores of the machine the tables come from (default: this one's)")
    ap.add_argument("--local-size", type=int,
                    help="the tables were measured with RINGREDUCE_LOCAL_SIZE=this: check the "
                         "two-level models against them instead of fitting")
    args = ap.parse_args(argv)
    if args.scaling:
        return scaling(args.markdown)
    if args.local_size:
        text = "\n".join(two_level(merge([json.load(open(f)) for f in args.tables]),
                                    args.local_size, args.cores))
        print(text)
        if args.markdown:
            with open(args.markdown, "a") as f:
                f.write(text + "\n")
        return 0
    if not args.tables:
        ap.error("give ringreduce.perf.bench --json outputs to fit, or --scaling")
    docs = merge([json.load(open(f)) for f in args.tables])
    ranks = sorted({d["ranks"] for d in docs})
    gamma = args.gamma if args.gamma is not None else measure_gamma()
    specs = [s for s in docs[0]["rows"][0]["results"] if s in model.COEFFICIENTS]
    memcpy = [(r["bytes"], d["ranks"], r["memcpy_us"] * 1e-6) for d in docs for r in d["rows"]
              if "memcpy_us" in r and r["bytes"] >= 1 << 20]

    cores = args.cores
    # Two fits per algorithm. "own core": only the tables where every rank has a core of its
    # own, the regime the model is for and the parameters THIS_MACHINE keeps; the tables with
    # more ranks than cores are then predicted with model.timeshare. "all": every table at
    # once, time-sharing included, to show how far one set of parameters can stretch.
    own, every, err_own, err_all = {}, {}, {}, {}
    for spec in specs:
        pts = model.points_from_bench(docs, spec)
        free = FREE.get(spec, DEFAULT_FREE)
        base = [pt for pt in pts if pt[1] <= cores] or pts
        own[spec] = model.fit(base, spec, {"gamma": gamma}, free, cores=cores)
        every[spec] = model.fit(pts, spec, {"gamma": gamma}, free, cores=cores)
        err_own[spec] = errors(own[spec], spec, pts, cores)
        err_all[spec] = errors(every[spec], spec, pts, cores)

    lines = [f"gamma (float32 sum kernel, 64 MiB, per byte): {gamma * 1e9:.3f} ns/B "
             f"({1 / gamma / 1e9:.2f} GB/s of dst); {cores} cores"]
    if memcpy:
        n, _, t = max(memcpy)
        lines.append(f"memcpy (bench column, {model._fmt_size(n)}, per byte): "
                     f"{t / n * 1e9:.3f} ns/B")
    lines.append("")
    lines.append("Relative error of the model, median / largest over the sizes, per rank count: "
                 f"fitted on the tables with at most {cores} ranks (one core each), then on "
                 "all tables.")
    lines.append("")
    head = ("| algorithm | fitted at <= %d ranks |" % cores
            + "".join(f" {p} ranks |" for p in ranks)
            + " fitted on all | " + " | ".join(f"{p} ranks" for p in ranks) + " |")
    lines += [head, "|" + "---|" * (3 + 2 * len(ranks))]
    for spec in specs:
        cells = []
        for fits, errs in ((own, err_own), (every, err_all)):
            c = fits[spec]
            cells.append(", ".join(f"{k} {_fmt(k, getattr(c, k))}"
                                   for k in FREE.get(spec, DEFAULT_FREE)))
            for p in ranks:
                sm = summary(errs[spec], p)
                cells.append("-" if sm is None else f"{sm[0]:.0%} / {sm[1]:.0%}")
        lines.append(f"| {spec} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Worst points of the first fit (measured vs predicted):")
    for spec in specs:
        worst = sorted(err_own[spec], key=lambda e: -abs(e[4]))[:3]
        lines.append(f"  {spec}: " + "; ".join(
            f"{model._fmt_size(n)} @{p}: {t * 1e6:.0f} vs {pr * 1e6:.0f} us ({e:+.0%})"
            for n, p, t, pr, e in worst))
    lines.append("")
    lines += auto_report(docs, own, cores)
    lines.append("")
    lines.append("THIS_MACHINE = {")
    for spec in specs:
        fields = ", ".join(f"{k}={v:.3g}" for k, v in vars(own[spec]).items() if v)
        lines.append(f'    "{spec}": Costs({fields}),')
    lines.append("}")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gamma": gamma, "ranks": ranks, "cores": cores,
                       "fitted": {s: vars(c) for s, c in own.items()},
                       "fitted_all": {s: vars(c) for s, c in every.items()},
                       "errors": err_own, "errors_all": err_all}, f, indent=1)
    return 0


def _fmt(k, v):
    if k in ("alpha", "barrier"):
        return f"{v * 1e6:.1f} us"
    return f"{v * 1e9:.3f} ns/B"


if __name__ == "__main__":
    sys.exit(main())
