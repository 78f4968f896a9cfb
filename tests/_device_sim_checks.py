"""Device-array allreduce, grouped_allreduce and allreduce_async against numpy, on every rank.

Run by tests/test_device_allreduce.py as ``mpiexec -n N python tests/_device_sim_checks.py``
with NUMBA_ENABLE_CUDASIM=1 (Numba's CUDA simulator) for N = 1..4, and without it on a
machine with a GPU. Not collected by pytest (leading underscore): numba must be imported
fresh with the simulator variable set, and every rank must run the same calls in order.

What must hold:

- results equal the float64 numpy reduction of every rank's input: exactly on
  integer-valued data (every op and order is exact there), within rounding on random floats;
- results are bitwise identical across ranks, and bitwise equal to the host path's result
  for the same algorithm and segment size (same reduction order, same IEEE operations);
- for every algorithm, op, several dtypes, lengths 0, 1, 3 and 97, segments of a few
  elements (so 97 elements cross many segments), in place, with ``out=``, non-contiguous;
- grouped: mixed shapes and dtypes, empty and non-contiguous tensors, several buckets;
- async: named device tensors submitted in a different order on every rank, beside host
  tensors in the same cycle;
- errors reach every rank: a device call on one rank and a host call on another, an invalid
  dtype or ``out`` on one rank, a bad RINGREDUCE_CUDA_AWARE; the library stays usable;
- the staging buffers are reused: a repeated call pins no new host memory.

The kernels run on a forced grid of 2 blocks of 4 threads, so 97 elements make the
grid-stride loops wrap and the simulator (one Python thread per CUDA thread) stays quick.

    NUMBA_ENABLE_CUDASIM=1 mpiexec -n 3 python tests/_device_sim_checks.py [--expect-aware 0]

Prints one summary line on rank 0; exits 1 on any rank if a check failed on any rank.
"""
import argparse
import os
import sys
import time
import zlib

import numpy as np
from mpi4py import MPI

import ringreduce as rr
from ringreduce.transport.device import device_comm
from ringreduce.transport.comm import get_comm
from ringreduce.kernels import cuda as ck

from numba import config as numba_config, cuda

COMM = MPI.COMM_WORLD
RANK, P = COMM.Get_rank(), COMM.Get_size()
ALGORITHMS = ("auto", "ring", "tree", "rhd", "doubling")
OPS = ("sum", "avg", "min", "max", "prod")
LENGTHS = (0, 1, 3, 97)
SEGMENT_ELEMS = 8  # 97 elements: 4 segments per chunk at 3 ranks, 13 for one rank's whole
TYPES = [np.dtype(t) for t in ("float32", "float16", "int8", "uint8", "int32", "int64",
                                "uint64")]

checks = 0
failures = []


def check(name, problem):
    """Record one check; ``problem`` is None when it passed, else what went wrong."""
    global checks
    checks += 1
    if problem:
        failures.append(f"{name}: {problem}")
        print(f"rank {RANK}: FAIL {name}: {problem}", flush=True)


def ops_for(dtype):
    return [op for op in OPS if not (op == "avg" and dtype.kind in "iu")]


def integer_input(dtype, n, rank, op, seed):
    """Integer values small enough that every op is exact in every dtype at <= 4 ranks."""
    rng = np.random.default_rng([seed, rank, n])
    if op == "prod":
        vals = rng.choice([1, 2] if dtype.kind == "u" else [-1, 1, 2], n)
    elif dtype.kind == "u":
        vals = rng.integers(0, 12, n)
    else:
        vals = rng.integers(-12, 12, n)
    return vals.astype(dtype)


def random_input(dtype, n, rank, seed):
    return np.random.default_rng([seed, rank, n, 7]).standard_normal(n).astype(dtype)


def reference(inputs, op):
    """The float64 reduction of every rank's input."""
    stacked = np.stack([x.astype(np.float64) for x in inputs])
    return {"sum": np.sum, "avg": np.mean, "min": np.min, "max": np.max,
            "prod": np.prod}[op](stacked, axis=0)


def seed_of(*key):
    return zlib.crc32(repr(key).encode())


