"""The background engine behind ``allreduce_async``: negotiation, fusion, stall inspection.

One daemon thread per process does all of the engine's MPI traffic (mpi4py and the Numba
kernels release the GIL, so it runs while the caller computes). Per communicator it keeps a
*channel*: a control communicator and a data communicator, both private duplicates.

Each cycle (``RINGREDUCE_CYCLE_TIME_MS``) goes as in Horovod:

1. Every rank sends the tensors submitted since its last message (name, shape, dtype, op,
   algorithm) to the coordinator, rank 0 of the channel.
2. The coordinator counts submissions per name. A name every rank submitted, with the same
   metadata, is ready; one submitted with different metadata is an error; one some ranks
   submitted and others not for ``RINGREDUCE_STALL_CHECK_SECONDS`` draws a warning naming
   the missing ranks (and after ``RINGREDUCE_STALL_SHUTDOWN_SECONDS``, if set, an error).
3. At the end of a cycle the coordinator sends every rank one response: the ready names,
   sorted by name, and the errors. All ranks apply responses in the order sent, so they run
   the same collectives in the same order whatever order the tensors were submitted in.
4. Applying a response fuses the ready tensors into buckets (per dtype, op and algorithm, at
   most ``RINGREDUCE_FUSION_THRESHOLD`` bytes), reduces each bucket with one allreduce on
   the data communicator, and completes the handles.

Negotiation stays cheap on repeated steps: a request is one small message per rank per cycle,
whatever the number of tensors, and metadata is compared only at the coordinator.
"""
import atexit
import collections
import sys
import threading
import time

import numpy as np
from mpi4py import MPI

from . import _abort, _device, _topology
from ._allreduce import (MismatchError, RingReduceError, _check_out, _kernels, as_array,
                         check_op_algorithm, mismatch_message, run_algorithm)
from ._comm import PoliteComm, get_comm
from ._config import get_config, segment_size
from ._fusion import offsets_of, pack, plan_buckets, unpack
from ._timeline import Timeline

TAG_REQUEST = 21
TAG_RESPONSE = 22


class StallError(RingReduceError):
    """Some ranks waited longer than RINGREDUCE_STALL_SHUTDOWN_SECONDS for others."""


