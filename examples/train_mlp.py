"""mpiexec -n 2 python examples/train_mlp.py --epochs 20

Data-parallel training of a small MLP with ringreduce: every rank holds the whole model,
takes its slice of each global batch, and the gradients are summed with bucketed, overlapped
asynchronous allreduces before an identical optimizer step on every rank.

Data (no download needed):
  default            the 8x8 digits bundled with ringreduce (1797 images; 360 held out)
  --synthetic N      N training samples (plus N/4 test) labelled by a fixed random teacher
                     network: a larger, compute-heavy set for throughput
  --data FILE.npz    your arrays: x_train, y_train, x_test, y_test, or x, y (20% held out);
                     x of any shape per sample (flattened), y integer classes 0..C-1

Other runs:
  python examples/train_mlp.py --epochs 2                          # one rank, no mpiexec
  mpiexec -n 2 python examples/train_mlp.py --synthetic 32768 --features 256 \\
      --hidden 1024,1024 --batch-size 1024 --epochs 1 --metrics-out m.json
  mpiexec -n 2 python examples/train_mlp.py --checkpoint-dir ckpt --max-steps 100
  mpiexec -n 2 python examples/train_mlp.py --checkpoint-dir ckpt --resume   # goes on
  ringreduce-run --max-restarts 2 -np 2 python examples/train_mlp.py --checkpoint-dir ckpt \\
      --checkpoint-every 20 --resume auto      # a failed job starts again from its checkpoint
  mpiexec -n 3 python examples/train_mlp.py --mode ps --servers 1    # 2 workers, 1 server
  mpiexec -n 3 python examples/train_mlp.py --mode ps --staleness 2  # asynchronous, SSP
  mpiexec -n 3 python examples/train_mlp.py --mode pipeline --hidden 128,64 --micro-batches 4
  mpirun --with-ft ulfm --mca pml ob1 --mca btl tcp,self -n 3 \\
      python examples/train_mlp.py --elastic   # Open MPI: goes on when a rank dies

--mode ps (ringreduce/modes/ps.py): the last --servers ranks own shards of the parameters and run the
optimizer; the other ranks compute gradients, push them and pull the parameters every step.
--mode pipeline (ringreduce/modes/pipeline.py): each rank holds a contiguous run of layers, and the
micro-batches of each batch flow through them (GPipe). Both train the same model with the same
data, optimizer and schedule as data parallel, and reach the parameters one rank would.
--mode ps --staleness K (K >= 1) is the exception: a server applies each worker's gradient as
it arrives, and a worker may compute with parameters up to K steps behind the slowest worker's
(Stale Synchronous Parallel), so workers wait less but the run no longer equals one rank.
docs/architectures.md compares them.

--batch-size is the global batch: N ranks with batch B train exactly as one rank with batch B
(up to the order of floating-point additions), so hyper-parameters do not change with the rank
count. All randomness is a pure function of --seed, the epoch and the step (weights from the
seed, each epoch's shuffle from (seed, epoch)), so a checkpoint holds no generator state and a
resumed run is bitwise identical to an uninterrupted one.
"""
import os

# One BLAS thread per rank: N ranks on N cores, each doing its own matmuls. Must be set before
# numpy loads its BLAS; an explicit setting in the environment wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

import ringreduce as rr  # noqa: E402
from ringreduce.modes.common import (MemoryBudgetError, check_memory_budget,  # noqa: E402
                                     memory_bytes)