def differs(got, expected):
    """None when equal (NaN equal to NaN), else where they first differ."""
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape or got.dtype != expected.dtype:
        return f"got {got.dtype}{got.shape}, expected {expected.dtype}{expected.shape}"
    same = got == expected
    if got.dtype.kind == "f":
        same |= np.isnan(got) & np.isnan(expected)
    if same.all():
        return None
    k = np.flatnonzero(~same.reshape(-1))[0]
    return (f"{np.count_nonzero(~same)} of {got.size} differ, first at flat index {k}: "
            f"{got.reshape(-1)[k]!r} != {expected.reshape(-1)[k]!r}")


def not_close(got, ref, dtype):
    rtol = {np.float64: 1e-13, np.float32: 1e-5, np.float16: 1e-2}[dtype.type] * P
    bad = ~np.isclose(got.astype(np.float64), ref, rtol=rtol, atol=rtol)
    if bad.any():
        k = np.flatnonzero(bad)[0]
        return f"{np.count_nonzero(bad)} beyond rtol {rtol:g}, first at {k}: {got[k]!r} vs {ref[k]!r}"
    return None


def same_everywhere(arr):
    """None when every rank holds the same bytes."""
    everyone = COMM.allgather(np.ascontiguousarray(arr).tobytes())
    bad = [r for r, b in enumerate(everyone) if b != everyone[0]]
    return f"ranks {bad} differ from rank 0" if bad else None


def host(d):
    return d.copy_to_host()


# ---------------------------------------------------------------------------------------

def check_allreduce():
    # Every algorithm and op on float64, exact data, every length.
    for alg in ALGORITHMS:
        for op in OPS:
            for n in LENGTHS:
                dtype = np.dtype(np.float64)
                seed = seed_of("ar", alg, op, n)
                inputs = [integer_input(dtype, n, r, op, seed) for r in range(P)]
                x = inputs[RANK]
                d = cuda.to_device(x)
                got = rr.allreduce(d, op, algorithm=alg, segment_bytes=SEGMENT_ELEMS * 8)
                name = f"allreduce {alg} {op} float64 n={n}"
                check(name + " is a device array", None if cuda.devicearray.is_cuda_ndarray(
                    got) else f"got {type(got).__name__}")
                out = host(got)
                check(name, differs(out, reference(inputs, op).astype(dtype)))
                check(name + " input unchanged", differs(host(d), x))
                check(name + " same on every rank", same_everywhere(out))

    # Other dtypes on two algorithms, every op the dtype takes.
    for alg in ("ring", "doubling"):
        for dtype in TYPES:
            for op in ops_for(dtype):
                n = 97
                seed = seed_of("types", alg, op, dtype.str)
                inputs = [integer_input(dtype, n, r, op, seed) for r in range(P)]
                got = host(rr.allreduce(cuda.to_device(inputs[RANK]), op, algorithm=alg,
                                        segment_bytes=SEGMENT_ELEMS * dtype.itemsize))
                name = f"allreduce {alg} {op} {dtype} n={n}"
                check(name, differs(got, reference(inputs, op).astype(dtype)))
                check(name + " same on every rank", same_everywhere(got))

    # Random floats: within rounding of float64, and bitwise the host path's result.
    for alg in ALGORITHMS:
        for dtype in (np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.float16)):
            for op in ("sum", "avg", "prod"):
                n = 97
                seed = seed_of("rand", alg, op, dtype.str)
                inputs = [random_input(dtype, n, r, seed) for r in range(P)]
                seg = SEGMENT_ELEMS * dtype.itemsize
                got = host(rr.allreduce(cuda.to_device(inputs[RANK]), op, algorithm=alg,
                                        segment_bytes=seg))
                on_host = rr.allreduce(inputs[RANK], op, algorithm=alg, segment_bytes=seg)
                name = f"allreduce {alg} {op} {dtype} random"
                check(name + " vs float64", not_close(got, reference(inputs, op), dtype))
                check(name + " bitwise as on the host", differs(got, on_host))
                check(name + " same on every rank", same_everywhere(got))


