"""``@run``: call a training function again on the survivors after a lost rank.

    @rr.elastic.run
    def train(state):
        ...                          # rr.rank(), rr.size(): the current world's
        state.commit()               # every few steps

    train(state)

The loop, as Horovod Elastic's ``run_fn``: sync the state from rank 0, call the function;
on :class:`RankFailedError` (every collective raises it on every survivor, see
``transport/fault.py``) recover the world, restore the last commit, call the reset callbacks
and go round again. Recovering (:func:`shrink_world`) is:

1. revoke the world, so that every survivor leaves whatever it waits in;
2. shrink it (``MPI_Comm_shrink``): the survivors agree, inside the shrink, on who failed,
   and all get the same communicator of the survivors, in the old rank order;
3. make it the library's world: ``transport.comm.reset`` (every private duplicate, node
   split and shared-memory window forgotten) and ``ENGINE.reset`` (the engine's channels);
4. ``init`` on it (collective): new duplicates, the node split, the engine's channel.

A rank lost during a recovery raises RankFailedError there too and the recovery starts
again on what is left. Without ULFM nothing here is ever reached: a lost rank ends the job.

Exiting after a recovery: Open MPI 5.0.11's ``MPI_Finalize`` waits in a runtime fence over the
whole original job, and with a rank lost that wait was seen to last for ever in about one run
in twelve, a plain mpi4py program as well as this library (Shrink, an Allreduce, exit). So
once a recovery has happened, the exit is guarded: a survivor still exiting
:data:`FINALIZE_GRACE_S` seconds after its Python code ended is ended by SIGALRM (the job's
status stays 0 under ``--with-ft ulfm``, as for the lost rank), instead of hanging the job.
"""
import atexit
import functools
import signal
import sys
import time
from collections import namedtuple

from mpi4py import MPI

from ..engine.api import init
from ..engine.engine import ENGINE
from ..errors import RankFailedError
from ..transport import comm as _comm
from ..transport import fault
from .state import State

FINALIZE_GRACE_S = 10  # MPI_Finalize takes well under a second when it does not hang
_guarded = []


def _guard_exit():
    """Arm SIGALRM (default action: end the process) for the exit sequence."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(FINALIZE_GRACE_S)


def guard_exit():
    """After a recovery: make sure this process's exit cannot hang (module docstring)."""
    if not _guarded:
        _guarded.append(True)
        atexit.register(_guard_exit)  # runs before the engine's and mpi4py's exit handlers


Recovery = namedtuple("Recovery", "failed old_size size seconds")
Recovery.__doc__ = """One recovery: the ``failed`` ranks (in the old world's numbering), the
world's size before and after, and the seconds from the RankFailedError to the new world
being ready (the state's restore and sync come after)."""


def shrink_world():
    """Replace the library's world by its survivors (collective over them); returns
    ``(failed ranks of the old world, the new world)``. See the module docstring."""
    first = _comm.world()
    while True:
        old = _comm.world()
        try:
            old.Revoke()
        except MPI.Exception:
            pass  # revoked already, by another survivor
        new = old.Shrink()
        new.Set_errhandler(MPI.ERRORS_RETURN)
        ENGINE.reset()
        _comm.reset(new)
        guard_exit()
        try:
            init(new)
        except RankFailedError:
            continue  # another rank was lost meanwhile: shrink what is left
        kept = MPI.Group.Translate_ranks(new.Get_group(), list(range(new.Get_size())),
                                         first.Get_group())
        return sorted(set(range(first.Get_size())) - set(kept)), new


def run(func=None, *, min_size=1):
    """Decorate ``func(state, *args, **kwargs)`` to go on after a lost rank (see the module
    docstring); ``min_size``: give up, raising the RankFailedError, when fewer ranks would
    be left. Needs ULFM (Open MPI's ``mpirun --with-ft ulfm``, docs/cluster.md); without it
    the function is called once and a lost rank ends the job as before."""
    if func is None:
        return lambda f: run(f, min_size=min_size)
    if not callable(func):
        raise TypeError(f"run decorates a function, got {type(func).__name__}")

    @functools.wraps(func)
    def wrapper(state, *args, **kwargs):
        if not isinstance(state, State):
            raise TypeError(f"{func.__name__}: the first argument of an elastic.run function "
                            f"must be a ringreduce.elastic.State, got {type(state).__name__}")
        while True:
            try:
                state.sync()
                return func(state, *args, **kwargs)
            except RankFailedError as exc:
                start = time.perf_counter()
                old_size = _comm.world().Get_size()
                if not fault.ENABLED:
                    raise
                failed, new = shrink_world()
                if new.Get_size() < min_size:
                    raise RankFailedError(f"{func.__name__}: {new.Get_size()} rank(s) left "
                                          f"after losing ranks {failed}, fewer than "
                                          f"min_size={min_size}", failed) from exc
                done = Recovery(failed, old_size, new.Get_size(), time.perf_counter() - start)
                state.recoveries.append(done)
                if new.Get_rank() == 0:
                    sys.stderr.write(f"ringreduce.elastic: lost rank(s) {failed} of "
                                     f"{old_size}; going on with {done.size} "
                                     f"(world rebuilt in {done.seconds:.2f} s)\n")
                    sys.stderr.flush()
                state.restore()
                state.on_reset()
    return wrapper
