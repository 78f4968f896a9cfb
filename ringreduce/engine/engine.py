"""The engine thread: one daemon thread per process does all of the engine's MPI traffic
(mpi4py and the Numba kernels release the GIL, so it runs while the caller computes), one
:class:`channel.Channel` per user communicator. See ``channel.py`` for a cycle."""
import atexit
import sys
import threading
import time

from mpi4py import MPI

from ..config import get_config
from ..errors import RankFailedError, RingReduceError
from ..transport import comm as _comm
from ..transport.comm import rank_failed
from . import abort
from .channel import Channel
from .timeline import Timeline


class Engine:
    IDLE_WAKE = 0.05  # seconds between checks when nothing of this rank's is in flight

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.wakeup = threading.Event()
        self.lock = threading.Lock()
        self.channels = {}
        self.thread = None
        self.running = False
        self.timeline = None
        self.abort_at = None
        self.error = None

    def channel(self, comm):
        """The channel of user communicator ``comm`` (collective when it is made: it
        duplicates the communicator); starts the thread on first use. The channel is kept
        with the communicator (``comm_state``), so every rank finds the same one."""
        state = _comm.comm_state(comm)
        ch = state.get("engine")
        if ch is None or self.channels.get(id(ch)) is not ch:  # none yet, or reset since
            ch = state["engine"] = Channel(self, comm, get_config(), self.clock())
            with self.lock:
                self.channels[id(ch)] = ch
        if self.thread is None:
            cfg = get_config()
            if cfg.timeline and MPI.COMM_WORLD.Get_rank() == 0:
                self.timeline = Timeline(cfg.timeline)
                abort.before_abort.append(self.timeline.flush)
            self.running = True
            self.thread = threading.Thread(target=self.loop, name="ringreduce-engine",
                                           daemon=True)
            self.thread.start()
            atexit.register(self.stop)
        return ch

    def check_healthy(self):
        if self.error is not None:
            raise RingReduceError(f"the ringreduce engine failed earlier: {self.error!r}")

    def abort_after(self, seconds):
        if self.abort_at is None:
            self.abort_at = self.clock() + seconds

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
                now = self.clock()
                busy = False
                with self.lock:
                    channels = list(self.channels.values())
                for ch in channels:
                    busy |= _progress(ch, now)
                if self.abort_at is not None and now > self.abort_at:
                    sys.stderr.write("ringreduce: stall shutdown: ending the job\n")
                    abort.abort(1)
                if busy:
                    continue
                if any(ch.waiting() for ch in channels):
                    time.sleep(poll)
                else:
                    self.wakeup.wait(self.IDLE_WAKE)
                    self.wakeup.clear()
        except Exception as exc:  # noqa: BLE001 - fail every handle, then let the hook abort
            self.error = exc
            for ch in self.channels.values():
                ch.fail_all(RingReduceError(f"the ringreduce engine failed: {exc!r}"))
            raise

    def reset(self):
        """Forget every channel: after a lost rank their communicators are broken
        (``ringreduce.elastic`` calls this with ``transport.comm.reset``). Handles still in
        flight complete with RankFailedError; the thread goes on, and the next
        ``allreduce_async`` or ``init`` makes a channel on the new world. Local."""
        with self.lock:
            old, self.channels = list(self.channels.values()), {}
        for ch in old:
            ch.fail(ch.failed or RankFailedError(
                "allreduce_async: the engine was reset onto a new world (a rank was lost) "
                "while this allreduce was in flight; submit it again"))
        self.abort_at = None

    def forget(self, state):
        """The user freed a communicator (``state`` is what comm_state kept for it): its
        channel goes, and whatever of it was still in flight fails instead of waiting for
        ever. Safe from any thread (it runs inside the user's ``Free``)."""
        ch = state.get("engine")
        with self.lock:
            if ch is None or self.channels.get(id(ch)) is not ch:
                return  # none, or forgotten by a reset since
            del self.channels[id(ch)]
        if ch.waiting():
            ch.fail(RingReduceError("allreduce_async: the communicator was freed while this "
                                    "allreduce was in flight on it; wait for every handle "
                                    "before freeing"))

    def stop(self):
        self.running = False
        self.wakeup.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        if self.timeline is not None:
            self.timeline.close()


def _progress(ch, now):
    """``ch.progress(now)``; a lost rank (ULFM) fails that channel instead of the engine."""
    try:
        return ch.progress(now)
    except RankFailedError as exc:
        ch.fail(exc)
    except MPI.Exception as exc:
        lost = rank_failed(exc, "allreduce_async", ch.user)
        if lost is None:
            raise
        ch.fail(lost)
    return True


ENGINE = Engine()
_comm.on_free.append(ENGINE.forget)
