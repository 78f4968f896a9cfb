"""The ``torch.distributed`` backend ``"ringreduce"``: a process group written in Python whose
collectives are ringreduce's own.

    import ringreduce.torch                    # registers the backend
    dist.init_process_group("ringreduce")      # under mpiexec: rank and size from MPI
    model = DistributedDataParallel(model)     # unchanged

| torch.distributed call | ringreduce collective |
|---|---|
| ``all_reduce`` (SUM, AVG, MIN, MAX, PRODUCT), ``reduce`` | ``allreduce`` (in place) |
| ``broadcast`` | ``broadcast`` (in place) |
| ``all_gather``, ``all_gather_into_tensor`` | ``allgather`` |
| ``reduce_scatter``, ``reduce_scatter_tensor`` | ``reduce_scatter`` |
| ``barrier`` | ``barrier`` |
| ``new_group`` | a sub-communicator (``MPI_Comm_split``) with a group of its own |

Every call goes through ringreduce's header agreement on the group's own communicator, in
call order (``work.py``), so a shape, dtype or op that differs between ranks, or one rank
calling another collective, raises on every rank and the group stays usable. A tensor that
cannot be served (BAND or PREMUL_SUM, a bool tensor, sparse, a wrong output size) raises
on the rank that has it, and the same call raises on every other rank, naming it.

CPU tensors are reduced in their own memory (numpy views, no copies; bfloat16 through its
bits, ``tensors.py``); CUDA tensors take the device path (Numba-CUDA kernels, CUDA-aware MPI
or staging through pinned host buffers). bfloat16 is reduced in bfloat16: each reduction
step adds two bfloat16 values in float32 and rounds once to nearest-even.

Point-to-point calls, ``all_to_all``, ``gather`` and ``scatter`` are not served.
"""

import numpy as np
import torch
import torch.distributed as dist
from mpi4py import MPI

from ..collectives.allreduce import allreduce
from ..collectives.grouped import grouped_allreduce
from ..collectives.header import fail_everywhere
from ..collectives.moves import allgather, barrier, broadcast, reduce_scatter
from ..config import check_agreement
from ..transport.comm import PoliteComm
from .tensors import flat_view, op_name, view
from .work import Executor, device_context, warm_up

BACKEND = "ringreduce"


def _is_async(opts):
    return bool(getattr(opts, "asyncOp", True)) if opts is not None else True


def _flat_in(t, what):
    """A contiguous 1-D view of ``t`` (a copy only if ``t`` is not contiguous)."""
    return flat_view(t.detach().reshape(-1).contiguous(), what)


def _check_same(a, b, what):
    if a.dtype != b.dtype or a.device != b.device:
        raise ValueError(f"{what} must have the input's dtype {b.dtype} on {b.device}, got "
                         f"{a.dtype} on {a.device}")


