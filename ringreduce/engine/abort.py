"""End the whole job when one rank dies of an uncaught exception.

A rank that raises and then exits normally calls ``MPI_Finalize``, which can wait forever for
ranks that are themselves waiting in a collective for the dead one (mpi4py's documentation,
"mpi4py.run"). ``python -m mpi4py script.py`` avoids that by calling ``MPI_Abort`` on an
uncaught exception; importing ringreduce installs the same behaviour for plain
``python script.py`` (set ``RINGREDUCE_ABORT_ON_EXCEPTION=0`` to opt out): the traceback is
printed first, then ``MPI_Abort(COMM_WORLD, 1)`` ends every rank with a non-zero exit code.
Uncaught exceptions in other threads do the same.
"""
import io
import sys
import threading
import time

from ..config import abort_on_exception

_installed = False
# Called before MPI_Abort (the timeline writes its last events here).
before_abort = []


def abort(code=1):
    from mpi4py import MPI
    for fn in before_abort:
        try:
            fn()
        except Exception:  # noqa: BLE001 - aborting anyway; the hook must not stop that
            pass
    if MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1:
        _release_captured_stderr()
        sys.stdout.flush()
        sys.stderr.flush()
        # Give the launcher a moment to forward the traceback before it tears the job down.
        time.sleep(0.5)
        MPI.COMM_WORLD.Abort(code)


def _release_captured_stderr():
    """A wrapping excepthook may hold this rank's traceback in a buffer, to print once the hook
    it wraps returns: ``torch.distributed.init_process_group`` installs one that captures
    ``sys.stderr`` in a StringIO and prefixes ``[rankN]:``. The abort never returns, so the
    buffer is written to the process's real stderr now, or the job would end saying nothing."""
    err = sys.stderr
    if isinstance(err, io.StringIO) and sys.__stderr__ is not None and err is not sys.__stderr__:
        sys.__stderr__.write(err.getvalue())
        err.seek(0)
        err.truncate()


def install():
    global _installed
    if _installed or not abort_on_exception():
        return
    _installed = True
    previous = sys.excepthook
    previous_thread = threading.excepthook

    def hook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        if not issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
            sys.stderr.write("ringreduce: uncaught exception on this rank; aborting the job "
                             "so the other ranks do not wait forever\n")
            abort(1)

    def thread_hook(args):
        previous_thread(args)
        if args.exc_type is not SystemExit:
            sys.stderr.write(f"ringreduce: uncaught exception in thread {args.thread.name}; "
                             "aborting the job\n")
            abort(1)

    sys.excepthook = hook
    threading.excepthook = thread_hook
