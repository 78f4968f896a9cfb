"""mpiexec -n 2 python examples/train_torch.py --epochs 10

A small CNN on the 8x8 digits bundled with ringreduce, trained data-parallel with PyTorch's
DistributedDataParallel on the "ringreduce" torch.distributed backend: every rank holds the
whole model, takes an equal slice of each global batch, and DDP averages the gradients in
buckets through ringreduce while backward runs.

Other runs:
  python examples/train_torch.py --epochs 2                              # one rank
  mpiexec -n 2 python examples/train_torch.py --optimizer-wrapper        # horovod-style
  mpiexec -n 2 python examples/train_torch.py --checkpoint-dir ckpt --max-steps 40
  mpiexec -n 2 python examples/train_torch.py --checkpoint-dir ckpt --resume   # goes on
  mpiexec -n 4 python examples/train_torch.py --metrics-out m.json --save-params p.pt
  mpiexec -n 2 python examples/train_torch.py --dtype float32 --compression bf16

--optimizer-wrapper: no DDP; horovod.torch's DistributedOptimizer (ringreduce.torch's) reduces
each gradient as soon as backward has produced it, and step() waits for them.

--compression bf16|fp16 (float32 models): the gradients cross the ranks as 16-bit values,
through ringreduce's wire compression (one rounding per reduction step, fp16 scaled against
overflow): DDP registers ringreduce.torch's bf16_compress_hook or fp16_compress_hook, the
optimizer wrapper takes hvd.Compression.bf16 or .fp16.

--batch-size is the global batch and must divide by the rank count: with equal slices, DDP's
average of the ranks' mean gradients is the mean gradient of the whole batch, so N ranks train
to the parameters one rank does (in float64, up to the order of additions). Every epoch's
order is a pure function of (--seed, epoch), so a checkpoint holds no generator state and a
resumed run equals an uninterrupted one. Needs torch: pip install "ringreduce[torch]".
"""
import os

# One thread per rank: N ranks share the cores, each running its own convolutions.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import ringreduce.torch as hvd  # noqa: E402 - registers the "ringreduce" backend
from ringreduce.training import DistributedSampler  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=48,
                   help="global batch, all ranks together; must divide by the rank count")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps in all")
    p.add_argument("--bucket-mb", type=float, default=25.0, help="DDP's gradient bucket cap")
    p.add_argument("--optimizer-wrapper", action="store_true",
                   help="hvd.DistributedOptimizer instead of DistributedDataParallel")
    p.add_argument("--compression", choices=("none", "fp16", "bf16"), default="none",
                   help="send the gradients as 16-bit values (needs --dtype float32)")
    p.add_argument("--metrics-out", metavar="FILE.json")
    p.add_argument("--save-params", metavar="FILE.pt", help="final parameters (rank 0)")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="write DIR/ckpt.pt")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also checkpoint every STEPS steps (always: each epoch end, the stop)")
    p.add_argument("--resume", action="store_true", help="go on from DIR/ckpt.pt")
    p.add_argument("--no-progress", action="store_true", help="print nothing on rank 0 either")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.max_steps < 0:
        p.error("--epochs and --batch-size must be >= 1, --max-steps >= 0")
    if args.resume and not args.checkpoint_dir:
        p.error("--resume needs --checkpoint-dir")
    if args.compression != "none" and args.dtype != "float32":
        p.error(f"--compression {args.compression} compresses float32 gradients; add "
                "--dtype float32")
    return args