def check_out_and_in_place():
    for alg in ALGORITHMS:
        seg = SEGMENT_ELEMS * 8
        n = 97
        seed = seed_of("inplace", alg)
        inputs = [integer_input(np.dtype(np.float64), n, r, "sum", seed) for r in range(P)]
        expected = reference(inputs, "sum")
        # In place: the result is x itself.
        d = cuda.to_device(inputs[RANK])
        got = rr.allreduce(d, "sum", algorithm=alg, out=d, segment_bytes=seg)
        check(f"in place {alg} returns out", None if got is d else f"got {type(got).__name__}")
        check(f"in place {alg}", differs(host(d), expected))
        # out= another device array; x unchanged.
        d = cuda.to_device(inputs[RANK])
        o = cuda.device_array(n, np.float64)
        got = rr.allreduce(d, "sum", algorithm=alg, out=o, segment_bytes=seg)
        check(f"out= {alg} returns out", None if got is o else f"got {type(got).__name__}")
        check(f"out= {alg}", differs(host(o), expected))
        check(f"out= {alg} input unchanged", differs(host(d), inputs[RANK]))

    # Non-contiguous, 2-D: every other column of a (4, 10) array, in place and into a
    # non-contiguous out; the columns in between must stay as they were.
    seed = seed_of("strided")
    full = [integer_input(np.dtype(np.float32), 40, r, "max", seed).reshape(4, 10)
            for r in range(P)]
    expected = reference([f[:, ::2] for f in full], "max").astype(np.float32)
    base = cuda.to_device(full[RANK])
    view = base[:, ::2]
    got = rr.allreduce(view, "max", algorithm="ring", out=view, segment_bytes=12)
    after = host(base)
    check("strided in place result", differs(after[:, ::2], expected))
    check("strided in place keeps the other columns", differs(after[:, 1::2],
                                                             full[RANK][:, 1::2]))
    check("strided in place returns out", None if got is view else "not the view")
    target_base = cuda.to_device(np.full((4, 10), -7, np.float32))
    target = target_base[:, 1::2]
    rr.allreduce(cuda.to_device(full[RANK])[:, ::2], "max", algorithm="tree", out=target,
                 segment_bytes=12)
    after = host(target_base)
    check("strided out= result", differs(after[:, 1::2], expected))
    check("strided out= keeps the other columns", differs(after[:, ::2],
                                                         np.full((4, 5), -7, np.float32)))
    got = host(rr.allreduce(cuda.to_device(full[RANK])[:, ::2], "max"))
    check("strided new result", differs(got, expected))
    # A 0-d array.
    got = host(rr.allreduce(cuda.to_device(np.array(RANK + 1.0)), "sum"))
    check("0-d", differs(got, np.array(P * (P + 1) / 2)))


def check_grouped():
    shapes = [(0,), (1,), (3,), (97,), (4, 5), (6,), (2, 3)]
    dtypes = [np.float64, np.float32, np.float64, np.float32, np.float64, np.int32, np.float16]
    for op in ("sum", "avg", "max"):
        for inplace in (False, True):
            for cap in (0, 64, 1 << 20):
                use = [(s, np.dtype(t)) for s, t in zip(shapes, dtypes)
                       if not (op == "avg" and np.dtype(t).kind == "i")]
                seed = seed_of("grouped", op, inplace, cap)
                inputs = [[integer_input(t, int(np.prod(s)), r, op, seed + i).reshape(s)
                           for i, (s, t) in enumerate(use)] for r in range(P)]
                arrays = []
                for i, x in enumerate(inputs[RANK]):
                    if x.ndim == 2:
                        # Non-contiguous: the even columns of a wider array.
                        wide = np.zeros((x.shape[0], 2 * x.shape[1]), x.dtype)
                        wide[:, ::2] = x
                        arrays.append(cuda.to_device(wide)[:, ::2])
                    else:
                        arrays.append(cuda.to_device(x))
                got = rr.grouped_allreduce(arrays, op, inplace=inplace, fusion_threshold=cap,
                                           segment_bytes=16)
                name = f"grouped {op} inplace={inplace} cap={cap}"
                if inplace:
                    check(name + " returns the arrays",
                          None if all(g is a for g, a in zip(got, arrays)) else "new objects")
                for i, (g, (s, t)) in enumerate(zip(got, use)):
                    expected = reference([inputs[r][i] for r in range(P)], op).astype(t)
                    out = host(g)
                    check(f"{name} tensor {i} {t}{s}", differs(out, expected))
                    check(f"{name} tensor {i} same on every rank", same_everywhere(out))
                if not inplace:
                    on_host = rr.grouped_allreduce([x.copy() for x in inputs[RANK]], op,
                                                   fusion_threshold=cap, segment_bytes=16)
                    for i, (g, h) in enumerate(zip(got, on_host)):
                        check(f"{name} tensor {i} bitwise as on the host", differs(host(g), h))


