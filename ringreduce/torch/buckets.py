"""The gradient buckets of ``DistributedOptimizer``: reduced in a fixed order, one at a time,
on one thread, while backward computes the gradients of the next ones.

The parameters are cut into buckets once, in the reverse of the optimizer's order (about the
order backward produces their gradients, as DDP's buckets are): consecutive parameters until
a bucket holds ``BUCKET_BYTES`` (Horovod's ``groups`` and ``num_groups`` give them instead).
A parameter's hook hands its gradient to its bucket; once every gradient of the lowest
bucket not yet started is in, that bucket, and every full one after it, is queued for the
thread as one ``grouped_allreduce`` (the ring runs over the gradients where they lie, the
small ones fused), in bucket order. Every rank so runs the same collectives in the same
order, whatever order its hooks fired in, with no negotiation per tensor: the header
agreement of each grouped call still makes a shape or dtype that differs between ranks an
error on every rank. ``synchronize`` hands in the gradients whose hook did not fire, queues
what is left, and waits.

Why not the background engine (``rr.allreduce_async``, one request per gradient, fused per
cycle, as Horovod's optimizer does): on the development machine its cycles ran about thirty
small collectives per ResNet-18 step, each waiting for the other rank's engine thread, and
the step took 1.3x its compute; the buckets cost what one grouped call after backward costs
(docs/benchmarks.md, "PyTorch").
"""
import threading

from ..collectives.grouped import grouped_allreduce
from ..collectives.header import fail_everywhere, negotiate
from ..config import is_whole
from ..core.tables import signature
from ..transport.comm import PoliteComm, world
from .compression import split
from .tensors import DTYPES, view
from .work import Executor, device_context

# DDP's default bucket_cap_mb: large enough that few collectives run per step, small enough
# that the first ones start while backward still has most of its work ahead.
BUCKET_BYTES = 25 << 20


def plan(params, groups=None, num_groups=0, cap=None):
    """The buckets, lists of parameters, in the order they are reduced. ``groups``: lists of
    parameters reduced together (Horovod's), the others one bucket each; ``num_groups``:
    that many buckets of consecutive parameters (by count, as Horovod splits); else by
    bytes up to ``cap`` (default :data:`BUCKET_BYTES`), in the reverse of ``params``' order."""
    cap = BUCKET_BYTES if cap is None else cap
    if groups is not None:
        seen, out = set(), []
        for i, g in enumerate(groups):
            g = list(g)
            for p in g:
                if not any(p is q for q in params):
                    raise ValueError(f"groups[{i}] holds a tensor that is not one of the "
                                     "optimizer's parameters that require grad")
                if id(p) in seen:
                    raise ValueError(f"groups[{i}] repeats a parameter already in a group")
                seen.add(id(p))
            if g:
                out.append(g)
        return out + [[p] for p in reversed(params) if id(p) not in seen]
    if not is_whole(num_groups, 0):
        raise ValueError(f"num_groups must be an int >= 0, got {num_groups!r}")
    order = list(reversed(params))
    if num_groups:
        n = min(num_groups, len(order)) or 1
        size, extra = divmod(len(order), n)
        out, start = [], 0
        for k in range(n):
            end = start + size + (k < extra)
            out.append(order[start:end])
            start = end
        return [b for b in out if b]
    out, bucket, nbytes = [], [], 0
    for p in order:
        bucket.append(p)
        nbytes += p.numel() * p.element_size()
        if nbytes >= cap:
            out.append(bucket)
            bucket, nbytes = [], 0
    return out + ([bucket] if bucket else [])


class Slot:
    """One gradient on its way: what is reduced (``x``, perhaps a compressed or predivided
    copy) and how to turn it back into ``p.grad``; or the ``error`` that kept this rank from
    handing it in, which its bucket's collective then raises on every rank."""
    __slots__ = ("p", "x", "ctx", "compressor", "wire", "error")

    def __init__(self, p, x=None, ctx=None, compressor=None, wire=None, error=None):
        self.p, self.x, self.ctx, self.compressor, self.wire = p, x, ctx, compressor, wire
        self.error = error


