"""Running a coordinator's response on the engine thread: fuse, reduce, complete.

Ready tensors are grouped by (memory, dtype, op, algorithm, segment size) in response order,
cut into buckets by the same plan as ``grouped_allreduce`` (``collectives.grouped``), and each
bucket is reduced by the same :func:`reduce_bucket` over the channel's data communicator. A
failure in one bucket is delivered to the handles of that bucket; the others go on.
"""
import time

from ..collectives.grouped import bucket_plan, reduce_bucket
from ..config import get_config
from ..errors import MismatchError, RingReduceError, StallError
from ..transport.comm import rank_failed

_T0_MONO = time.monotonic()
_T0_PC = time.perf_counter()


def _pc(mono):
    """A time.monotonic() stamp on the perf_counter clock (for the timeline)."""
    return mono - _T0_MONO + _T0_PC


class Entry:
    """What the engine keeps of one ``allreduce_async``: the 1-D buffers it reduces, the
    ``out`` to write back into, the metadata every rank must share, and the handle."""
    __slots__ = ("name", "mem", "flat_in", "flat_out", "target", "write_back", "op",
                 "algorithm", "seg", "codec", "residual", "handle", "meta", "submitted")

    def finish(self):
        """Copy the result into a non-contiguous ``out`` if needed."""
        if self.write_back:
            self.mem.write_back(self.target, self.flat_out)


def apply(ch, response, tl):
    """Apply ``response`` on channel ``ch``; ``tl``: the timeline (rank 0) or None."""
    ready, errors = response
    start = time.perf_counter()
    for err in errors:
        e = ch.pending.pop(err[0], None)
        if e is not None:
            cls = StallError if len(err) > 2 else MismatchError
            e.handle.complete(cls(err[1]))
    groups = {}
    for name, first, last in ready:
        e = ch.pending.pop(name)
        key = (e.mem.name, e.flat_in.dtype, e.op, e.algorithm, e.seg,
               e.codec and e.codec.compression, e.residual is not None)
        groups.setdefault(key, []).append(e)
        if tl is not None:
            tl.phase(name, "WAIT_FOR_DATA", _pc(first), _pc(last))
            tl.phase(name, "NEGOTIATE", _pc(last), start)
    cap = get_config().fusion_threshold
    for (_, dtype, op, algorithm, seg, _, _), group in groups.items():
        mem = group[0].mem
        reduce, scale = mem.kernels(op, dtype)
        with mem.on_device(ch.device):
            for _, members in bucket_plan(mem, [e.flat_in for e in group], cap, seg):
                _reduce(ch, mem, [group[j] for j in members], dtype, reduce, scale, algorithm,
                        seg, tl, start)


def _reduce(ch, mem, bucket, dtype, reduce, scale, algorithm, seg, tl, queued):
    times = [] if tl is not None else None
    try:
        residuals = None if bucket[0].residual is None else [e.residual for e in bucket]
        nbytes = reduce_bucket(ch.data, mem, [e.flat_in for e in bucket],
                               [e.flat_out for e in bucket], dtype, reduce, scale, algorithm,
                               seg, times, bucket[0].codec, residuals)
        for e in bucket:
            e.finish()
        mem.sync()  # the result is complete before anyone can wait on it
    except Exception as exc:  # noqa: BLE001 - delivered to every waiting handle
        lost = rank_failed(exc, "allreduce_async", ch.user)
        for e in bucket:
            e.handle.complete(lost or RingReduceError(f"allreduce of {e.name!r} failed: {exc!r}"))
        if lost is not None:
            raise lost  # the channel is broken: the engine fails it (engine.py)
        return
    for e in bucket:
        e.handle.complete()
    if tl is not None:
        t0, t1, t2, t3 = times
        t3 = max(t3, time.perf_counter())
        for e in bucket:
            tl.phase(e.name, "QUEUE", queued, t0)
            if len(bucket) > 1:
                tl.phase(e.name, "PACK", t0, t1)
            tl.phase(e.name, "ALLREDUCE", t1, t2, algorithm=algorithm,
                     bucket_tensors=len(bucket), bucket_bytes=int(nbytes), memory=mem.name)
            if len(bucket) > 1:
                tl.phase(e.name, "UNPACK", t2, t3)
