"""Check, then time, the CUDA kernels of ringreduce on one GPU.

    python3 benchmarks/gpu.py --markdown docs/gpu-kernels.md        # on a GPU, 256 MiB arrays

    python3 benchmarks/gpu.py --allreduce-ranks 2 4    # then device-array allreduce tables

    # the script's own logic, without a GPU (timings are meaningless there):
    NUMBA_ENABLE_CUDASIM=1 python3 benchmarks/gpu.py --size-mib 0.01 --check-n 300 \
        --blocks 2 --threads 32 --warmup 1 --repeat 2 \
        --allreduce-ranks 2 4 --allreduce-sizes-mib 0.001 0.004 --allreduce-repeat 2

1. Checks every kernel (each reduction op on each dtype, the avg scaling, the SGD and Adam
   variants, pack/unpack) against a numpy reference on fresh random data; float results are
   compared with float64 arithmetic. Any failure: the script says which and exits 1, untimed.
2. Times each kernel on float32 arrays of --size-mib each (256 MiB: several times any GPU's L2,
   so the numbers are HBM's), next to a device-to-device copy of the same bytes. CUDA events
   around every call, all calls queued before one synchronisation (so the host's launch
   overhead overlaps the previous call and stays out of the interval), warm-up calls first,
   the median of --repeat.
3. With --allreduce-ranks: for each rank count N, ``mpiexec -n N`` runs
   benchmarks/gpu_allreduce.py: it checks ``rr.allreduce`` of device arrays, then times it
   for --allreduce-sizes-mib (1, 16, 256 MiB of float32) next to host ``MPI_Allreduce`` of
   the same bytes, the N ranks sharing this GPU (see that script). --allreduce-only skips
   1 and 2.

Bytes are counted as the fewest the kernel must move: every array it reads once plus every
array it writes once (a copy moves 2 arrays, ``dst op= src`` 3, SGD with momentum 5: reads
param, grad and buffer, writes param and buffer). The target is 85% of the copy's bandwidth
for the reduction and SGD kernels.

Needs ringreduce installed, with numba-cuda (and an mpiexec for 3); no network. Exit codes:
0 checks passed (whatever the timings), 1 a check or an allreduce job failed, 2 no CUDA device.
"""
import argparse
import datetime
import os
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


try:
    from ringreduce.kernels import cuda as ck, reference as f64
except ModuleNotFoundError as error:
    if not (error.name or "").startswith("ringreduce"):
        raise
    # setup.py maps kernels/ to ringreduce.kernels, so a bare checkout has no such package.
    sys.exit("benchmarks/gpu.py needs ringreduce installed (from the checkout, offline: "
             "python3 -m pip install --no-deps --no-build-isolation -e .)")

try:  # after the kernels, which report its absence politely (exit code 2)
    from numba import cuda
except ImportError:
    cuda = None
from numba import config

TARGET = 0.85
# Relative error (in the norm) allowed after a few optimizer steps: a few roundings per element.
OPTIM_TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-13}


# ---------------------------------------------------------------------------------------
# Checks

def is_float(dtype):
    """float16/32/64 and bfloat16 (whose numpy kind, through ml_dtypes, is "V")."""
    return dtype.kind == "f" or dtype == f64.BFLOAT16


