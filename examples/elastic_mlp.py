"""mpirun --with-ft ulfm --mca pml ob1 --mca btl tcp,self -n 3 \\
       python examples/train_mlp.py --elastic --commit-every 10

``train_mlp.py --elastic``: the data-parallel run of train_mlp.py, kept going by
``ringreduce.elastic`` when a rank dies (Open MPI with ULFM; docs/cluster.md). The state to
keep (parameters, the optimizer, the epoch and the global step) is committed in memory every
``--commit-every`` steps and at each epoch end; after a lost rank the survivors shrink the
world, go back to the last commit, take rank 0's state and carry on. The sampler's global
batches do not depend on the rank count, so the run goes on with the same batches at the
same steps, each now split over fewer ranks.

For the tests: ``TRAIN_MLP_ELASTIC_KILL=STEP:RANK[:commit][,STEP:RANK...]`` makes the process
that was rank RANK of MPI_COMM_WORLD SIGKILL itself before (0-based) global step STEP, or
with ``:commit`` in the middle of the commit after step STEP, and print the time to stderr.
"""
import json
import os
import signal
import sys
import threading
import time

import numpy as np
from mpi4py import MPI

import ringreduce as rr
from ringreduce.training import SGD, Adam, DistributedSampler, GradSync, save_checkpoint

from mlp import MLP, evaluate_shard, softmax_cross_entropy

NOT_WITH_ELASTIC = ("checkpoint_dir", "resume", "check_sync", "inject_nonfinite", "plot")


def parse_kills(text):
    """``{(step, world rank): "step" or "commit"}`` from TRAIN_MLP_ELASTIC_KILL."""
    kills = {}
    for item in filter(None, (text or "").split(",")):
        parts = item.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "commit"):
            raise ValueError(f"TRAIN_MLP_ELASTIC_KILL takes STEP:RANK[:commit],..., got {item!r}")
        kills[(int(parts[0]), int(parts[1]))] = parts[2] if len(parts) == 3 else "step"
    return kills


