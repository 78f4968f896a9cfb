"""What the torch tests share: the ringreduce default process group and a gloo group beside it
as the reference, in the same mpiexec job.

The default group is ``dist.init_process_group("ringreduce")`` with nothing else set (the
MPI rendezvous of ``ringreduce/torch/rendezvous.py``). gloo needs a store all ranks share: a
FileStore in a temporary directory whose path rank 0 chooses and MPI hands to the others.
The gloo group is made with torch's own group helper, as ``new_group`` would make it under a
gloo default group (a private torch function, used only here).
"""
import datetime
import os
import tempfile

import pytest
from mpi4py import MPI

torch = pytest.importorskip("torch", reason="torch is not installed (pip install "
                            "'ringreduce[torch]' runs the torch tests)")
dist = pytest.importorskip("torch.distributed")
import ringreduce.torch as rt  # noqa: E402,F401 - registers the backend

P = MPI.COMM_WORLD.Get_size()
RANK = MPI.COMM_WORLD.Get_rank()
_GLOO = []


def ringreduce_world():
    """The default group (made once per process)."""
    if not dist.is_initialized():
        dist.init_process_group("ringreduce")
    return dist.group.WORLD


def gloo_world():
    """A gloo group over every rank (made once per process)."""
    ringreduce_world()
    if not _GLOO:
        from torch.distributed.distributed_c10d import _new_process_group_helper, _world
        folder = MPI.COMM_WORLD.bcast(tempfile.mkdtemp(prefix="rr-gloo-") if RANK == 0 else None)
        store = dist.FileStore(os.path.join(folder, "store"), P)
        pg, _ = _new_process_group_helper(P, RANK, list(range(P)), "gloo", store, "gloo-ref",
                                          timeout=datetime.timedelta(seconds=120))
        _world.pg_group_ranks[pg] = {r: r for r in range(P)}
        _GLOO.append(pg)
    return _GLOO[0]


def every_rank_raises(fn, exc_type, match=None):
    """``fn()`` raises ``exc_type`` here; returns the message. Every rank calls this in the
    same test, so together they check the error reaches every rank."""
    with pytest.raises(exc_type, match=match) as info:
        fn()
    return str(info.value)