from ringreduce.modes.pipeline import train_pipeline  # noqa: E402
from ringreduce.modes.ps import train_ps  # noqa: E402
from ringreduce.training import (SGD, Adam, CheckpointError, DistributedSampler,  # noqa: E402
                                 GradSync, NonFiniteGradientError, broadcast_parameters,
                                 load_checkpoint, save_checkpoint)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mlp import MLP, evaluate_shard, softmax_cross_entropy  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data", metavar="FILE.npz", help="your own arrays (see above)")
    d.add_argument("--synthetic", type=int, metavar="N", help="N synthetic training samples")
    d.add_argument("--features", type=int, default=128, help="inputs per synthetic sample")
    d.add_argument("--classes", type=int, default=10, help="classes of the synthetic set")
    m = p.add_argument_group("model and optimizer")
    m.add_argument("--hidden", default="128", help="hidden layer sizes, comma-separated")
    m.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    m.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    m.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    m.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="cosine: lr decays to 0 over --epochs (a function of the step alone)")
    m.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    m.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    m.add_argument("--weight-decay", type=float, default=0.0)
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--batch-size", type=int, default=64, help="global batch, all ranks together")
    t.add_argument("--drop-last", action="store_true",
                   help="skip an epoch's last, smaller batch instead of training on it")
    t.add_argument("--grad-accum", type=int, default=1, metavar="K",
                   help="split each rank's slice into K micro-batches, syncing only the last")
    t.add_argument("--max-steps", type=int, default=0, help="stop after this many steps in all")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--nonfinite", choices=("skip", "error"), default="skip",
                   help="on NaN/Inf in the reduced gradient: skip the step with a warning, or "
                        "stop with an error (every rank decides the same)")
    c = p.add_argument_group("communication")
    c.add_argument("--bucket-mb", type=float, default=25.0, help="gradient bucket cap, MiB")
    c.add_argument("--no-overlap", action="store_true",
                   help="start every bucket's allreduce after backward instead of during it")
    c.add_argument("--algorithm", default="auto", help="allreduce algorithm")
    c.add_argument("--compression", choices=("bf16", "fp16"),
                   help="send float32 gradients as 16-bit values (needs --dtype float32)")
    c.add_argument("--error-feedback", action="store_true",
                   help="with --compression: carry each step's rounding into the next")
    o = p.add_argument_group("output")
    o.add_argument("--metrics-out", metavar="FILE.json")
    o.add_argument("--save-params", metavar="FILE.npz",
                   help="final parameters (rank 0; a '{rank}' in the name saves every rank's)")
    o.add_argument("--checkpoint-dir", metavar="DIR", help="write DIR/ckpt.npz")
    o.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also checkpoint every STEPS steps (always: each epoch end, the stop)")
    o.add_argument("--resume", nargs="?", const=True, metavar="auto",
                   help="go on from DIR/ckpt.npz; '--resume auto': from it if it exists (else "
                        "from the start), also at another rank count (for ringreduce-run "
                        "--max-restarts)")
    o.add_argument("--plot", metavar="FILE.png", help="loss and accuracy curves (matplotlib)")
    o.add_argument("--no-progress", action="store_true", help="print nothing on rank 0 either")
    a = p.add_argument_group("architecture (docs/architectures.md)")
    a.add_argument("--mode", choices=("dp", "ps", "pipeline"), default="dp",
                   help="dp: data parallel with allreduce; ps: parameter server; pipeline: "
                        "the layers split across ranks (default dp)")
    a.add_argument("--servers", type=int, default=1, metavar="S",
                   help="--mode ps: how many ranks (the last ones) serve the parameters")
    a.add_argument("--staleness", type=int, default=0, metavar="K",
                   help="--mode ps: 0 (default) is synchronous, equal to one rank; K >= 1 is "
                        "asynchronous: servers apply each worker's gradient as it arrives, "
                        "and a worker computes step c only once every worker has pushed "
                        "step c - K - 1 (staleness at most K steps; the metrics report it)")
    a.add_argument("--micro-batches", type=int, default=4, metavar="M",
                   help="--mode pipeline: micro-batches per global batch")
    a.add_argument("--memory-budget-mb", type=float, metavar="MIB",
                   help="refuse to start when a rank's parameters, gradients, optimizer state "
                        "and activations would exceed MIB (an estimate, made before allocating)")
    e = p.add_argument_group("elastic (examples/elastic_mlp.py; Open MPI with ULFM)")
    e.add_argument("--elastic", action="store_true",
                   help="data parallel that goes on with the surviving ranks when one dies "
                        "(ringreduce.elastic), its state committed in memory")
    e.add_argument("--commit-every", type=int, default=10, metavar="STEPS",
                   help="--elastic: commit the state every STEPS steps (and at epoch ends)")
    x = p.add_argument_group("checks (used by the tests)")
    x.add_argument("--check-sync", action="store_true",
                   help="after every step, check that every rank holds identical parameters "
                        "(and list their digests in the metrics)")
    x.add_argument("--inject-nonfinite", metavar="STEP:RANK[:nan|inf]",
                   help="poison one rank's gradient at one (0-based) step")
    args = p.parse_args(argv)

    def bad(msg):
        p.error(msg)  # exits with status 2, the same on every rank
    if args.data and args.synthetic:
        bad("--data and --synthetic exclude each other")
    if args.resume not in (None, True, "auto"):
        bad(f"--resume takes nothing or 'auto', got {args.resume!r}")
    if args.resume and not args.checkpoint_dir:
        bad("--resume needs --checkpoint-dir")
    # Test-only: TRAIN_MLP_DIE_AT=STEP:RANK makes that rank SIGKILL itself before that
    # (0-based) step, in the first start of a job only (RINGREDUCE_RESTART_COUNT unset or 0, as
    # ringreduce-run sets it), so that a restarted job goes past it. For the restart tests.
    args.die_at = None
    if os.environ.get("TRAIN_MLP_DIE_AT") and os.environ.get("RINGREDUCE_RESTART_COUNT",
                                                             "0") == "0":
        try:
            args.die_at = tuple(int(v) for v in os.environ["TRAIN_MLP_DIE_AT"].split(":"))
        except ValueError:
            args.die_at = ()
        if len(args.die_at) != 2:
            bad(f"TRAIN_MLP_DIE_AT takes STEP:RANK, got {os.environ['TRAIN_MLP_DIE_AT']!r}")
    for name in ("epochs", "batch_size", "grad_accum"):
        if getattr(args, name) < 1:
            bad(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_steps < 0 or args.checkpoint_every < 0:
        bad("--max-steps and --checkpoint-every must be >= 0")
    try:
        args.hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    except ValueError:
        bad(f"--hidden takes comma-separated integers, got {args.hidden!r}")
    args.inject = None
    if args.inject_nonfinite:
        parts = args.inject_nonfinite.split(":")
        try:
            args.inject = (int(parts[0]), int(parts[1]),
                           {"nan": np.nan, "inf": np.inf}[parts[2] if len(parts) > 2 else "nan"])
        except (IndexError, ValueError, KeyError):
            bad(f"--inject-nonfinite takes STEP:RANK[:nan|inf], got {args.inject_nonfinite!r}")
    if args.servers < 1 or args.micro_batches < 1:
        bad(f"--servers and --micro-batches must be >= 1, got {args.servers} and "
            f"{args.micro_batches}")
    if args.staleness < 0:
        bad(f"--staleness must be >= 0 (0: synchronous), got {args.staleness}")
    if args.staleness and args.mode != "ps":
        bad(f"--staleness is for --mode ps only, got --mode {args.mode}")
    if args.memory_budget_mb is not None and args.memory_budget_mb <= 0:
        bad(f"--memory-budget-mb must be > 0, got {args.memory_budget_mb}")
    if args.mode != "dp":
        dp_only = [flag for flag, given in (
            ("--checkpoint-dir", args.checkpoint_dir), ("--resume", args.resume),
            ("TRAIN_MLP_DIE_AT", args.die_at),
            ("--check-sync", args.check_sync), ("--inject-nonfinite", args.inject_nonfinite),
            ("--grad-accum", args.grad_accum > 1), ("--plot", args.plot),
            ("a '{rank}' in --save-params", "{rank}" in (args.save_params or ""))) if given]
        if dp_only:
            bad(f"--mode {args.mode} does not take {', '.join(dp_only)} (data parallel only)")
    if args.plot:
        try:
            import matplotlib  # noqa: F401 - only checked here, used at the end
        except ImportError:
            bad("--plot needs matplotlib (pip install matplotlib, or ringreduce[train])")
    return args


def load_data(args):
    """(x_train, y_train, x_test, y_test, name), x as float arrays, y as int64."""
    if args.synthetic:
        n, n_test, f, classes = args.synthetic, max(args.synthetic // 4, 1), args.features, args.classes
        if n < 1 or f < 1 or classes < 2:
            raise ValueError(f"--synthetic needs N >= 1, --features >= 1, --classes >= 2; got "
                             f"N={n}, features={f}, classes={classes}")
        # A fixed function of the set's size, not of --seed: runs with different seeds train on
        # the same data. Labels come from a random ReLU teacher, so the task is learnable but
        # not linearly separable.
        rng = np.random.default_rng([7, n, f, classes])
        x = rng.standard_normal((n + n_test, f))
        w1 = rng.standard_normal((f, 64)) / np.sqrt(f)
        w2 = rng.standard_normal((64, classes))
        y = np.argmax(np.maximum(x @ w1, 0) @ w2, axis=1)
        return x[:n], y[:n], x[n:], y[n:], f"synthetic({n}x{f}, {classes} classes)"
    if args.data:
        path = args.data
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"--data {path}: cannot read it as an .npz of arrays: {e}") from e
        name = os.path.basename(path)
    else:
        from importlib import resources
        with resources.files("ringreduce").joinpath("data/digits.npz").open("rb") as fh:
            with np.load(fh, allow_pickle=False) as z:
                # Pixels count 0..16 set bits; scaling to [0, 1] keeps the first layer's
                # pre-activations near unit size with He-initialised weights.
                arrays = {"x": z["images"].reshape(len(z["images"]), -1) / 16.0,
                          "y": z["labels"]}
        path, name = "digits", "digits(8x8)"
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        xtr, ytr, xte, yte = (arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    elif {"x", "y"} <= arrays.keys():
        # A fixed split (seed 0), whatever --seed is, so the test set never changes.
        order = np.random.default_rng(0).permutation(len(arrays["x"]))
        n_test = max(len(order) // 5, 1)
        xtr, ytr = arrays["x"][order[n_test:]], arrays["y"][order[n_test:]]
        xte, yte = arrays["x"][order[:n_test]], arrays["y"][order[:n_test]]
    else:
        raise ValueError(f"--data {path}: expected arrays x_train, y_train, x_test, y_test or "
                         f"x, y; found {sorted(arrays)}")
    for xs, ys, what in ((xtr, ytr, "train"), (xte, yte, "test")):
        if len(xs) != len(ys) or len(xs) == 0 or ys.ndim != 1:
            raise ValueError(f"--data {path}: {what} set needs as many labels as samples, at "
                             f"least one, labels 1-D; got x {xs.shape}, y {ys.shape}")
        if not np.issubdtype(ys.dtype, np.integer) or ys.min() < 0:
            raise ValueError(f"--data {path}: {what} labels must be integers >= 0, got "
                             f"{ys.dtype} with minimum {ys.min()}")
    xtr, xte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"--data {path}: train samples have {xtr.shape[1]} values, test "
                         f"samples {xte.shape[1]}")
    return xtr, ytr.astype(np.int64), xte, yte.astype(np.int64), name


def optimizer_state_slots(args):
    """Values of optimizer state per parameter (for the memory estimate)."""
    return 2 if args.optimizer == "adam" else (1 if args.momentum > 0 else 0)


def train_ps_or_pipeline(args, sizes, dtype, x_train, y_train, x_test, y_test, data_name):
    """--mode ps / pipeline: the data-parallel run's model, data, optimizer and schedule,
    trained by ringreduce.modes.ps or ringreduce.modes.pipeline; the same outputs."""
    rank, world = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    master = rank == 0  # a worker (ps) or the first stage (pipeline): it ends with the model
    # The global batches, as one rank sees them; the modules split them among their ranks.
    sampler = DistributedSampler(len(x_train), args.batch_size, rank=0, size=1, seed=args.seed,
                                 drop_last=args.drop_last)
    steps_per_epoch = len(sampler)
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)

    def lr_at(step):  # the data-parallel loop's schedule (main's lr_at)
        if args.schedule == "constant":
            return args.lr
        return args.lr * 0.5 * (1.0 + np.cos(np.pi * step / (steps_per_epoch * args.epochs)))

    def make_optimizer(params):
        if args.optimizer == "sgd":
            return SGD(params, lr=args.lr, momentum=args.momentum,
                       weight_decay=args.weight_decay, nesterov=args.nesterov)
        return Adam(params, lr=args.lr, weight_decay=args.weight_decay)

    common = dict(sampler=sampler, total_steps=total_steps, make_optimizer=make_optimizer,
                  lr_at=lr_at, dtype=dtype, state_slots=optimizer_state_slots(args),
                  memory_budget_bytes=(args.memory_budget_mb * 2**20
                                       if args.memory_budget_mb is not None else None))
    if master and not args.no_progress:
        how = (f"{args.servers} server(s), {world - args.servers} worker(s), "
               + (f"staleness <= {args.staleness}" if args.staleness else "synchronous")
               if args.mode == "ps" else f"{args.micro_batches} micro-batches")
        print(f"{data_name}: {len(x_train)} train / {len(x_test)} test, model {sizes} {dtype}, "
              f"--mode {args.mode} on {world} rank(s): {how}, global batch {args.batch_size}, "
              f"{total_steps} steps", flush=True)
    try:
        if args.mode == "ps":
            metrics, params = train_ps(sizes, lambda: MLP(sizes, dtype=dtype, seed=args.seed),
                                       softmax_cross_entropy, x_train, y_train, x_test, y_test,
                                       servers=args.servers, staleness=args.staleness, **common)
        else:
            metrics, params = train_pipeline(sizes, softmax_cross_entropy, x_train, y_train,
                                             x_test, y_test, micro_batches=args.micro_batches,
                                             seed=args.seed,
                                             gather_params=bool(args.save_params), **common)
    except NonFiniteGradientError as exc:
        # Unlike data parallel, only the ranks that update (a server, a stage) see the bad
        # gradient; the others would wait for them forever, so the whole job must end: a
        # RuntimeError aborts every rank (below, at the end of the file).
        raise RuntimeError(str(exc)) from exc
    if not master:
        return 0
    if args.save_params:
        out = {f"param.{i}": p for i, p in enumerate(params)}
        out["sizes"] = np.array(sizes)
        save_checkpoint(args.save_params, out)
    if args.metrics_out:
        metrics.update(data=data_name, model=sizes, dtype=str(dtype), optimizer=args.optimizer,
                       lr=args.lr, global_batch_size=args.batch_size, epochs=args.epochs,
                       steps_per_epoch=steps_per_epoch)
        with open(args.metrics_out, "w") as fh:
            json.dump(metrics, fh, indent=1)
    if not args.no_progress:
        print(f"final test accuracy {metrics['final_test_accuracy']:.4f} after "
              f"{metrics['steps']} steps, {metrics['wall_seconds']:.1f} s", flush=True)
    return 0


def main(argv=None):
    args = parse_args(argv)
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    master = rank == 0  # this process does logging, metrics, checkpoints and plots
    dtype = np.dtype(args.dtype)

    x_train, y_train, x_test, y_test, data_name = load_data(args)
    x_train, x_test = x_train.astype(dtype), x_test.astype(dtype)
    classes = int(max(y_train.max(), y_test.max())) + 1
    sizes = [x_train.shape[1], *args.hidden, classes]
    if args.elastic:
        from elastic_mlp import train_elastic
        return train_elastic(args, sizes, dtype, x_train, y_train, x_test, y_test, data_name)
    if args.mode != "dp":
        return train_ps_or_pipeline(args, sizes, dtype, x_train, y_train, x_test, y_test,
                                    data_name)
    if args.memory_budget_mb is not None:  # every rank holds the whole model
        check_memory_budget(
            {"each rank": memory_bytes(sizes, range(len(sizes) - 1), -(-args.batch_size // world),
                                       dtype.itemsize, optimizer_state_slots(args))},
            args.memory_budget_mb * 2**20, f"data parallel on {world} rank(s)")
    model = MLP([x_train.shape[1], *args.hidden, classes], dtype=dtype, seed=args.seed)
    params = model.parameters()
    # The model is a function of the seed, so this changes nothing unless ranks were started
    # with different seeds; it is the cheap guarantee that every rank starts from rank 0.
    broadcast_parameters(params, root=0)
    sync = GradSync(params, bucket_cap_bytes=max(1, int(args.bucket_mb * 2**20)),
                    overlap=not args.no_overlap, algorithm=args.algorithm,
                    compression=args.compression, error_feedback=args.error_feedback)
    if sync.overlap:
        rr.init()  # starts the allreduce engine now, so a rank that never gets here is reported
    grads = sync.grads  # views into the bucket buffers: backward writes where allreduce reads
    if args.optimizer == "sgd":
        opt = SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                  nesterov=args.nesterov)
    else:
        opt = Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    sampler = DistributedSampler(len(x_train), args.batch_size, rank=rank, size=world,
                                 seed=args.seed, drop_last=args.drop_last)
    steps_per_epoch = len(sampler)
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)

    def lr_at(step):
        # From --epochs, not --max-steps, so that a run stopped early and resumed follows the
        # same schedule as one that was never stopped.
        if args.schedule == "constant":
            return args.lr
        return args.lr * 0.5 * (1.0 + np.cos(np.pi * step / (steps_per_epoch * args.epochs)))

    # ---- state that a checkpoint carries -----------------------------------------------------
    epoch, start_step, global_step = 0, 0, 0
    loss_curve = []          # global mean training loss of every step
    accuracy_curve = []      # test accuracy after every epoch
    skipped_steps = []       # steps whose update was skipped for a non-finite gradient
    ckpt_path = os.path.join(args.checkpoint_dir, "ckpt.npz") if args.checkpoint_dir else None
    # --resume auto: rank 0 looks for the checkpoint and tells the others, so that every rank
    # decides alike even where a network file system shows them the file late.
    resuming = args.resume is True or (args.resume == "auto" and comm.bcast(
        os.path.exists(ckpt_path) if master else None, root=0))
    if ckpt_path and master and not resuming:
        os.makedirs(args.checkpoint_dir, exist_ok=True)
    run_identity = {"world_size": world, "seed": args.seed, "batch_size": args.batch_size,
                    "num_train": len(x_train), "drop_last": int(args.drop_last)}

    def checkpoint_state():
        state = {f"param.{i}": p for i, p in enumerate(params)}
        state.update({f"optim.{k}": v for k, v in opt.state_dict().items()})
        state.update(run_identity)
        state.update(epoch=epoch, step_in_epoch=start_step, global_step=global_step,
                     loss_curve=np.array(loss_curve, dtype=np.float64),
                     accuracy_curve=np.array(accuracy_curve, dtype=np.float64),
                     skipped_steps=np.array(skipped_steps, dtype=np.int64))
        return state

    if resuming:
        like = {k: (None if k in ("loss_curve", "accuracy_curve", "skipped_steps") else v)
                for k, v in checkpoint_state().items()}
        # A restart may have fewer ranks (ringreduce-run --min-np): the global batches do not
        # depend on the rank count, so only the order of the gradient sums changes.
        match = {k: v for k, v in run_identity.items()
                 if args.resume is True or k != "world_size"}
        saved = load_checkpoint(ckpt_path, like=like, match=match)
        for i, p in enumerate(params):
            p[...] = saved[f"param.{i}"]
        opt.load_state_dict({k[len("optim."):]: v for k, v in saved.items()
                             if k.startswith("optim.")})
        epoch, start_step = int(saved["epoch"]), int(saved["step_in_epoch"])
        global_step = int(saved["global_step"])
        loss_curve = saved["loss_curve"].tolist()
        accuracy_curve = saved["accuracy_curve"].tolist()
        skipped_steps = saved["skipped_steps"].tolist()
    opt.lr = lr_at(global_step)

    if master and not args.no_progress:
        print(f"{data_name}: {len(x_train)} train / {len(x_test)} test, model "
              f"{model.sizes} {dtype}, {world} rank(s), global batch {args.batch_size}, "
              f"{steps_per_epoch} steps/epoch, {sync.num_buckets} bucket(s), "
              f"overlap {'on' if sync.overlap else 'off'}"
              + (f", resuming at epoch {epoch} step {start_step}" if resuming else "")
              + (f" (checkpoint written at {int(saved['world_size'])} rank(s))"
                 if resuming and int(saved["world_size"]) != world else ""),
              flush=True)

    # ---- helpers ---------------------------------------------------------------------------
    pending_losses = []  # this rank's share of each step's loss, summed over ranks lazily

    def flush_losses():
        # One allreduce per epoch for the loss curve instead of one per step. Collective: every
        # rank calls it at the same points (epoch ends, checkpoints, the stop).
        if pending_losses:
            total = rr.allreduce(np.array(pending_losses, dtype=np.float64), "sum")
            loss_curve.extend(total.tolist())
            pending_losses.clear()

    def evaluate():
        # Each rank scores a contiguous shard of the test set; two numbers are summed.
        return evaluate_shard(model, x_test, y_test, rank, world, rr.allreduce)

    def save(path):
        flush_losses()
        if master:
            save_checkpoint(path, checkpoint_state())

    def params_digest():
        h = hashlib.sha256()
        for p in params:
            h.update(p.tobytes())
        return np.frombuffer(h.digest(), dtype=np.uint8)

    def check_sync(step):
        mine = params_digest()
        everyone = np.empty((world, mine.size), dtype=np.uint8)
        comm.Allgather(mine, everyone)
        differ = [r for r in range(world) if not np.array_equal(everyone[r], everyone[0])]
        if differ:
            raise RuntimeError(f"after step {step}, ranks {differ} hold parameters that differ "
                               f"from rank 0's")
        return mine.tobytes().hex()

    def poison_then_mark(i):
        # --inject-nonfinite: one NaN/Inf in this rank's first finished gradient (the last
        # bias), to check that every rank takes the same decision about it.
        if i == len(params) - 1:
            grads[i].flat[0] = args.inject[2]
        sync.mark_ready(i)

    progress = None
    if master and not args.no_progress:
        try:
            from tqdm import tqdm
            progress = tqdm(total=total_steps, initial=global_step, unit="step",
                            dynamic_ncols=True)
        except ImportError:
            pass  # plain lines at each epoch end instead

    # ---- training --------------------------------------------------------------------------
    times = {"compute": 0.0, "comm_wait": 0.0, "update": 0.0}
    timed_steps = timed_samples = 0
    timed_seconds = 0.0
    param_digests = []  # --check-sync: sha256 of all parameters after each step of this run
    first_step_of_run = True
    first_step_done, run_start_step = None, global_step
    run_start = time.perf_counter()
    stop = global_step >= total_steps
    while not stop and epoch < args.epochs:
        for step, idx, batch_size in sampler.batches(epoch, start_step):
            if args.die_at == (global_step, rank):
                print(f"rank {rank}: TRAIN_MLP_DIE_AT: SIGKILL before step {global_step} at "
                      f"unix time {time.time():.3f}", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            t0 = time.perf_counter()
            on_ready = sync.mark_ready
            if args.inject and args.inject[0] == global_step and args.inject[1] == rank:
                on_ready = poison_then_mark
            # Micro-batches: all but the last accumulate locally under no_sync; the last one
            # marks gradients ready, which starts the bucket allreduces.
            pieces = np.array_split(idx, args.grad_accum)
            if args.grad_accum > 1:
                sync.zero_grad()
            loss = 0.0
            for j, piece in enumerate(pieces):
                logits = model.forward(x_train[piece])
                piece_loss, dlogits = softmax_cross_entropy(logits, y_train[piece],
                                                            scale=1.0 / batch_size)
                loss += piece_loss
                if j < len(pieces) - 1:
                    with sync.no_sync():
                        model.backward(dlogits, grads, accumulate=True)
                else:
                    model.backward(dlogits, grads, on_ready=on_ready,
                                   accumulate=args.grad_accum > 1)
            t1 = time.perf_counter()
            finite = sync.wait()
            t2 = time.perf_counter()
            if finite:
                opt.step(grads)
            elif args.nonfinite == "error":
                raise NonFiniteGradientError(
                    f"rank {rank}: step {global_step}: the reduced gradient holds NaN or Inf "
                    f"(from at least one rank); stopping (--nonfinite error)")
            else:
                skipped_steps.append(global_step)
                warnings.warn(f"rank {rank}: step {global_step}: the reduced gradient holds NaN "
                              f"or Inf (from at least one rank); skipping this update",
                              RuntimeWarning, stacklevel=1)
            t3 = time.perf_counter()
            pending_losses.append(loss)
            opt.lr = lr_at(global_step + 1)
            global_step += 1
            start_step = step + 1
            if first_step_of_run:
                first_step_of_run = False  # compiles the Numba kernels: not timed
                first_step_done = time.time()  # wall clock: compared with another run's
            else:
                wait = sync.last_wait_seconds
                times["compute"] += t1 - t0
                times["comm_wait"] += wait
                times["update"] += t3 - t2 + (t2 - t1 - wait)  # the finite check is update
                timed_steps += 1
                timed_samples += batch_size
                timed_seconds += t3 - t0
            if args.check_sync:
                param_digests.append(check_sync(global_step))
            if progress is not None:
                progress.update(1)
            if start_step == steps_per_epoch:
                epoch, start_step = epoch + 1, 0
                accuracy, test_loss = evaluate()
                accuracy_curve.append(accuracy)
                flush_losses()
                if progress is not None:
                    progress.set_postfix(epoch=epoch, loss=f"{loss_curve[-1]:.4f}",
                                         test_acc=f"{accuracy:.4f}")
                elif master and not args.no_progress:
                    print(f"epoch {epoch}/{args.epochs} step {global_step}/{total_steps} "
                          f"loss {loss_curve[-1]:.4f} test loss {test_loss:.4f} "
                          f"test acc {accuracy:.4f}", flush=True)
                if ckpt_path:
                    save(ckpt_path)
            elif ckpt_path and args.checkpoint_every and global_step % args.checkpoint_every == 0:
                save(ckpt_path)
            if global_step >= total_steps:
                stop = True
                break
    flush_losses()
    if ckpt_path and start_step != 0:
        save(ckpt_path)  # stopped mid-epoch (--max-steps): keep the place
    wall = time.perf_counter() - run_start
    if progress is not None:
        progress.close()
    final_accuracy, final_test_loss = evaluate()

    # ---- outputs ---------------------------------------------------------------------------
    if args.save_params and (master or "{rank}" in args.save_params):
        out = {f"param.{i}": p for i, p in enumerate(params)}
        out["sizes"] = np.array(model.sizes)
        save_checkpoint(args.save_params.replace("{rank}", str(rank)), out)
    if master and args.metrics_out:
        per_step = {k: (v / timed_steps if timed_steps else None) for k, v in times.items()}
        metrics = {
            "ranks": world, "data": data_name, "model": model.sizes, "dtype": str(dtype),
            "optimizer": args.optimizer, "lr": args.lr, "global_batch_size": args.batch_size,
            "epochs": args.epochs, "steps": global_step, "steps_per_epoch": steps_per_epoch,
            "final_test_accuracy": final_accuracy, "final_test_loss": final_test_loss,
            "test_accuracy_curve": accuracy_curve, "loss_curve": loss_curve,
            "samples_per_second": timed_samples / timed_seconds if timed_seconds else None,
            "timed_steps": timed_steps,
            "step_time_seconds": {**per_step, "total": timed_seconds / timed_steps
                                  if timed_steps else None},
            "overlap": sync.overlap, "bucket_mb": args.bucket_mb,
            "num_buckets": sync.num_buckets, "skipped_steps": skipped_steps,
            "sync_checks": len(param_digests), "param_digests": param_digests,
            "wall_seconds": wall, "start_step": run_start_step,
            "first_step_done_unix": first_step_done,
        }
        with open(args.metrics_out, "w") as fh:
            json.dump(metrics, fh, indent=1)
    if master and args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ax1.plot(np.arange(1, len(loss_curve) + 1), loss_curve)
        ax1.set(xlabel="step", ylabel="training loss", yscale="log",
                title=f"{data_name}, {world} rank(s)")
        ax2.plot(np.arange(1, len(accuracy_curve) + 1), accuracy_curve, marker="o")
        ax2.set(xlabel="epoch", ylabel="test accuracy")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
    if master and not args.no_progress:
        print(f"final test accuracy {final_accuracy:.4f} after {global_step} steps, "
              f"{wall:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise  # argparse errors and the normal exit: the same on every rank
    except (CheckpointError, NonFiniteGradientError, MemoryBudgetError, ValueError,
            RuntimeError) as exc:
        # Every rank meets these errors at the same point (same file, same reduced gradient),
        # but a rank that exits while another waits in a collective would hang the job, so
        # with several ranks the first to fail aborts them all.
        print(f"rank {MPI.COMM_WORLD.Get_rank()}: error: {exc}", file=sys.stderr, flush=True)
        if MPI.COMM_WORLD.Get_size() > 1 and not isinstance(exc, NonFiniteGradientError):
            time.sleep(0.5)  # let the launcher forward the message before the job is torn down
            MPI.COMM_WORLD.Abort(1)
        # A non-finite reduced gradient is identical on every rank, so every rank stops at
        # the same step: a plain exit (MPI_Finalize on all ranks) ends the job cleanly, with
        # every rank's message delivered.
        sys.exit(1)
    # Any other exception goes on to the hook importing ringreduce installed
    # (ringreduce/engine/abort.py): it prints the traceback, gives the launcher a moment to
    # forward it, and aborts the job.
