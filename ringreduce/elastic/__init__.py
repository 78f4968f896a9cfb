"""Elastic training: go on with the surviving ranks when one dies, in the same processes.

    import ringreduce as rr

    state = rr.elastic.State(params=model.parameters(), opt=opt, epoch=0, step=0)

    @rr.elastic.run
    def train(state):
        sampler = rr.DistributedSampler(n, batch, rank=rr.rank(), size=rr.size())
        while state.epoch < epochs:
            ...                                # steps; state.step += 1
            if state.step % 10 == 0:
                state.commit()                 # an in-memory copy, no messages

    train(state)

Launch with Open MPI's fault tolerance on (docs/cluster.md): ``mpirun --with-ft ulfm --mca
pml ob1 --mca btl tcp,self -n 3 python train.py``. When a rank dies, every collective raises
:class:`~ringreduce.errors.RankFailedError` on every survivor; ``run`` shrinks the world onto
the survivors, rebuilds the library's communicators and engine on it, restores the last
commit, syncs it from rank 0 and calls ``train`` again, where ``rr.rank()`` and
``rr.size()`` give the new values. Modelled on Horovod Elastic (``hvd.elastic.State``,
``commit``, ``restore``, ``sync``, ``@hvd.elastic.run``), over MPI's ULFM instead of a
driver that restarts workers.

``state.py``: :class:`State`; ``run.py``: :func:`run` and the recovery (:func:`shrink_world`).
:func:`world` is the communicator the library uses now (the survivors'), for a script's own
mpi4py calls. Without ULFM (MPICH, Open MPI without ``--with-ft``) nothing is recovered: a
lost rank ends the job as before; restart it from a checkpoint instead.
"""
from ..errors import RankFailedError
from ..transport.comm import world
from ..transport.fault import ENABLED
from .run import Recovery, run, shrink_world
from .state import State

__all__ = ["State", "run", "RankFailedError", "Recovery", "shrink_world", "world", "ENABLED"]
