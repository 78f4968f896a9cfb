"""grouped_allreduce on real gradient lists against native MPI_Allreduce, in one run.

    mpiexec -n 2 python benchmarks/fusion.py [--model resnet50|transformer] [--caps 4M 64M]

Times, interleaved, median of ``--iters`` (each call: barrier, call, slowest rank's time):
- native per tensor: one ``MPI_Allreduce`` per gradient, what a naive loop does;
- native concatenated: one ``MPI_Allreduce`` of all gradients already in one buffer (the
  lower bound for MPI, without the cost of packing);
- ringreduce ``grouped_allreduce`` (inplace, as a training loop uses it) at each fusion cap,
  and out of place (new result arrays) at the first cap;
- ringreduce's ring over the same bytes already concatenated (what fusion can approach);
- one memcpy of all the bytes (the floor: no allreduce moves less);
- with ``--huge-pages``, the in-place grouped call once more over copies of the tensors that
  each sit in an allocation of their own aligned to and backed by 2 MiB pages (numpy asks
  for them only for arrays of 4 MiB and more): what 4 KiB pages cost;
- with ``--grouped-algorithms``, the in-place grouped call once more with each algorithm;
- with ``--segments``, the in-place grouped call once more at each of these ``segment_bytes``;
and prints each as a ratio to the two native figures and to the memcpy. float32, op sum.
The first line names the MPI library.
"""
import argparse
import sys

import numpy as np
from mpi4py import MPI

import ringreduce as rr
from ringreduce.perf.bench import mpi_library, parse_size, time_interleaved

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from shapes import count, resnet50, transformer  # noqa: E402


def on_huge_pages(a):
    """A copy of ``a`` in an allocation of its own, aligned to 2 MiB and at least 4 MiB long,
    so that numpy asks for transparent huge pages for it."""
    page = 2 << 20
    base = np.empty(max(a.nbytes + page, 4 << 20) // a.itemsize + 1, a.dtype)
    skip = (-base.ctypes.data % page) // a.itemsize
    out = base[skip:skip + a.size].reshape(a.shape)
    out[...] = a
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50", choices=["resnet50", "transformer"])
    ap.add_argument("--caps", type=parse_size, nargs="+", default=[parse_size("64M")])
    ap.add_argument("--segments", type=parse_size, nargs="*", default=[],
                    help="add the grouped call in place with these segment_bytes")
    ap.add_argument("--grouped-algorithms", nargs="*", default=[],
                    help="add the grouped call in place with these algorithms (ring, direct)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--huge-pages", action="store_true",
                    help="add the grouped call over the tensors on 2 MiB pages")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    rank, p = comm.Get_rank(), comm.Get_size()
    shapes = resnet50() if args.model == "resnet50" else transformer()
    rng = np.random.default_rng(rank)
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    outs = [np.empty_like(g) for g in grads]
    flat = np.concatenate([g.reshape(-1) for g in grads])
    flat_out = np.empty_like(flat)

    def per_tensor():
        for g, o in zip(grads, outs):
            comm.Allreduce(g, o)

    def concatenated():
        comm.Allreduce(flat, flat_out)

    work = [g.copy() for g in grads]

    def grouped(**options):
        """The in-place grouped call over ``work`` (at the first cap unless told)."""
        options.setdefault("fusion_threshold", args.caps[0])

        def run():
            rr.grouped_allreduce(work, inplace=True, **options)
        return run

    def out_of_place():
        rr.grouped_allreduce(work, fusion_threshold=args.caps[0])

    huge = [on_huge_pages(g) for g in grads] if args.huge_pages else None

    def grouped_huge():
        rr.grouped_allreduce(huge, inplace=True, fusion_threshold=args.caps[0])

    def ring_concatenated():
        rr.allreduce(flat, algorithm="ring", out=flat_out)

    def memcpy():
        np.copyto(flat_out, flat)

    runs = {"native per tensor": per_tensor, "native concatenated": concatenated}
    for cap in args.caps:
        runs[f"grouped cap {cap >> 20} MiB"] = grouped(fusion_threshold=cap)
    for name in args.grouped_algorithms:
        runs[f"grouped, {name}"] = grouped(algorithm=name)
    for seg in args.segments:
        runs[f"grouped, segment {seg >> 10} KiB"] = grouped(segment_bytes=seg)
    runs[f"out of place, cap {args.caps[0] >> 20} MiB"] = out_of_place
    if huge is not None:
        runs["grouped, 2 MiB pages"] = grouped_huge
    runs["ring concatenated"] = ring_concatenated
    runs["memcpy"] = memcpy
    rr.init()
    med = time_interleaved(comm, runs, args.iters, args.warmup)
    # correctness of the last grouped run: compare with the native result on the same data
    check = [g.copy() for g in grads]
    rr.grouped_allreduce(check, inplace=True, fusion_threshold=args.caps[0])
    per_tensor()
    worst = max(float(np.max(np.abs(c - o) / (np.abs(o) + 1e-6))) for c, o in zip(check, outs))
    if rank == 0:
        nbytes = count(shapes) * 4
        title = (f"{args.model}: {len(shapes)} tensors, {count(shapes):,} float32 "
                 f"({nbytes / 2**20:.1f} MiB), {p} ranks, {mpi_library()}, iters {args.iters}")
        print(title)
        print(f"{'':28} {'time (ms)':>10} {'/ per tensor':>13} {'/ concatenated':>15} "
              f"{'/ memcpy':>9}")
        lines = []
        for k, t in med.items():
            a, b, m = (t / med["native per tensor"], t / med["native concatenated"],
                       t / med["memcpy"])
            print(f"{k:28} {t * 1e3:>10.2f} {a:>13.2f} {b:>15.2f} {m:>9.2f}")
            lines.append(f"| {k} | {t * 1e3:.2f} | {a:.2f} | {b:.2f} | {m:.2f} |")
        print(f"max relative difference grouped vs native per tensor: {worst:.2e}")
        if args.markdown:
            with open(args.markdown, "a") as f:
                f.write(f"\n{title}\n\n| run | time (ms) | / native per tensor | "
                        f"/ native concatenated | / memcpy |\n|---|---:|---:|---:|---:|\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