class Buckets:
    """The buckets of one optimizer and the thread that reduces them (module docstring)."""

    def __init__(self, buckets, op):
        self.buckets = buckets
        self.op = op  # "avg" or "sum"
        self.where = {p: k for k, b in enumerate(buckets) for p in b}
        self.lock = threading.Lock()
        self.reset()
        _agree(_shared()[0], buckets)

    def reset(self):
        self.slots = [dict() for _ in self.buckets]
        self.next = 0
        self.works = []

    def pending(self):
        return any(self.slots) or bool(self.works)

    def add(self, p, grad, compression, predivide):
        """Hand in ``p``'s gradient ``grad`` (a detached tensor); queues every bucket that is
        now complete and next in order."""
        wire, compressor = split(compression, grad, self.op)
        x, ctx = compressor.compress(grad)
        if predivide != 1.0:
            x = x / predivide  # a copy: the gradient itself is written at the end
        if not x.is_contiguous():
            x = x.contiguous()
        self._put(Slot(p, x, ctx, compressor, wire))

    def fail(self, p, error):
        """``p``'s gradient could not be handed in: its bucket raises ``error`` on every
        rank instead of reducing (so no rank waits for this one in a collective)."""
        self._put(Slot(p, error=error))

    def _put(self, slot):
        with self.lock:
            self.slots[self.where[slot.p]][slot.p] = slot
            self._queue_ready()

    def has(self, p):
        return p in self.slots[self.where[p]]

    def _queue_ready(self):
        while self.next < len(self.buckets) and len(self.slots[self.next]) == len(
                self.buckets[self.next]):
            slots = [self.slots[self.next][p] for p in self.buckets[self.next]]
            comm, executor = _shared()  # the world's now (ringreduce.elastic may replace it)
            self.works.append((slots, executor.run(self._collective(comm, slots), True)))
            self.next += 1

    def _collective(self, comm, slots):
        op = self.op
        error = next((s.error for s in slots if s.error is not None), None)
        if error is not None:
            return lambda: fail_everywhere(comm, error)
        ctx = device_context([s.x for s in slots])

        def run():
            with ctx:
                for wire in dict.fromkeys(s.wire for s in slots):
                    arrays = [view(s.x) for s in slots if s.wire == wire]
                    grouped_allreduce(arrays, op, comm=comm, inplace=True, compression=wire)
        return run

    def finish(self, post):
        """Queue what is left, wait for every bucket, and write the results into the
        gradients (times ``post``); the first error raises, after all buckets are done."""
        with self.lock:
            self._queue_ready()
            works = self.works
            if self.next != len(self.buckets):
                raise AssertionError("DistributedOptimizer: a bucket was left without all "
                                     "of its gradients")
            self.reset()
        error = None
        for slots, work in works:
            try:
                work.wait()
            except Exception as exc:  # noqa: BLE001 - raised once every bucket is done
                error = error or exc
                continue
            for s in slots:
                result = s.compressor.decompress(s.x, s.ctx)
                if post != 1.0:
                    result = result * post
                if result.data_ptr() != s.p.grad.data_ptr():
                    s.p.grad.copy_(result)
        if error is not None:
            raise error


def _agree(comm, buckets):
    """Every rank cut the same buckets of the same parameters (collective): else a rank with
    more buckets than another would wait in a collective the other never enters. A model
    that differs between ranks is a MismatchError on every rank, naming the first parameter
    (in bucket order) that differs."""
    ps = [p for b in buckets for p in b]
    shapes = tuple(tuple(p.shape) for p in ps)
    sizes = tuple(len(b) for b in buckets)
    sig = signature("DistributedOptimizer", len(ps), shapes,
                    tuple(DTYPES.index(p.dtype) if p.dtype in DTYPES else -1 for p in ps),
                    sizes, tuple(int(p.is_cuda) for p in ps))
    negotiate(comm, sig, None, lambda: {
        "call": "DistributedOptimizer", "tensors": len(ps), "shapes": shapes,
        "dtypes": tuple(str(p.dtype) for p in ps), "buckets": sizes,
        "devices": tuple(str(p.device) for p in ps)})


_SHARED = {}


def _shared():
    """The communicator (a private duplicate of the world, polite waits) and the thread that
    every optimizer of this process reduces its buckets over: made by the first optimizer
    (collective, as every rank makes its optimizers in the same order), again after the
    world changed (``ringreduce.elastic``)."""
    w = world()
    got = _SHARED.get("world")
    if got is None or got[0] is not w:
        got = _SHARED["world"] = (w, PoliteComm(w), Executor("optimizer"))
    return got[1], got[2]