def check_async():
    names = [f"g{i:02d}" for i in range(8)]
    order = list(np.random.default_rng(RANK).permutation(names))  # differs per rank
    seed = seed_of("async")
    handles = {}
    for name in order:
        i = int(name[1:])
        dtype = np.dtype((np.float64, np.float32, np.int64)[i % 3])
        inputs = [integer_input(dtype, 1 + 13 * i, r, "sum", seed + i) for r in range(P)]
        d = cuda.to_device(inputs[RANK])
        out = d if i % 4 == 1 else None
        handles[name] = (rr.allreduce_async(d, "sum", name=name, out=out,
                                            segment_bytes=SEGMENT_ELEMS * dtype.itemsize),
                         inputs, d, out)
        # A host tensor in the same cycle: it must be reduced apart from the device ones.
        handles["host." + name] = (rr.allreduce_async(inputs[RANK].copy(), "sum",
                                                      name="host." + name), inputs, None, None)
    strided_base = cuda.to_device(np.arange(24.0).reshape(4, 6) * (RANK + 1))
    view = strided_base[:, ::2]
    h_view = rr.allreduce_async(view, "max", name="strided", out=view)
    for name in sorted(handles, reverse=True):
        h, inputs, d, out = handles[name]
        got = h.wait(timeout=120)
        expected = reference(inputs, "sum").astype(inputs[0].dtype)
        if d is None:
            check(f"async host {name}", differs(got, expected))
            continue
        check(f"async {name} returns out", None if out is None or got is out else "not out")
        out_h = host(got)
        check(f"async {name}", differs(out_h, expected))
        check(f"async {name} same on every rank", same_everywhere(out_h))
    check("async strided returns out", None if h_view.wait(timeout=120) is view else "not out")
    check("async strided", differs(host(strided_base)[:, ::2],
                                   np.arange(24.0).reshape(4, 6)[:, ::2] * P))
    check("async strided keeps the other columns", differs(
        host(strided_base)[:, 1::2], np.arange(24.0).reshape(4, 6)[:, 1::2] * (RANK + 1)))


def expect_error(name, call, kind, *needles):
    """``call()`` must raise ``kind`` with every needle in its message, on this rank."""
    try:
        call()
    except kind as exc:
        text = str(exc)
        missing = [s for s in needles if s not in text]
        check(name, f"message lacks {missing}: {text}" if missing else None)
        return
    except Exception as exc:  # noqa: BLE001 - reported as the wrong error
        check(name, f"raised {type(exc).__name__}: {exc}")
        return
    check(name, f"no {kind.__name__} raised")


class RefusingArray:
    @property
    def __cuda_array_interface__(self):
        raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")