class ProcessGroupRingReduce(dist.ProcessGroup):
    """A torch process group over an MPI communicator (module docstring)."""

    def __init__(self, mpi_comm, label="default"):
        super().__init__(mpi_comm.Get_rank(), mpi_comm.Get_size())
        self._comm = PoliteComm(mpi_comm)  # a private duplicate, polite waits (overlap)
        check_agreement(self._comm.mpi)
        self._exec = Executor(label)

    # -- what torch asks of every process group --------------------------------------------
    def getBackendName(self):
        return BACKEND

    def __repr__(self):
        return f"<ProcessGroupRingReduce rank {self.rank()} of {self.size()}>"

    def _run(self, tensors, opts, prepare):
        """Validate with ``prepare()`` (local, returns the collective to run); a failure there
        is sent to every rank through the header pass, so the others raise too."""
        c = self._comm
        ctx = device_context(tensors)

        def collective():
            with ctx:
                try:
                    run = prepare()
                except Exception as exc:  # noqa: BLE001 - every rank must hear of it
                    fail_everywhere(c, exc)
                return run()
        return self._exec.run(collective, _is_async(opts))

    # -- reductions ------------------------------------------------------------------------
    def allreduce(self, tensors, opts=None):
        c = self._comm

        def prepare():
            op = op_name(opts.reduceOp if opts is not None else dist.ReduceOp.SUM)
            views = [view(t, f"all_reduce tensor {i}") for i, t in enumerate(tensors)]
            if len(views) == 1:
                return lambda: (allreduce(views[0], op, comm=c, out=views[0]), tensors)[1]
            return lambda: (grouped_allreduce(views, op, comm=c, inplace=True), tensors)[1]
        return self._run(tensors, opts, prepare)

    def allreduce_coalesced(self, tensors, opts=None):
        return self.allreduce(tensors, opts)

    def reduce(self, tensors, opts=None):
        """Every rank gets the result (torch leaves the non-root tensors unspecified)."""
        return self.allreduce(tensors, opts)

    def broadcast(self, tensors, opts=None):
        c = self._comm
        root = opts.rootRank if opts is not None else 0

        def prepare():
            views = [view(t, f"broadcast tensor {i}") for i, t in enumerate(tensors)]

            def run():
                for v in views:
                    broadcast(v, root, comm=c, out=v)
                return tensors
            return run
        return self._run(tensors, opts, prepare)

    # -- gathers and scatters --------------------------------------------------------------
    def _gather_flat(self, out_t, in_t, what):
        """``allgather`` of contiguous ``in_t`` into ``out_t`` (p times its elements)."""
        c, p = self._comm, self.size()
        _check_same(out_t, in_t, f"{what} output")
        if out_t.numel() != p * in_t.numel():
            raise ValueError(f"{what}: the output must hold {p} x {in_t.numel()} = "
                             f"{p * in_t.numel()} elements (the input's, once per rank), got "
                             f"{out_t.numel()}")
        x = _flat_in(in_t, f"{what} input")
        if out_t.is_contiguous():
            y = flat_view(out_t, f"{what} output")
            return lambda: allgather(x, comm=c, out=y)
        buf = torch.empty(out_t.numel(), dtype=out_t.dtype, device=out_t.device)
        y = flat_view(buf)
        return lambda: (allgather(x, comm=c, out=y), out_t.copy_(buf.view(out_t.shape)))

    def allgather(self, output_tensors, input_tensors, opts=None):
        p = self.size()

        def prepare():
            runs = []
            for i, (outs, inp) in enumerate(zip(output_tensors, input_tensors)):
                if len(outs) != p:
                    raise ValueError(f"all_gather needs a list of {p} output tensors (one per "
                                     f"rank), got {len(outs)}")
                for r, o in enumerate(outs):
                    _check_same(o, inp, f"all_gather output {r}")
                    if o.numel() != inp.numel():
                        raise ValueError(f"all_gather output {r} must have the input's "
                                         f"{inp.numel()} elements, got {o.numel()}")
                buf = torch.empty(p * inp.numel(), dtype=inp.dtype, device=inp.device)
                gather = self._gather_flat(buf, inp, "all_gather")
                runs.append((gather, buf, outs, inp.numel()))

            def run():
                for gather, buf, outs, n in runs:
                    gather()
                    for r, o in enumerate(outs):
                        o.copy_(buf[r * n:(r + 1) * n].view(o.shape))
                return output_tensors
            return run
        return self._run(list(input_tensors), opts, prepare)

    def _allgather_base(self, output, input, opts=None):
        return self._run([input], opts, lambda: self._returning(
            self._gather_flat(output, input, "all_gather_into_tensor"), [output]))

    def all_gather_single(self, output, input, opts=None):
        return self._allgather_base(output, input, opts)

    @staticmethod
    def _returning(run, value):
        return lambda: (run(), value)[1]

    def _scatter_flat(self, out_t, in_t, opts, what):
        c, p = self._comm, self.size()
        op = op_name(opts.reduceOp if opts is not None else dist.ReduceOp.SUM)
        _check_same(out_t, in_t, f"{what} output")
        if in_t.numel() != p * out_t.numel():
            raise ValueError(f"{what}: the input must hold {p} x {out_t.numel()} = "
                             f"{p * out_t.numel()} elements (one output's worth per rank), "
                             f"got {in_t.numel()}")
        x = _flat_in(in_t, f"{what} input")
        if out_t.is_contiguous():
            y = flat_view(out_t, f"{what} output")
            return lambda: reduce_scatter(x, op, comm=c, out=y)
        buf = torch.empty(out_t.numel(), dtype=out_t.dtype, device=out_t.device)
        y = flat_view(buf)
        return lambda: (reduce_scatter(x, op, comm=c, out=y),
                        out_t.copy_(buf.view(out_t.shape)))

    def reduce_scatter(self, output_tensors, input_tensors, opts=None):
        p = self.size()

        def prepare():
            runs = []
            for out, ins in zip(output_tensors, input_tensors):
                if len(ins) != p:
                    raise ValueError(f"reduce_scatter needs a list of {p} input tensors (one "
                                     f"per rank), got {len(ins)}")
                for r, t in enumerate(ins):
                    _check_same(t, out, f"reduce_scatter input {r}")
                    if t.numel() != out.numel():
                        raise ValueError(f"reduce_scatter input {r} must have the output's "
                                         f"{out.numel()} elements, got {t.numel()}")
                whole = torch.cat([t.detach().reshape(-1) for t in ins]) if out.numel() else (
                    torch.empty(0, dtype=out.dtype, device=out.device))
                runs.append(self._scatter_flat(out, whole, opts, "reduce_scatter"))
            return lambda: ([r() for r in runs], output_tensors)[1]
        return self._run(list(output_tensors), opts, prepare)

    def _reduce_scatter_base(self, output, input, opts=None):
        return self._run([input], opts, lambda: self._returning(
            self._scatter_flat(output, input, opts, "reduce_scatter_tensor"), [output]))

    def reduce_scatter_single(self, output, input, opts=None):
        return self._reduce_scatter_base(output, input, opts)

    def barrier(self, opts=None):
        c = self._comm
        return self._run([], opts, lambda: lambda: (barrier(c), [])[1])

    # -- not served ------------------------------------------------------------------------
    def _not_served(self, name):
        raise RuntimeError(f"the ringreduce backend serves all_reduce, reduce, broadcast, "
                           f"all_gather, all_gather_into_tensor, reduce_scatter, "
                           f"reduce_scatter_tensor and barrier, not {name}; use a gloo group "
                           f"for it")

    def send(self, *args):
        self._not_served("send")

    def recv(self, *args):
        self._not_served("recv")

    def recv_anysource(self, *args):
        self._not_served("recv")

    def alltoall(self, *args):
        self._not_served("all_to_all")

    def alltoall_base(self, *args):
        self._not_served("all_to_all_single")

    def gather(self, *args):
        self._not_served("gather")

    def scatter(self, *args):
        self._not_served("scatter")

    # -- sub-groups ------------------------------------------------------------------------
    def new_group(self, ranks, timeout=None, backend=None, pg_options=None, group_name=None,
                  group_desc=None):
        """torch's ``new_group`` (called on every rank of this group): the members get a
        group over a sub-communicator, the others None. Ranks that ask for different
        members all raise, naming them."""
        if backend is not None and str(backend).lower() != BACKEND:
            raise ValueError(f"new_group under the ringreduce default group makes ringreduce "
                             f"groups, got backend={backend!r}; for a gloo group initialise "
                             f"gloo with its own store (see ringreduce.torch's docs)")
        ranks = sorted(int(r) for r in (range(self.size()) if ranks is None else ranks))
        members = np.zeros(self.size(), np.uint8)
        members[ranks] = 1
        c = self._comm

        def make():
            everyone = allgather(members, comm=c).reshape(self.size(), self.size())
            differ = [r for r in range(self.size()) if not np.array_equal(everyone[r], members)]
            if differ:
                other = differ[0]
                raise ValueError(f"new_group: rank {self.rank()} asked for ranks {ranks}, but "
                                 f"rank {other} asked for "
                                 f"{[int(i) for i in np.flatnonzero(everyone[other])]}; every "
                                 "rank must pass the same ranks")
            mine = self.rank() in ranks
            sub = c.mpi.Split(0 if mine else MPI.UNDEFINED,
                              ranks.index(self.rank()) if mine else 0)
            if not mine:
                return None
            try:
                return ProcessGroupRingReduce(sub, group_name or f"group{ranks}")
            finally:
                sub.Free()
        return self._exec.run(make, False).get_future().value()

    def shutdown(self):
        self._exec.close()

    def abort(self):
        self._exec.close()


