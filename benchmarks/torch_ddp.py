"""DistributedDataParallel over gloo, DDP over ringreduce, and horovod.torch's
DistributedOptimizer over ringreduce, interleaved in one job.

    mpiexec -n 2 python benchmarks/torch_ddp.py [--rounds 3] [--steps 6] [--models resnet18,mlp]

Models: torchvision's ResNet-18 (10 classes) on synthetic 3x64x64 images, 16 per rank, and
an MLP (784-2048-2048-10, 64 samples per rank), float32, SGD with momentum, one torch thread
per rank. Each round runs every variant in turn, each from scratch: init (the process group,
or ``hvd.init`` and ``broadcast_parameters``), the wrapper (DDP or DistributedOptimizer),
one step; that span is the *start-up*. Then one untimed step and ``--steps`` timed ones: the
*steady state* is the median step time over all rounds (slowest rank). A variant's start-up
is taken from the first round; ``--rotate k`` shifts the order of the variants by k, so three
jobs with k = 0, 1, 2 put each variant first once (torch's own first-use costs, the first
forward pass and DDP's imports, are paid before any timing by an untimed local step).
``compute`` is the same step without any communication: what the others add to it is the
communication they do not hide. ``noop`` is DDP over gloo with a communication hook that
hands every bucket back unreduced: DDP's own cost (its hooks and bucket copies) with no
communication, the floor of any DDP backend. ``--cold VARIANT`` runs one variant's first step alone in a
fresh process and reports it from the script's first line, imports and all: what a user
waits for (run it once per variant, several times).

Prints a table per model with the ratios to gloo; ``--json FILE`` writes the numbers.
gloo meets its peers through a TCP store on 127.0.0.1 (a port rank 0 picks), so this
benchmark runs on one host.
"""
import time

START = time.perf_counter()  # --cold: the script's first line to the end of the first step

import os  # noqa: E402

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402
from mpi4py import MPI  # noqa: E402

COMM = MPI.COMM_WORLD
RANK, P = COMM.Get_rank(), COMM.Get_size()
VARIANTS = ("gloo", "ringreduce", "hvd")
FLOORS = ("compute", "noop")  # run before the variants in every round
LABELS = {"compute": "compute only (no communication)",
          "noop": "DDP, no-op hook (DDP's own cost, no communication)", "gloo": "DDP over gloo",
          "ringreduce": "DDP over ringreduce", "hvd": "hvd.DistributedOptimizer"}


def make_model(name):
    torch.manual_seed(0)
    if name == "resnet18":
        import torchvision
        return torchvision.models.resnet18(num_classes=10), (16, 3, 64, 64)
    return nn.Sequential(nn.Linear(784, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
                         nn.Linear(2048, 10)), (64, 784)


def _noop_hook(state, bucket):
    """DDP's bucket handed back unreduced: the step DDP itself costs, with no communication."""
    fut = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slowest(seconds):
    return COMM.allreduce(seconds, op=MPI.MAX)


def run_variant(variant, model_name, steps):
    """(start-up seconds, [steady step seconds]) of one variant, from scratch."""
    g = torch.Generator().manual_seed(RANK)
    model, shape = make_model(model_name)
    x = torch.randn(shape, generator=g)
    y = torch.randint(0, 10, (shape[0],), generator=g)
    port = COMM.bcast(free_port() if RANK == 0 else None) if variant in ("gloo", "noop") else None
    COMM.Barrier()
    t0 = time.perf_counter()
    if variant in ("ringreduce", "hvd"):
        import ringreduce.torch as hvd  # at the top of a real script; here, for --cold gloo
    if variant in ("gloo", "noop"):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=RANK,
                                world_size=P)
    elif variant == "ringreduce":
        dist.init_process_group("ringreduce")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if variant == "hvd":
        hvd.init()
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(opt, root_rank=0)
        opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
        net = model
    elif variant == "compute":
        net = model
    else:
        net = nn.parallel.DistributedDataParallel(model)
        if variant == "noop":
            net.register_comm_hook(None, _noop_hook)

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    step()
    startup = slowest(time.perf_counter() - t0)
    if steps == 0:  # --cold
        return startup, slowest(time.perf_counter() - START)
    step()
    times = []
    for _ in range(steps):
        COMM.Barrier()
        t = time.perf_counter()
        step()
        times.append(slowest(time.perf_counter() - t))
    if variant in ("gloo", "noop", "ringreduce"):
        dist.destroy_process_group()
    return startup, times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet18,mlp")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant and round")
    ap.add_argument("--rotate", type=int, default=0, help="shift the variants' order by k")
    ap.add_argument("--cold", choices=VARIANTS, metavar="VARIANT",
                    help="only VARIANT's first step in this fresh process: prints the time from "
                         "the script's first line (imports included) and from init")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.cold:
        model_name = args.models.split(",")[0]
        startup, launch = run_variant(args.cold, model_name, 0)
        if RANK == 0:
            print(json.dumps({"cold": args.cold, "model": model_name, "ranks": P,
                              "launch_to_first_step_s": launch, "init_to_first_step_s": startup}),
                  flush=True)
        return
    importlib.import_module("ringreduce.torch")  # as a script does, at the top
    importlib.import_module("torch._dynamo")  # what DDP imports at first use: not timed
    k = args.rotate % len(VARIANTS)
    order = VARIANTS[k:] + VARIANTS[:k]
    results = {}
    for model_name in args.models.split(","):
        # torch's own first-use costs (the first forward and backward), untimed
        run_variant("compute", model_name, 1)
        rows = {v: {"startup": None, "steps": []} for v in FLOORS + order}
        for r in range(args.rounds):
            for v in FLOORS + order:
                startup, times = run_variant(v, model_name, args.steps)
                if r == 0:
                    rows[v]["startup"] = startup
                rows[v]["steps"] += times
        results[model_name] = {v: {"startup_s": row["startup"],
                                   "step_s": statistics.median(row["steps"])}
                               for v, row in rows.items()}
        if RANK == 0:
            report(model_name, results[model_name], order, args)
    if RANK == 0 and args.json:
        with open(args.json, "w") as fh:
            json.dump({"ranks": P, "order": order, "results": results}, fh, indent=1)


def report(model_name, res, order, args):
    gloo = res["gloo"]
    print(f"\n{model_name}, {P} ranks, order {', '.join(order)}, {args.rounds} rounds x "
          f"{args.steps} steps")
    print(f"| variant | steady step (ms) | vs gloo | start-up (s) | vs gloo |")
    print("|---|---|---|---|---|")
    for v in FLOORS + VARIANTS:
        row = res[v]
        print(f"| {LABELS[v]} | {row['step_s'] * 1e3:.1f} | {row['step_s'] / gloo['step_s']:.2f} "
              f"| {row['startup_s']:.2f} | {row['startup_s'] / gloo['startup_s']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