def reduce_operands(op, dtype, n, rng):
    """Random (a, b) for which ``a op b`` cannot overflow; NaNs placed for min/max."""
    if is_float(dtype):
        a = rng.standard_normal(n) * 4
        b = rng.standard_normal(n) * 4
        if op in ("min", "max") and n >= 100:
            a[rng.integers(0, n, n // 100)] = np.nan
            b[rng.integers(0, n, n // 100)] = np.nan
        return a.astype(dtype), b.astype(dtype)
    info = np.iinfo(dtype)
    bound = {"prod": int(np.sqrt(min(info.max, 2**62))) // 2, "sum": info.max // 4}.get(
        op, info.max)
    low = 0 if info.min == 0 else -bound
    return (rng.integers(low, bound, n, dtype=dtype, endpoint=True),
            rng.integers(low, bound, n, dtype=dtype, endpoint=True))


def mismatch(out, expected):
    """None when equal (NaN equal to NaN), else a short description."""
    same = (out == expected) | (np.isnan(out) & np.isnan(expected)
                                if is_float(out.dtype) else False)
    if same.all():
        return None
    bad = np.flatnonzero(~same)
    k = bad[0]
    return f"{bad.size} of {out.size} differ, first at {k}: {out[k]!r} != {expected[k]!r}"


def relative_error(out, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(out.astype(np.float64) - ref) / max(np.linalg.norm(ref), 1e-30))


SGD_VARIANTS = {
    "plain": dict(lr=0.1, momentum=0.0, weight_decay=0.0, nesterov=False, grad_scale=1.0),
    "momentum": dict(lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=False, grad_scale=1.0),
    "nesterov": dict(lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=True, grad_scale=1.0),
    "momentum+wd": dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=False,
                        grad_scale=1.0),
    "nesterov+wd+scale": dict(lr=0.05, momentum=0.8, weight_decay=0.01, nesterov=True,
                              grad_scale=0.25),
}
ADAM_VARIANTS = {
    "plain": dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, grad_scale=1.0),
    "wd+scale": dict(lr=3e-3, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.01,
                     grad_scale=0.25),
}


def run_checks(n, rng):
    """Every kernel once on fresh data; returns a list of failure descriptions."""
    failures = []
    count = 0

    def record(name, problem):
        nonlocal count
        count += 1
        if problem:
            failures.append(f"{name}: {problem}")
            print(f"  FAIL {name}: {problem}", flush=True)

    for dtype in ck.DTYPES:
        for op in ck.OPS:
            a, b = reduce_operands(op, dtype, n, rng)
            dst, src = cuda.to_device(a), cuda.to_device(b)
            ck.reduce_kernel(op, dtype)(dst, src)
            record(f"reduce {op} {dtype}", mismatch(dst.copy_to_host(), f64.reduce(op, a, b))
                   or mismatch(src.copy_to_host(), b))
        if is_float(dtype):
            a = (rng.standard_normal(n) * 100).astype(dtype)
            expected = (a.astype(np.float64) / 3).astype(dtype)
        else:
            info = np.iinfo(dtype)
            bound = min(info.max, 2**52)   # float64 holds these exactly; the quotient truncates
            a = rng.integers(max(info.min, -bound), bound, n, dtype=dtype, endpoint=True)
            expected = np.trunc(a.astype(np.float64) / 3).astype(dtype)
        dst = cuda.to_device(a)
        ck.scale_kernel(dtype)(dst, 3)
        record(f"scale {dtype}", mismatch(dst.copy_to_host(), expected))

    steps = 3
    for dtype in ck.OPTIM_DTYPES:
        tolerance = OPTIM_TOLERANCE[dtype]
        for name, hp in SGD_VARIANTS.items():
            param = rng.standard_normal(n).astype(dtype)
            grads = [rng.standard_normal(n).astype(dtype) for _ in range(steps)]
            d_param, d_buf = cuda.to_device(param), cuda.to_device(np.zeros(n, dtype))
            for grad in grads:
                ck.sgd_update(d_param, cuda.to_device(grad), d_buf, **hp)
            ref_param, ref_buf = f64.sgd(param, grads, **hp)
            errors = [relative_error(d_param.copy_to_host(), ref_param)]
            if hp["momentum"]:
                errors.append(relative_error(d_buf.copy_to_host(), ref_buf))
            worst = max(errors)
            record(f"sgd {name} {dtype}",
                   None if worst < tolerance else f"relative error {worst:.3g}")
        for name, hp in ADAM_VARIANTS.items():
            param = rng.standard_normal(n).astype(dtype)
            grads = [rng.standard_normal(n).astype(dtype) for _ in range(steps)]
            d = [cuda.to_device(x) for x in (param, np.zeros(n, dtype), np.zeros(n, dtype))]
            for step, grad in enumerate(grads, start=1):
                ck.adam_update(d[0], cuda.to_device(grad), d[1], d[2], hp["lr"], hp["beta1"],
                               hp["beta2"], hp["eps"], hp["weight_decay"], step,
                               hp["grad_scale"])
            refs = f64.adam(param, grads, **hp)
            worst = max(relative_error(x.copy_to_host(), r) for x, r in zip(d, refs))
            record(f"adam {name} {dtype}",
                   None if worst < tolerance else f"relative error {worst:.3g}")

    for dtype in (np.dtype(np.float32), np.dtype(np.float16)):
        sizes = [int(s) for s in rng.integers(0, max(n // 10, 2), 12)]
        tensors = [rng.standard_normal(s).astype(dtype) for s in sizes]
        offsets, position = [], 0
        for t in tensors:
            offsets.append(position)
            position += t.size + 1   # one poisoned element between windows
        fusion = np.full(position, -77, dtype)
        d_fusion = cuda.to_device(fusion)
        ck.pack([cuda.to_device(t) for t in tensors], d_fusion, offsets)
        expected = fusion.copy()
        for t, offset in zip(tensors, offsets):
            expected[offset:offset + t.size] = t
        record(f"pack {dtype}", mismatch(d_fusion.copy_to_host(), expected))
        targets = [cuda.to_device(np.full(t.size, -77, dtype)) for t in tensors]
        ck.unpack(d_fusion, targets, offsets)
        record(f"unpack {dtype}", next(
            (f"tensor {k}: {m}" for k, (t, d) in enumerate(zip(tensors, targets))
             if (m := mismatch(d.copy_to_host(), t))), None))
    return count, failures


# ---------------------------------------------------------------------------------------
# Timing

def time_call(fn, warmup, repeat):
    """Median milliseconds of one call; None where events do not time (the simulator)."""
    for _ in range(warmup):
        fn()
    starts = [cuda.event() for _ in range(repeat)]
    ends = [cuda.event() for _ in range(repeat)]
    for start, end in zip(starts, ends):
        start.record()
        fn()
        end.record()
    ends[-1].synchronize()
    ms = [start.elapsed_time(end) for start, end in zip(starts, ends)]
    return statistics.median(ms) if min(ms) > 0 else None


def device_copy(dst, src):
    """cuMemcpyDtoDAsync of the whole array on the default stream.

    Straight to the driver: Numba's ``copy_to_device`` spends about 160 us of host time per
    call (measured on an H200), longer than the GPU needs for 512 MiB, so timing it would
    time Python. The simulator has no driver; there the copy goes through Numba."""
    if config.ENABLE_CUDASIM:
        dst.copy_to_device(src)
        return
    from numba.cuda.cudadrv import driver

    driver.driver.cuMemcpyDtoDAsync(dst.device_ctypes_pointer.value,
                                    src.device_ctypes_pointer.value, src.nbytes, 0)


def make_copy_kernel():
    """A one-element-per-trip grid-stride copy: what Numba-generated code reaches, for scale.

    It names the module-level ``cuda``, which the simulator swaps for its own."""
    from numba import float32, void

    @cuda.jit(void(float32[::1], float32[::1]))
    def copy_kernel(dst, src):
        for i in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
            dst[i] = src[i]

    return copy_kernel


def run_timings(n, warmup, repeat, rng):
    f32 = np.float32
    nbytes = n * 4
    host = [rng.random(n, dtype=f32) + f32(0.5) for _ in range(4)]   # 0.5..1.5: no zeros
    arrays = [cuda.to_device(h) for h in host]
    a, b, c, d = arrays
    scratch = cuda.device_array(n, f32)

    def fresh():
        # Restore the inputs between kernels so that none is timed on data a previous kernel
        # drove to zero or infinity.
        for array, h in zip(arrays, host):
            array.copy_to_device(h)
        cuda.synchronize()

    copy_kernel = make_copy_kernel()
    blocks, threads = ck.launch_config(n)
    rows = []

    def bench(name, arrays_moved, fn, target=False):
        fresh()
        ms = time_call(fn, warmup, repeat)
        rows.append(dict(name=name, bytes=arrays_moved * nbytes, ms=ms, target=target))
        shown = "n/a" if ms is None else f"{ms:.3f} ms"
        print(f"  {name:<34} {shown}", flush=True)

    bench("copy, device to device (cuMemcpy)", 2, lambda: device_copy(scratch, a))
    bench("copy kernel (Numba, for scale)", 2,
          lambda: copy_kernel[blocks, threads](scratch, a))
    for op in ck.OPS:
        bench(f"reduce {op}", 3, lambda f=ck.reduce_kernel(op, f32): f(a, b), target=True)
    bench("scale (avg)", 2, lambda f=ck.scale_kernel(f32): f(a, 3.0))
    bench("sgd plain", 3, lambda: ck.sgd_update(a, b, c, 1e-3, 0.0, 0.0, False, 1.0),
          target=True)
    bench("sgd momentum", 5, lambda: ck.sgd_update(a, b, c, 1e-3, 0.9, 0.0, False, 1.0),
          target=True)
    bench("sgd nesterov + wd + grad_scale", 5,
          lambda: ck.sgd_update(a, b, c, 1e-3, 0.9, 1e-4, True, 0.25), target=True)
    step = iter(range(1, 10**9))
    bench("adam", 7, lambda: ck.adam_update(a, b, c, d, 1e-3, 0.9, 0.999, 1e-8, 0.0,
                                            next(step), 1.0))
    # 64 tensors of one size filling one fusion buffer: each element read once, written once.
    pieces = 64
    per = n // pieces
    tensors = [cuda.device_array(per, f32) for _ in range(pieces)]
    for t in tensors:
        t.copy_to_device(a[:per])
    offsets = [k * per for k in range(pieces)]
    bench(f"pack {pieces} tensors", 2 * per * pieces / n,
          lambda: ck.pack(tensors, scratch, offsets))
    bench(f"unpack {pieces} tensors", 2 * per * pieces / n,
          lambda: ck.unpack(scratch, tensors, offsets))
    return rows


def table(rows, lines_before):
    copy_ms = rows[0]["ms"]
    copy_bw = rows[0]["bytes"] / copy_ms / 1e6 if copy_ms else None
    out = list(lines_before)
    out += ["", "| kernel | bytes per call | median time | GB/s | of copy | target 85% |",
            "| --- | ---: | ---: | ---: | ---: | :---: |"]
    for r in rows:
        if r["ms"] is None:
            cells = ["n/a", "n/a", "n/a"]
            verdict = "n/a" if r["target"] else ""
        else:
            bw = r["bytes"] / r["ms"] / 1e6
            fraction = bw / copy_bw
            cells = [f"{r['ms']:.3f} ms", f"{bw:.0f}", f"{fraction:.1%}"]
            verdict = ("met" if fraction >= TARGET else "MISSED") if r["target"] else ""
        out.append(f"| {r['name']} | {r['bytes'] / 2**20:.0f} MiB | " + " | ".join(cells)
                   + f" | {verdict} |")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=float, default=256.0,
                        help="size of each float32 array in the timings (default 256)")
    parser.add_argument("--check-n", type=int, default=1_000_003,
                        help="elements per check (default 1000003: several grids, a prime)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--blocks", type=int, help="force the grid (default: from the device)")
    parser.add_argument("--threads", type=int, help="force the block size (default 256)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--seed", type=int, help="seed for the random data (default: fresh)")
    parser.add_argument("--allreduce-ranks", type=int, nargs="*", default=[],
                        help="also time device-array allreduce at these rank counts")
    parser.add_argument("--allreduce-sizes-mib", type=float, nargs="+", default=[1, 16, 256])
    parser.add_argument("--allreduce-warmup", type=int, default=3)
    parser.add_argument("--allreduce-repeat", type=int, default=10)
    parser.add_argument("--allreduce-only", action="store_true",
                        help="skip the kernel checks and timings")
    args = parser.parse_args()

    if not ck.cuda_available():
        print(f"benchmarks/gpu.py: {ck.unavailable_reason()}", file=sys.stderr)
        return 2
    if args.allreduce_only:
        return run_allreduce_jobs(args)
    ck.set_launch_config(args.blocks, args.threads)
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**63)
    rng = np.random.default_rng(seed)
    device = cuda.get_current_device()
    name = getattr(device, "name", "CUDA simulator")
    name = name.decode() if isinstance(name, bytes) else name
    n = int(args.size_mib * 2**20) // 4
    blocks, threads = ck.launch_config(n)
    simulator = bool(config.ENABLE_CUDASIM)
    print(f"device: {name}{' (simulator: timings are meaningless)' if simulator else ''}; "
          f"seed {seed}", flush=True)

    print(f"checking every kernel on {args.check_n} elements", flush=True)
    count, failures = run_checks(args.check_n, rng)
    if failures:
        print(f"{len(failures)} of {count} checks FAILED; no timings", file=sys.stderr)
        return 1
    print(f"all {count} checks passed", flush=True)

    print(f"timing on {n} float32 elements ({n * 4 / 2**20:.0f} MiB per array)", flush=True)
    rows = run_timings(n, args.warmup, args.repeat, rng)

    import numba

    header = [
        "## CUDA kernels: bandwidth against a device-to-device copy",
        "",
        f"`python3 benchmarks/gpu.py --size-mib {args.size_mib:g}` on {name} "
        f"(compute capability {'.'.join(map(str, device.compute_capability))}), "
        f"{datetime.date.today().isoformat()}, numba {numba.__version__}. Arrays of "
        f"{n * 4 / 2**20:.0f} MiB float32; grid {blocks} x {threads} threads; median of "
        f"{args.repeat} calls after {args.warmup} warm-up calls, CUDA events. Bytes: every "
        f"array read once plus every array written once; GB/s = 1e9 bytes per second.",
    ]
    lines = table(rows, header)
    print("\n".join(lines))
    missed = [r["name"] for r in rows if r["target"] and r["ms"] is not None
              and r["bytes"] / r["ms"] < TARGET * rows[0]["bytes"] / rows[0]["ms"]]
    summary = (f"Target ({TARGET:.0%} of the copy for reductions and SGD): "
               + ("met by all." if not missed else "missed by " + ", ".join(missed) + "."))
    if rows[0]["ms"] is None:
        summary = "No timings: the simulator's events do not measure time."
    print(summary)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(lines + ["", summary]) + "\n", encoding="utf-8")
        print(f"wrote {args.markdown}")
    return run_allreduce_jobs(args)


# ---------------------------------------------------------------------------------------
# Device-array allreduce, one MPI job per rank count

# A 256 MiB job at 4 ranks takes well under a minute on one GPU; the limit is for a hang,
# which must end this script with a message rather than stall it.
ALLREDUCE_JOB_TIMEOUT_S = 600


def run_allreduce_jobs(args):
    """``mpiexec -n N benchmarks/gpu_allreduce.py`` for each N; 0 if every job passed."""
    if not args.allreduce_ranks:
        return 0
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        print("benchmarks/gpu.py: --allreduce-ranks needs mpiexec on PATH", file=sys.stderr)
        return 1
    if args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as fh:
            fh.write("\n## Device-array allreduce against host MPI_Allreduce\n")
    failed = []
    for ranks in args.allreduce_ranks:
        cmd = [mpiexec, "-n", str(ranks), sys.executable,
               str(ROOT / "benchmarks" / "gpu_allreduce.py"),
               "--sizes-mib", *map(str, args.allreduce_sizes_mib),
               "--warmup", str(args.allreduce_warmup), "--repeat", str(args.allreduce_repeat)]
        if args.blocks or args.threads:
            cmd += [f"--blocks={args.blocks or 0}", f"--threads={args.threads or 0}"]
        if args.markdown:
            cmd += ["--markdown", str(args.markdown)]
        print(f"\n$ {' '.join(cmd)}", flush=True)
        # Its own session, so a hang can be ended with every rank mpiexec started.
        proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout=ALLREDUCE_JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            print(f"benchmarks/gpu.py: the {ranks}-rank allreduce job did not finish in "
                  f"{ALLREDUCE_JOB_TIMEOUT_S} s; killed", file=sys.stderr)
            rc = "timeout"
        if rc != 0:
            failed.append(f"{ranks} ranks: exit {rc}")
    if failed:
        print(f"benchmarks/gpu.py: allreduce jobs FAILED ({'; '.join(failed)})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