def load_digits():
    """(x_train, y_train, x_test, y_test): the bundled digits as 1x8x8 images in [0, 1], with
    train_mlp.py's fixed split (seed 0, a fifth held out)."""
    from importlib import resources
    with resources.files("ringreduce").joinpath("data/digits.npz").open("rb") as fh:
        with np.load(fh, allow_pickle=False) as z:
            x, y = z["images"][:, None] / 16.0, z["labels"].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    n_test = len(x) // 5
    return x[order[n_test:]], y[order[n_test:]], x[order[:n_test]], y[order[:n_test]]


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    dist.init_process_group("ringreduce")  # under mpiexec: rank and world size from MPI
    rank, world = dist.get_rank(), dist.get_world_size()
    master = rank == 0  # this process does logging, metrics and checkpoints
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} must divide by the {world} ranks "
                         "(equal slices make DDP's average the whole batch's mean)")
    dtype = getattr(torch, args.dtype)
    x_train, y_train, x_test, y_test = load_digits()
    x_train, x_test = torch.tensor(x_train, dtype=dtype), torch.tensor(x_test, dtype=dtype)
    y_train, y_test = torch.tensor(y_train), torch.tensor(y_test)

    torch.manual_seed(args.seed)  # the same weights everywhere (DDP broadcasts rank 0's too)
    model = CNN().to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    if args.optimizer_wrapper:
        hvd.init()
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters(),
                                       compression=getattr(hvd.Compression, args.compression))
        net = model
    else:
        net = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb)
        if args.compression != "none":
            net.register_comm_hook(None, getattr(hvd, f"{args.compression}_compress_hook"))
    # Every rank reads the same global batch order; its slice is batch_size / world samples.
    sampler = DistributedSampler(len(x_train), args.batch_size, rank=rank, size=world,
                                 seed=args.seed, drop_last=True)
    steps_per_epoch = len(sampler)
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)

    epoch, start_step, global_step, loss_curve, accuracy_curve = 0, 0, 0, [], []
    ckpt = os.path.join(args.checkpoint_dir, "ckpt.pt") if args.checkpoint_dir else None
    if args.resume:
        saved = torch.load(ckpt, weights_only=True)
        if saved["world_size"] != world or saved["batch_size"] != args.batch_size:
            raise ValueError(f"{ckpt} was written by {saved['world_size']} rank(s) with batch "
                             f"{saved['batch_size']}; this run has {world} and "
                             f"{args.batch_size}")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        epoch, start_step, global_step = saved["epoch"], saved["step"], saved["global_step"]
        loss_curve, accuracy_curve = saved["loss_curve"], saved["accuracy_curve"]

    def save():
        if master:
            os.makedirs(args.checkpoint_dir, exist_ok=True)
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                     "epoch": epoch, "step": start_step, "global_step": global_step,
                     "loss_curve": loss_curve, "accuracy_curve": accuracy_curve,
                     "world_size": world, "batch_size": args.batch_size}
            torch.save(state, ckpt + ".tmp")
            os.replace(ckpt + ".tmp", ckpt)  # a crash mid-write leaves the old one whole
        dist.barrier()

    def evaluate():
        # Each rank scores a contiguous shard of the test set; two sums cross the ranks.
        lo, hi = len(x_test) * rank // world, len(x_test) * (rank + 1) // world
        with torch.no_grad():
            logits = model(x_test[lo:hi])
            totals = torch.tensor([float((logits.argmax(1) == y_test[lo:hi]).sum()),
                                   float(F.cross_entropy(logits, y_test[lo:hi],
                                                         reduction="sum"))], dtype=torch.float64)
        dist.all_reduce(totals)
        return (totals / len(x_test)).tolist()

    if master and not args.no_progress:
        how = "DistributedOptimizer" if args.optimizer_wrapper else "DDP"
        wire = "" if args.compression == "none" else f", gradients sent as {args.compression}"
        print(f"digits(8x8): {len(x_train)} train / {len(x_test)} test, CNN {args.dtype}, "
              f"{world} rank(s), {how} on ringreduce{wire}, global batch {args.batch_size}, "
              f"{steps_per_epoch} steps/epoch", flush=True)
    step_times, start = [], time.perf_counter()
    while global_step < total_steps and epoch < args.epochs:
        for step, idx, _ in sampler.batches(epoch, start_step):
            t0 = time.perf_counter()
            opt.zero_grad()
            idx = torch.from_numpy(idx)
            loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            step_times.append(time.perf_counter() - t0)
            global_step, start_step = global_step + 1, step + 1
            loss_curve.append(float(loss.detach()))  # this rank's slice (rank 0 reports it)
            if start_step == steps_per_epoch:
                epoch, start_step = epoch + 1, 0
                accuracy, test_loss = evaluate()
                accuracy_curve.append(accuracy)
                if master and not args.no_progress:
                    print(f"epoch {epoch}/{args.epochs} step {global_step}/{total_steps} "
                          f"loss {loss_curve[-1]:.4f} test loss {test_loss:.4f} "
                          f"test acc {accuracy:.4f}", flush=True)
                if ckpt:
                    save()
            elif ckpt and args.checkpoint_every and global_step % args.checkpoint_every == 0:
                save()
            if global_step >= total_steps:
                break
    if ckpt and start_step:
        save()  # stopped mid-epoch (--max-steps): keep the place
    wall = time.perf_counter() - start
    accuracy, test_loss = evaluate()
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes()
                                     for p in model.parameters())).hexdigest()
    if master and args.save_params:
        torch.save({n: p.detach() for n, p in model.named_parameters()}, args.save_params)
    if master and args.metrics_out:
        timed = step_times[1:]  # the first step sets up buckets and kernels
        with open(args.metrics_out, "w") as fh:
            json.dump({"ranks": world, "optimizer_wrapper": args.optimizer_wrapper,
                       "dtype": args.dtype, "compression": args.compression,
                       "global_batch_size": args.batch_size,
                       "steps": global_step, "epochs": epoch, "final_test_accuracy": accuracy,
                       "final_test_loss": test_loss, "test_accuracy_curve": accuracy_curve,
                       "loss_curve": loss_curve, "param_digest": digest,
                       "step_time_seconds": sum(timed) / len(timed) if timed else None,
                       "wall_seconds": wall}, fh, indent=1)
    if master and not args.no_progress:
        print(f"final test accuracy {accuracy:.4f} after {global_step} steps, {wall:.1f} s",
              flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
