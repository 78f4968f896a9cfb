"""One user communicator's share of the engine: its traffic to and from the coordinator.

Per communicator the engine keeps a *channel*: a control communicator and a data
communicator, both private duplicates. Each cycle (``RINGREDUCE_CYCLE_TIME_MS``) goes as in
Horovod:

1. Every rank sends the tensors submitted since its last message (name and metadata) to the
   coordinator, rank 0 of the channel: one small message per rank per cycle, whatever the
   number of tensors.
2. The coordinator (:class:`coordinator.Coordinator`, the rules) counts submissions per name
   and decides what is ready, what is an error and what has stalled.
3. At the end of a cycle it sends every rank one response: the ready names, sorted, and the
   errors. All ranks apply responses in the order sent, so they run the same collectives in
   the same order whatever order the tensors were submitted in.
4. Applying a response (``execute.apply``) fuses the ready tensors into buckets and reduces
   each bucket with one allreduce on the data communicator, then completes the handles.
"""
import collections
import sys
import threading

from mpi4py import MPI

from ..errors import RankFailedError
from ..transport.comm import PoliteComm, private_dup
from ..transport.tags import TAG_REQUEST, TAG_RESPONSE
from .coordinator import Coordinator
from .execute import apply


class Channel:
    """Engine state for one user communicator."""

    def __init__(self, engine, user_comm, cfg, now):
        self.engine = engine
        self.user = user_comm
        self.ctrl = private_dup(user_comm)
        self.data = PoliteComm(user_comm)
        self.rank = self.ctrl.Get_rank()
        self.size = self.ctrl.Get_size()
        self.lock = threading.Lock()
        self.submitted = collections.deque()   # from user threads
        self.pending = {}                       # name -> Entry, waiting for a response
        self.counter = 0                        # unnamed tensors submitted so far
        self.sends = []
        # The engine thread runs a channel's device work on one GPU, the one current when
        # the first device array was submitted (one GPU per rank: the data-parallel norm).
        self.device = None
        self.coordinator = None
        self.failed = None  # the RankFailedError that broke this channel (see fail)
        if self.rank == 0:
            self.coordinator = Coordinator(
                self.size, cycle_time_s=cfg.cycle_time_ms / 1e3,
                stall_check_s=cfg.stall_check_seconds,
                stall_shutdown_s=cfg.stall_shutdown_seconds, now=now)

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

    def use_device(self, device):
        """Check that device work of this rank stays on one GPU (``device``: the GPU current
        in the submitting thread, None for host memory)."""
        if device is None:
            return
        with self.lock:
            if self.device is None:
                self.device = device
        if self.device != device:
            raise ValueError(f"allreduce_async: the device arrays of one rank must be on one "
                             f"GPU; this one was submitted with GPU {device} current, earlier "
                             f"ones with GPU {self.device}")

    def submit(self, entry):
        if self.failed is not None:  # a fresh error each time: a traceback of its own
            raise RankFailedError(str(self.failed), self.failed.failed)
        with self.lock:
            if entry.name in self.pending or any(e.name == entry.name for e in self.submitted):
                raise ValueError(f"an allreduce named {entry.name!r} is already in flight on "
                                 "this rank; names must be unique until their handle completes")
            self.submitted.append(entry)
        self.engine.wakeup.set()

    # -- engine thread -------------------------------------------------------------------
    def waiting(self):
        """Whether anything of this channel is in flight (then the engine polls)."""
        if self.failed is not None:
            return False
        return bool(self.pending or self.submitted
                    or (self.coordinator is not None and self.coordinator.has_work()))

    def progress(self, now):
        """One pass: send new submissions, run the coordinator (rank 0), apply responses.
        Returns whether anything happened."""
        if self.failed is not None:
            return False
        busy = False
        new, stamps = [], []
        with self.lock:
            while self.submitted:
                e = self.submitted.popleft()
                self.pending[e.name] = e
                new.append((e.name, e.meta))
                stamps.append(e.submitted)
        coord = self.coordinator
        if new:
            busy = True
            if coord is not None:
                # The coordinator's own tensors count from their submission; others' from
                # their request's arrival (their clocks are not ours).
                for item, stamp in zip(new, stamps):
                    coord.note(0, [item], stamp)
            else:
                self.sends.append(self.ctrl.isend(new, dest=0, tag=TAG_REQUEST))
        if coord is not None:
            status = MPI.Status()
            while self.ctrl.iprobe(source=MPI.ANY_SOURCE, tag=TAG_REQUEST, status=status):
                msg = self.ctrl.recv(source=status.Get_source(), tag=TAG_REQUEST)
                coord.note(status.Get_source(), msg, now)
                busy = True
            warning, shutdown = coord.inspect(now)
            for text in (shutdown, warning):
                if text:
                    sys.stderr.write(text + "\n")
                    sys.stderr.flush()
            if shutdown:
                self.engine.abort_after(5.0)
            response = coord.respond(now)
            if response is not None:
                for r in range(1, self.size):
                    self.sends.append(self.ctrl.isend(response, dest=r, tag=TAG_RESPONSE))
                apply(self, response, self.engine.timeline)
                if self.engine.timeline is not None:
                    self.engine.timeline.flush()
                busy = True
        else:
            while self.ctrl.iprobe(source=0, tag=TAG_RESPONSE):
                apply(self, self.ctrl.recv(source=0, tag=TAG_RESPONSE), None)
                busy = True
        if self.sends:
            self.sends = [r for r in self.sends if not r.Test()]
        return busy

    def fail_all(self, error):
        """Complete every handle in flight with ``error`` (the engine failed)."""
        for e in list(self.pending.values()) + list(self.submitted):
            e.handle.complete(error)

    def fail(self, error):
        """A rank of this channel is gone (``error``, a RankFailedError): every handle in
        flight gets it, every later submission raises it, and the channel does nothing more.
        Safe from any thread: it only reads the tables (snapshots) and completes handles."""
        if self.failed is None:
            self.failed = error
        self.fail_all(self.failed)