class Handle:
    """The pending result of ``allreduce_async``."""

    def __init__(self, name, out):
        self.name = name
        self._out = out
        self._event = threading.Event()
        self._error = None

    def done(self):
        """True once the result (or an error) is in; never blocks."""
        return self._event.is_set()

    def wait(self, timeout=None):
        """Block until the reduction finished; return the result or raise its error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # Wait in slices so Ctrl-C reaches the main thread.
        while not self._event.wait(0.1):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"allreduce {self.name!r} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._out

    def _finish(self, error=None):
        self._error = error
        self._event.set()

    def __repr__(self):
        return f"<Handle {self.name!r} {'done' if self.done() else 'pending'}>"


class _Entry:
    __slots__ = ("name", "arr", "flat_in", "flat_out", "result", "target", "op", "algorithm",
                 "seg", "handle", "meta", "submitted", "ready_time")
    memory = "host"  # device arrays come as _device.DeviceEntry, reduced apart from these

    def finish(self):
        """Copy the result into a non-contiguous ``out`` if needed; complete the handle."""
        if self.target is not None and not np.shares_memory(self.flat_out, self.target):
            self.target[...] = self.flat_out.reshape(self.target.shape)
        self.handle._finish()


class _Channel:
    """Engine state for one user communicator."""

    def __init__(self, engine, user_comm):
        self.engine = engine
        self.ctrl = user_comm.Dup()
        self.data = PoliteComm(user_comm)
        self.rank = self.ctrl.Get_rank()
        self.size = self.ctrl.Get_size()
        self.submitted = collections.deque()   # from user threads
        self.pending = {}                       # name -> _Entry, waiting for a response
        self.counter = 0                        # unnamed tensors submitted so far
        self.sends = []
        # coordinator state (rank 0)
        self.table = {}                         # name -> {rank: (meta, time)}
        self.ready = []
        self.errors = []
        self.warned = {}
        self.last_response = time.monotonic()

    # -- user thread ---------------------------------------------------------------------
    def entry_name(self, name):
        """``name``, or for None the next unnamed tensor's (by submission order, which every
        rank must then share); TypeError for anything but a str or None."""
        if name is None:
            self.counter += 1
            return f"allreduce.noname.{self.counter}"
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        return name

    def submit(self, entry):
        with self.engine.lock:
            if entry.name in self.pending or any(e.name == entry.name for e in self.submitted):
                raise ValueError(f"an allreduce named {entry.name!r} is already in flight on "
                                 "this rank; names must be unique until their handle completes")
            self.submitted.append(entry)
        self.engine.wakeup.set()

    # -- engine thread -------------------------------------------------------------------
    def progress(self, now, cfg):
        busy = False
        new, stamps = [], []
        with self.engine.lock:
            while self.submitted:
                e = self.submitted.popleft()
                self.pending[e.name] = e
                new.append((e.name, e.meta))
                stamps.append(e.submitted)
        if new:
            busy = True
            if self.rank == 0:
                # The coordinator's own tensors count from their submission; others' from
                # their request's arrival (their clocks are not ours).
                for item, stamp in zip(new, stamps):
                    self.note_requests(0, [item], stamp)
            else:
                self.sends.append(self.ctrl.isend(new, dest=0, tag=TAG_REQUEST))
        if self.rank == 0:
            status = MPI.Status()
            while self.ctrl.iprobe(source=MPI.ANY_SOURCE, tag=TAG_REQUEST, status=status):
                msg = self.ctrl.recv(source=status.Get_source(), tag=TAG_REQUEST)
                self.note_requests(status.Get_source(), msg, now)
                busy = True
            self.inspect_stalls(now, cfg)
            if (self.ready or self.errors) and now - self.last_response >= cfg.cycle_time_ms / 1e3:
                response = (sorted(self.ready), self.errors)
                self.ready, self.errors = [], []
                self.last_response = now
                for r in range(1, self.size):
                    self.sends.append(self.ctrl.isend(response, dest=r, tag=TAG_RESPONSE))
                self.apply(response)
                if self.engine.timeline is not None:
                    self.engine.timeline.flush()
                busy = True
        else:
            while self.ctrl.iprobe(source=0, tag=TAG_RESPONSE):
                self.apply(self.ctrl.recv(source=0, tag=TAG_RESPONSE))
                busy = True
        if self.sends:
            self.sends = [r for r in self.sends if not r.Test()]
        return busy

    def note_requests(self, rank, items, now):
        for name, meta in items:
            seen = self.table.setdefault(name, {})
            seen[rank] = (meta, now)
            if len(seen) == self.size:
                del self.table[name]
                metas = {m for m, _ in seen.values()}
                times = [t for _, t in seen.values()]
                if len(metas) == 1:
                    self.ready.append((name, min(times), max(times)))
                else:
                    self.errors.append((name, self.explain(name, seen)))
                self.warned.pop(name, None)

    def explain(self, name, seen):
        ranks = sorted(seen)
        first = seen[ranks[0]][0]
        for r in ranks[1:]:
            other = seen[r][0]
            for i, field in enumerate(("shape", "dtype", "op", "algorithm", "segment_bytes",
                                       "memory")):
                if other[i] != first[i]:
                    return (f"{mismatch_message('allreduce', field, ranks[0], first[i], r, other[i])}"
                            f" (tensor {name!r})")
        return f"Mismatched allreduce metadata for tensor {name!r}"

    def inspect_stalls(self, now, cfg):
        if not self.table or (cfg.stall_check_seconds <= 0 and cfg.stall_shutdown_seconds <= 0):
            return
        stalled = {}
        for name, seen in self.table.items():
            waited = now - min(t for _, t in seen.values())
            missing = tuple(r for r in range(self.size) if r not in seen)
            stalled[name] = (waited, missing, sorted(seen))
        if cfg.stall_shutdown_seconds > 0:
            dead = {n: v for n, v in stalled.items() if v[0] > cfg.stall_shutdown_seconds}
            if dead:
                text = self.stall_text(dead)
                sys.stderr.write(f"ringreduce: stall shutdown after "
                                 f"{cfg.stall_shutdown_seconds:g} s: {text}\n")
                for name in dead:
                    del self.table[name]
                    self.errors.append((name, f"stalled: {text}; shutting down after "
                                        f"RINGREDUCE_STALL_SHUTDOWN_SECONDS="
                                        f"{cfg.stall_shutdown_seconds:g}", "stall"))
                self.last_response = 0.0  # respond now
                self.engine.abort_after(5.0)
        if cfg.stall_check_seconds > 0:
            late = {n: v for n, v in stalled.items() if v[0] > cfg.stall_check_seconds
                    and now - self.warned.get(n, -1e18) > cfg.stall_check_seconds}
            if late:
                for n in late:
                    self.warned[n] = now
                sys.stderr.write(
                    f"ringreduce: stall warning: some ranks have waited more than "
                    f"{cfg.stall_check_seconds:g} s (RINGREDUCE_STALL_CHECK_SECONDS) for "
                    f"others: {self.stall_text(late)}\n")
                sys.stderr.flush()

    @staticmethod
    def stall_text(stalled):
        by_missing = collections.defaultdict(list)
        for name, (_, missing, _) in stalled.items():
            by_missing[missing].append(name)
        parts = []
        for missing, names in sorted(by_missing.items()):
            shown = ", ".join(repr(n) for n in sorted(names)[:10])
            more = f" and {len(names) - 10} more" if len(names) > 10 else ""
            parts.append(f"ranks {list(missing)} have not submitted {shown}{more}")
        return "; ".join(parts)

    def apply(self, response):
        ready, errors = response
        tl = self.engine.timeline if self.rank == 0 else None
        start = time.perf_counter()
        for err in errors:
            name, message = err[0], err[1]
            e = self.pending.pop(name, None)
            if e is not None:
                cls = StallError if len(err) > 2 else MismatchError
                e.handle._finish(cls(message))
        entries = []
        for name, first, last in ready:
            e = self.pending.pop(name)
            entries.append(e)
            if tl is not None:
                tl.phase(name, "WAIT_FOR_DATA", _pc(first), _pc(last))
                tl.phase(name, "NEGOTIATE", _pc(last), start)
        # Fuse consecutive tensors of one dtype, op and algorithm.
        groups = collections.OrderedDict()
        for e in entries:
            groups.setdefault((e.memory, e.flat_in.dtype, e.op, e.algorithm, e.seg),
                              []).append(e)
        cap = get_config().fusion_threshold
        for (memory, dtype, op, algorithm, seg), group in groups.items():
            if memory == "device":  # CUDA device arrays: fused and reduced on the GPU
                _device.engine_reduce_group(self, group, dtype, op, algorithm, seg, cap, tl,
                                            start)
                continue
            reduce, scale = _kernels(op, dtype)
            direct = seg if cap > 0 else 0  # as in grouped_allreduce
            for bucket in plan_buckets([e.flat_in.nbytes for e in group], cap, direct):
                self.reduce_bucket([group[j] for j in bucket], dtype, reduce, scale, algorithm,
                                   seg, tl, start)

    def reduce_bucket(self, bucket, dtype, reduce, scale, algorithm, seg, tl, queued):
        t0 = time.perf_counter()
        names = [e.name for e in bucket]
        try:
            if len(bucket) == 1:
                e = bucket[0]
                buf_in, buf_out = e.flat_in, e.flat_out
                t1 = t0
            else:
                offsets, total = offsets_of([e.flat_in for e in bucket])
                buf_out = buf_in = self.fusion_buffer(dtype, total)
                pack([e.flat_in for e in bucket], buf_in, offsets)
                t1 = time.perf_counter()
            if buf_in.size:
                run_algorithm(self.data, algorithm, buf_in, buf_out, reduce, seg)
            elif buf_out is not buf_in:
                buf_out[...] = buf_in
            if scale is not None:
                scale(buf_out, self.size)
            t2 = time.perf_counter()
            if len(bucket) > 1:
                unpack(buf_out, [e.flat_out for e in bucket], offsets)
            for e in bucket:
                e.finish()
            t3 = time.perf_counter()
        except Exception as exc:  # noqa: BLE001 - delivered to every waiting handle
            for e in bucket:
                e.handle._finish(RingReduceError(f"allreduce of {e.name!r} failed: {exc!r}"))
            return
        if tl is not None:
            name = algorithm if algorithm != "auto" else "auto"
            for e in bucket:
                tl.phase(e.name, "QUEUE", queued, t0)
                if len(bucket) > 1:
                    tl.phase(e.name, "PACK", t0, t1)
                tl.phase(e.name, "ALLREDUCE", t1, t2, algorithm=name,
                         bucket_tensors=len(bucket), bucket_bytes=int(buf_in.nbytes))
                if len(bucket) > 1:
                    tl.phase(e.name, "UNPACK", t2, t3)
        del names

    def fusion_buffer(self, dtype, n):
        buf = self.engine.fusion_buffers.get(dtype)
        if buf is None or buf.size < n:
            buf = self.engine.fusion_buffers[dtype] = np.empty(n, dtype)
        return buf[:n]


_T0_MONO = time.monotonic()
_T0_PC = time.perf_counter()


def _pc(mono):
    """A time.monotonic() stamp on the perf_counter clock (for the timeline)."""
    return mono - _T0_MONO + _T0_PC


class Engine:
    IDLE_WAKE = 0.05  # seconds between checks when nothing of this rank's is in flight

    def __init__(self):
        self.wakeup = threading.Event()
        self.lock = threading.Lock()
        self.channels = {}
        self.fusion_buffers = {}
        self.thread = None
        self.running = False
        self.timeline = None
        self.abort_at = None
        self.error = None

    def channel(self, comm):
        key = comm.handle
        ch = self.channels.get(key)
        if ch is None:
            ch = _Channel(self, comm)  # collective: duplicates the communicator
            with self.lock:
                self.channels[key] = ch
        if self.thread is None:
            cfg = get_config()
            if cfg.timeline and MPI.COMM_WORLD.Get_rank() == 0:
                self.timeline = Timeline(cfg.timeline)
                _abort.before_abort.append(self.timeline.flush)
            self.running = True
            self.thread = threading.Thread(target=self.loop, name="ringreduce-engine", daemon=True)
            self.thread.start()
            atexit.register(self.stop)
        return ch

    def abort_after(self, seconds):
        if self.abort_at is None:
            self.abort_at = time.monotonic() + seconds

    def loop(self):
        cfg = get_config()
        # While this rank waits for a response, poll every quarter cycle (a blocking MPI
        # wait would spin a core the caller computes on). With nothing of its own in flight
        # it has nothing to poll for: it sleeps until the next submission wakes it, or
        # IDLE_WAKE seconds pass (the coordinator's stall inspector runs then). A 0.1 ms
        # poll while idle cost about a quarter of the compute of 2 ranks on 2 cores
        # (benchmarks/train_scaling.py, docs/benchmarks.md "Training").
        poll = max(cfg.cycle_time_ms / 1e3 / 4, 50e-6)
        try:
            while self.running:
                now = time.monotonic()
                busy = False
                for ch in list(self.channels.values()):
                    busy |= ch.progress(now, cfg)
                if self.abort_at is not None and now > self.abort_at:
                    sys.stderr.write("ringreduce: stall shutdown: ending the job\n")
                    _abort._abort(1)
                if busy:
                    continue
                if any(ch.pending or ch.submitted or ch.ready or ch.errors
                       for ch in self.channels.values()):
                    time.sleep(poll)
                else:
                    self.wakeup.wait(self.IDLE_WAKE)
                    self.wakeup.clear()
        except Exception as exc:  # noqa: BLE001 - fail every handle, then let the hook abort
            self.error = exc
            for ch in self.channels.values():
                for e in list(ch.pending.values()) + list(ch.submitted):
                    e.handle._finish(RingReduceError(f"the ringreduce engine failed: {exc!r}"))
            raise

    def stop(self):
        self.running = False
        self.wakeup.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        if self.timeline is not None:
            self.timeline.close()


_engine = Engine()


def allreduce_async(x, op="sum", *, name=None, algorithm="auto", comm=None, out=None,
                    segment_bytes=None):
    """Start an allreduce in the background; returns a :class:`Handle`.

    Same arguments as :func:`allreduce`, plus ``name``: tensors are matched across ranks by
    name (unnamed ones by submission order on each rank), so ranks may submit in any order.
    Several handles can be in flight and waited in any order; ``handle.wait()`` returns the
    result (``out`` if given, else a new array) or raises the error every rank got.
    Tensors submitted within one cycle are fused into few messages. Don't modify ``x``
    until the handle is done. A CUDA device array is reduced on the GPU, its result is a
    device array.
    """
    if _engine.error is not None:
        raise RingReduceError(f"the ringreduce engine failed earlier: {_engine.error!r}")
    ch = _engine.channel(MPI.COMM_WORLD if comm is None else comm)
    if _device.is_device_array(x):  # CUDA device arrays: see _device.py
        return _device.allreduce_async_device(ch, x, op, name, algorithm, out, segment_bytes)
    arr = as_array(x)
    algorithm = check_op_algorithm(op, algorithm)
    _kernels(op, arr.dtype)
    target, same = _check_out(arr, out)
    seg = segment_size(segment_bytes)
    e = _Entry()
    e.name, e.arr, e.op, e.algorithm, e.seg = ch.entry_name(name), arr, op, algorithm, seg
    e.flat_in = arr.reshape(-1) if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(-1)
    if target is None:
        e.flat_out = np.empty(arr.size, arr.dtype)
    elif same:
        e.flat_out = e.flat_in
    elif target.flags.c_contiguous:
        e.flat_out = target.reshape(-1)
    else:
        e.flat_out = np.empty(arr.size, arr.dtype)
    e.target = target
    result = e.flat_out.reshape(arr.shape) if target is None else out
    e.handle = Handle(name, result)
    # Everything that shapes the messages: ranks that differ get an error, not a hang.
    e.meta = (arr.shape, str(arr.dtype), op, algorithm, e.seg, "host")
    e.submitted = time.monotonic()
    ch.submit(e)
    return e.handle


def init(comm=None):
    """Collective set-up, as ``hvd.init()``: validate and compare the configuration, duplicate
    the communicator for the library, split its ranks into nodes (``rr.local_rank()``) and
    start the background engine. Optional for the collectives (the first call of each kind
    does the rest), but call it at start-up: then a rank that stalls before its first
    allreduce is reported by the stall inspector instead of waiting silently in the set-up."""
    comm = MPI.COMM_WORLD if comm is None else comm
    get_comm(comm)
    _topology.split(comm)  # for rr.local_rank() and rr.local_size()
    _engine.channel(comm)
