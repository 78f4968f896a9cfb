"""``allreduce_async`` and ``init``: the caller's side of the engine."""

from ..collectives.calls import check_out, output_buffer, resolve_algorithm
from ..collectives.compress import Codec, check_residuals
from ..core.tables import check_compression
from ..config import segment_size
from ..memory import backend_of
from ..transport import topology
from ..transport.comm import detects_failures, get_comm, world
from .engine import ENGINE
from .execute import Entry
from .handle import Handle


@detects_failures
def allreduce_async(x, op="sum", *, name=None, algorithm="auto", comm=None, out=None,
                    segment_bytes=None, compression=None, residual=None):
    """Start an allreduce in the background; returns a :class:`Handle`.

    Same arguments as :func:`allreduce`, plus ``name``: tensors are matched across ranks by
    name (unnamed ones by submission order on each rank), so ranks may submit in any order.
    Several handles can be in flight and waited in any order; ``handle.wait()`` returns the
    result (``out`` if given, else a new array) or raises the error every rank got.
    Tensors submitted within one cycle are fused into few messages. Don't modify ``x``
    until the handle is done. A CUDA device array is reduced on the GPU, its result is a
    device array. ``compression`` and ``residual`` (error feedback: a float32 array of x's
    shape, updated in place when the handle completes) as for ``grouped_allreduce``.
    """
    ENGINE.check_healthy()
    ch = ENGINE.channel(world() if comm is None else comm)
    mem = backend_of(x)
    arr = mem.view(x)
    algorithm = resolve_algorithm(mem, op, algorithm)
    shape, dtype = mem.shape(arr), mem.dtype(arr)
    mem.kernels(op, dtype)
    check_compression(compression, dtype, op)
    codec = compression and Codec(mem, compression, op)
    residuals = check_residuals(mem, None if residual is None else [residual], [arr],
                                compression)
    target, same = check_out(mem, x, arr, out)
    mem.prepare()
    seg = segment_size(segment_bytes)
    ch.use_device(mem.device())
    e = Entry()
    e.name, e.mem, e.op, e.algorithm, e.seg = ch.entry_name(name), mem, op, algorithm, seg
    e.codec = codec
    if residuals is not None and not mem.contiguous(residuals[0]):
        raise ValueError("residual must be a contiguous array (it is updated in place)")
    e.residual = None if residuals is None else mem.flat(residuals[0])
    # A non-contiguous x is copied now: the caller may not touch x, but its layout stays.
    e.flat_in = mem.flatten(arr)
    e.flat_out, e.write_back = output_buffer(mem, arr, e.flat_in, target, same, False)
    e.target = target
    e.handle = Handle(name, e.flat_out.reshape(shape) if target is None else out)
    # Everything that shapes the messages: ranks that differ get an error, not a hang.
    e.meta = (shape, str(dtype), op, algorithm, seg, mem.name, compression)
    e.submitted = ENGINE.clock()
    # The engine thread reads x through MPI or a staging copy: the caller's kernels that
    # produce x, and the copy above, must be done by then.
    mem.sync()
    ch.submit(e)
    return e.handle


@detects_failures
def init(comm=None):
    """Collective set-up, as ``hvd.init()``: validate and compare the configuration, duplicate
    the communicator for the library, split its ranks into nodes (``rr.local_rank()``) and
    start the background engine. Optional for the collectives (the first call of each kind
    does the rest), but call it at start-up: then a rank that stalls before its first
    allreduce is reported by the stall inspector instead of waiting silently in the set-up."""
    comm = world() if comm is None else comm
    get_comm(comm)
    topology.split(comm)  # for rr.local_rank() and rr.local_size()
    ENGINE.channel(comm)