def die(where, step):
    print(f"ELASTIC_KILL rank {MPI.COMM_WORLD.Get_rank()} {where} {step} unix "
          f"{time.time():.6f}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def train_elastic(args, sizes, dtype, x_train, y_train, x_test, y_test, data_name):
    given = [f"--{n.replace('_', '-')}" for n in NOT_WITH_ELASTIC if getattr(args, n, None)]
    if args.mode != "dp":
        print(f"error: --elastic is data parallel, not --mode {args.mode}", file=sys.stderr)
        return 2
    if given or args.grad_accum > 1:
        print(f"error: --elastic keeps its state in memory; it does not take "
              f"{', '.join(given + (['--grad-accum'] if args.grad_accum > 1 else []))}",
              file=sys.stderr, flush=True)
        return 2
    if args.commit_every < 1:
        print(f"error: --commit-every must be >= 1, got {args.commit_every}", file=sys.stderr)
        return 2
    kills = parse_kills(os.environ.get("TRAIN_MLP_ELASTIC_KILL"))
    me = MPI.COMM_WORLD.Get_rank()  # never changes: names this process in kills and files

    model = MLP(sizes, dtype=dtype, seed=args.seed)
    params = model.parameters()
    if args.optimizer == "sgd":
        opt = SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                  nesterov=args.nesterov)
    else:
        opt = Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    # The global batches (and so the steps per epoch) are the same at every rank count.
    steps_per_epoch = len(DistributedSampler(len(x_train), args.batch_size, rank=0, size=1,
                                             drop_last=args.drop_last))
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)

    def lr_at(step):  # train_mlp.py's schedule
        if args.schedule == "constant":
            return args.lr
        return args.lr * 0.5 * (1.0 + np.cos(np.pi * step / (steps_per_epoch * args.epochs)))

    state = rr.elastic.State(params=params, opt=opt, epoch=0, step=0)
    log = {"resumed_at_step": [], "resumed_unix": [], "commit_seconds": [],
           "step_seconds": [], "accuracy_curve": []}

    def evaluate():
        # rank and size are asked each time: they change when the world shrinks.
        return evaluate_shard(model, x_test, y_test, rr.rank(), rr.size(), rr.allreduce)

    def commit():
        if kills.get((state.step, me)) == "commit":
            # Die while this rank's commit is under way.
            threading.Thread(target=state.commit, daemon=True).start()
            die("commit", state.step)
        t0 = time.perf_counter()
        state.commit()
        log["commit_seconds"].append(time.perf_counter() - t0)

    @rr.elastic.run
    def train(state):
        rank, world = rr.rank(), rr.size()
        master = rank == 0
        sampler = DistributedSampler(len(x_train), args.batch_size, rank=rank, size=world,
                                     seed=args.seed, drop_last=args.drop_last)
        sync = GradSync(params, bucket_cap_bytes=max(1, int(args.bucket_mb * 2**20)),
                        overlap=not args.no_overlap, algorithm=args.algorithm)
        grads = sync.grads
        if state.recoveries:
            log["resumed_at_step"].append(state.step)
        if master and not args.no_progress:
            print(f"{data_name}: {world} rank(s), model {model.sizes} {dtype}, "
                  f"{'resuming' if state.recoveries else 'starting'} at step {state.step} "
                  f"of {total_steps}, committing every {args.commit_every} steps", flush=True)
        resumed = bool(state.recoveries)
        while state.step < total_steps:
            first = state.step - state.epoch * steps_per_epoch
            for _, idx, batch_size in sampler.batches(state.epoch, first):
                if kills.get((state.step, me)) == "step":
                    die("step", state.step)
                t0 = time.perf_counter()
                logits = model.forward(x_train[idx])
                _, dlogits = softmax_cross_entropy(logits, y_train[idx], scale=1.0 / batch_size)
                model.backward(dlogits, grads, on_ready=sync.mark_ready)
                if sync.wait():
                    opt.lr = lr_at(state.step)
                    opt.step(grads)
                state.step += 1
                log["step_seconds"].append(time.perf_counter() - t0)
                if resumed:  # the first step after a recovery is done: training runs again
                    log["resumed_unix"].append(time.time())
                    resumed = False
                if state.step % steps_per_epoch == 0 or state.step >= total_steps:
                    break
                if state.step % args.commit_every == 0:
                    commit()
            if state.step % steps_per_epoch == 0:
                state.epoch += 1
                accuracy, test_loss = evaluate()
                log["accuracy_curve"].append(accuracy)
                if master and not args.no_progress:
                    print(f"epoch {state.epoch}/{args.epochs} step {state.step} on {world} "
                          f"rank(s): test loss {test_loss:.4f} test acc {accuracy:.4f}",
                          flush=True)
            commit()
        return evaluate()

    wall = time.perf_counter()
    accuracy, test_loss = train(state)
    wall = time.perf_counter() - wall
    rank, world = rr.rank(), rr.size()
    if args.save_params and (rank == 0 or "{rank}" in args.save_params):
        out = {f"param.{i}": p for i, p in enumerate(params)}
        out["sizes"] = np.array(model.sizes)
        save_checkpoint(args.save_params.replace("{rank}", str(me)), out)
    if rank == 0 and args.metrics_out:
        steps = log["step_seconds"][1:]  # the first compiles the kernels
        with open(args.metrics_out, "w") as fh:
            json.dump({"data": data_name, "model": model.sizes, "ranks_at_start":
                       MPI.COMM_WORLD.Get_size(), "ranks_at_end": world, "steps": state.step,
                       "final_test_accuracy": accuracy, "final_test_loss": test_loss,
                       "recoveries": [r._asdict() for r in state.recoveries],
                       "commit_every": args.commit_every, "wall_seconds": wall,
                       "median_step_seconds": float(np.median(steps)) if steps else None,
                       "median_commit_seconds": float(np.median(log["commit_seconds"]))
                       if log["commit_seconds"] else None, **log}, fh, indent=1)
    if rank == 0 and not args.no_progress:
        print(f"final test accuracy {accuracy:.4f} after {state.step} steps on {world} "
              f"rank(s) ({len(state.recoveries)} recovery(ies)), {wall:.1f} s", flush=True)
    return 0