def _agree_on_ranks(opts):
    """Collective over MPI_COMM_WORLD: every rank checks that torch's rank and world size
    are MPI's, and all raise together if any does not match."""
    world = MPI.COMM_WORLD
    claims = allgather(np.array([opts.group_rank, opts.group_size], np.int64)).reshape(-1, 2)
    bad = [(r, int(k[0]), int(k[1])) for r, k in enumerate(claims)
           if k[0] != r or k[1] != world.Get_size()]
    if bad:
        r, k, n = bad[0]
        raise ValueError(f"the ringreduce backend takes its ranks from MPI: MPI rank {r} of "
                         f"{world.Get_size()} was given torch rank {k} of {n}; leave rank and "
                         "world_size out under mpiexec (or give MPI's)")


def create(opts, backend_options=None):
    """The backend's creator for ``register_backend(..., extended_api=True)``."""
    ranks = list(opts.global_ranks_in_group)
    world = MPI.COMM_WORLD
    warm_up()
    if not ranks or ranks == list(range(world.Get_size())):
        if not ranks:
            _agree_on_ranks(opts)
        return ProcessGroupRingReduce(world, str(opts.group_id) or "default")
    # A ringreduce sub-group under another default group (members only call this).
    group = world.Get_group().Incl(ranks)
    sub = world.Create_group(group, tag=0x5252)
    group.Free()
    try:
        return ProcessGroupRingReduce(sub, str(opts.group_id))
    finally:
        sub.Free()


def register():
    """Register ``"ringreduce"`` with torch.distributed (once per process)."""
    if BACKEND in dist.Backend.backend_list:
        return
    dist.Backend.register_backend(BACKEND, create, extended_api=True, devices=["cpu", "cuda"])