def check_errors():
    x = np.arange(5.0) + RANK
    if P > 1:
        # Device on rank 0, host elsewhere: a mismatch every rank reports the same way.
        arg = cuda.to_device(x) if RANK == 0 else x
        expect_error("device and host in one call", lambda: rr.allreduce(arg, "sum"),
                     rr.MismatchError, "Mismatched allreduce memory", "device", "host")
        arg = [cuda.to_device(x)] if RANK == 0 else [x]
        expect_error("device and host in one grouped call",
                     lambda: rr.grouped_allreduce(arg, "sum"),
                     rr.MismatchError, "grouped_allreduce", "memory")
    # Complex has no CUDA kernel: a TypeError on the rank that passed it, and on the others.
    bad = cuda.to_device(np.ones(4, np.complex64)) if RANK == P - 1 else cuda.to_device(
        np.ones(4, np.float32))
    expect_error("complex device array", lambda: rr.allreduce(bad, "sum"), TypeError,
                 "complex64")
    # A host out for a device x.
    expect_error("host out for a device x",
                 lambda: rr.allreduce(cuda.to_device(x), "sum",
                                      out=np.empty(5) if RANK == 0 else None),
                 TypeError, "out must be a CUDA device array")
    d = cuda.to_device(np.arange(6.0))
    expect_error("overlapping out", lambda: rr.allreduce(d[:5], out=d[1:]), ValueError,
                 "overlaps")
    expect_error("unknown algorithm", lambda: rr.allreduce(
        cuda.to_device(x), algorithm="nope"), ValueError, "unknown algorithm 'nope'")
    expect_error("mixed list", lambda: rr.grouped_allreduce([cuda.to_device(x), x]),
                 TypeError, "not both", "arrays[1]")
    # An object whose interface raises (PyTorch does for a tensor that requires grad) on
    # the last rank: its error there, and on every other rank.
    refusing = RefusingArray() if RANK == P - 1 else cuda.to_device(x)
    expect_error("interface that raises", lambda: rr.allreduce(refusing),
                 RuntimeError if RANK == P - 1 else ValueError, "requires grad")
    # A bad RINGREDUCE_CUDA_AWARE on one rank fails the call on every rank.
    saved = os.environ.get("RINGREDUCE_CUDA_AWARE")
    if RANK == 0:
        os.environ["RINGREDUCE_CUDA_AWARE"] = "maybe"
    try:
        expect_error("bad RINGREDUCE_CUDA_AWARE", lambda: rr.allreduce(cuda.to_device(x)),
                     ValueError, "RINGREDUCE_CUDA_AWARE")
    finally:
        if saved is None:
            os.environ.pop("RINGREDUCE_CUDA_AWARE", None)
        else:
            os.environ["RINGREDUCE_CUDA_AWARE"] = saved
    # Still usable after all of that.
    got = host(rr.allreduce(cuda.to_device(x), "sum"))
    check("usable after errors", differs(got, sum(np.arange(5.0) + r for r in range(P))))


def check_transport(expect_aware):
    dc = device_comm(get_comm())
    check("transport mode", None if expect_aware is None or dc.aware == expect_aware
          else f"aware={dc.aware}, expected {expect_aware}")
    if dc.aware:
        check("no staging when CUDA-aware", None if dc.pinned_bytes == 0
              else f"{dc.pinned_bytes} bytes pinned")
        return
    # Staged: a repeated call finds every buffer it needs in the pool.
    x = cuda.to_device(np.arange(1000.0))
    for alg in ("ring", "tree", "rhd", "doubling"):
        rr.allreduce(x, algorithm=alg, segment_bytes=800)
        before = dc.pinned_bytes
        rr.allreduce(x, algorithm=alg, segment_bytes=800)
        free = sum(b.size for bufs in dc.free.values() for b in bufs)
        check(f"staging buffers reused ({alg})",
              None if dc.pinned_bytes == before else f"{before} -> {dc.pinned_bytes} bytes")
        check(f"staging buffers all returned ({alg})",
              None if free == dc.pinned_bytes or P == 1
              else f"{free} of {dc.pinned_bytes} pinned bytes back in the pool")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--expect-aware", type=int, choices=(0, 1),
                        help="check that the transport is (1) or is not (0) CUDA-aware")
    args = parser.parse_args()
    ck.set_launch_config(2, 4)
    start = time.perf_counter()
    for part in (check_allreduce, check_out_and_in_place, check_grouped, check_async,
                 check_errors):
        part()
    check_transport(None if args.expect_aware is None else bool(args.expect_aware))
    failed = COMM.allreduce(len(failures))
    total = COMM.allreduce(checks)
    if RANK == 0:
        mode = "simulator" if numba_config.ENABLE_CUDASIM else "GPU"
        print(f"device checks: {total - failed} of {total} passed on {P} ranks "
              f"({mode}, CUDA-aware transport: {device_comm(get_comm()).aware}) "
              f"in {time.perf_counter() - start:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
