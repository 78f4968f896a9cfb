"""Lost ranks under MPI's fault-tolerance extension, ULFM (User Level Failure Mitigation).

With ULFM switched on (Open MPI 5: ``mpirun --with-ft ulfm``, docs/cluster.md says which
transports work), a rank that dies does not end the job: the survivors' MPI calls that
involve it return ``MPI_ERR_PROC_FAILED`` (``_PENDING`` for a receive from any source), and
calls on a communicator that some rank *revoked* return ``MPI_ERR_REVOKED``. This module
only recognises those errors and names the failed ranks; ``comm.detects_failures`` turns
them into :class:`RankFailedError` at the level of a whole collective (no cost per message:
nothing is checked on the success path), and ``ringreduce.elastic`` shrinks the job onto
the survivors.

Without ULFM (MPICH's default device has no shrink or agreement, Open MPI without
``--with-ft``) :data:`ENABLED` is False and nothing changes: a lost rank ends the job, as the
abort hook (``engine/abort.py``) or the launcher makes it.
"""
import os
import time

from mpi4py import MPI

from ..errors import RankFailedError

_TRUE = ("1", "true", "yes", "on", "enabled")


def _enabled():
    """Whether ULFM is present and switched on in this process. Open MPI's ``--with-ft ulfm``
    (like ``--mca mpi_ft_enable 1``) hands every rank ``OMPI_MCA_mpi_ft_enable``; MPI has no
    portable query for it. mpi4py must offer the calls too (``Comm.Shrink``, ``Revoke``)."""
    if not (hasattr(MPI.Comm, "Shrink") and hasattr(MPI.Comm, "Revoke")):
        return False
    if not MPI.Get_library_version().startswith("Open MPI"):
        return False
    return os.environ.get("OMPI_MCA_mpi_ft_enable", "").strip().lower() in _TRUE


ENABLED = _enabled()

# The error classes that mean "a rank is gone" (where ULFM is off, mpi4py may give them the
# value of another class, MPI_ERR_UNKNOWN for instance: never read them then).
_CLASSES = {}
if ENABLED:
    _CLASSES = {MPI.ERR_PROC_FAILED: "MPI_ERR_PROC_FAILED",
                MPI.ERR_PROC_FAILED_PENDING: "MPI_ERR_PROC_FAILED_PENDING",
                MPI.ERR_REVOKED: "MPI_ERR_REVOKED"}

# After MPI_ERR_REVOKED (another rank saw the failure first) this rank may not know yet who
# failed: the runtime's notice comes within milliseconds here, so wait at most this long.
NOTICE_WAIT_S = 2.0


def failure_class(exc):
    """The name of ``exc``'s error class if it is an MPI error saying a rank is gone, else
    None (always None without ULFM)."""
    if not _CLASSES or not isinstance(exc, MPI.Exception):
        return None
    return _CLASSES.get(exc.Get_error_class())


def failed_group(mpi_comm, wait_s=NOTICE_WAIT_S):
    """The group of the ranks of ``mpi_comm`` this process knows to have failed (local),
    waiting up to ``wait_s`` seconds for the first notice."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            group = mpi_comm.Get_failed()
        except MPI.Exception:
            return MPI.GROUP_EMPTY
        if group.Get_size() or time.monotonic() >= deadline:
            return group
        time.sleep(0.01)


def ranks_in(group, mpi_comm):
    """The ranks, in ``mpi_comm``, of the members of ``group`` that belong to it, sorted."""
    n = group.Get_size()
    if not n:
        return []
    got = MPI.Group.Translate_ranks(group, list(range(n)), mpi_comm.Get_group())
    return sorted(r for r in got if r != MPI.UNDEFINED)


def rank_failed_error(what, kind, failed, mpi_comm):
    """The :class:`RankFailedError` of a collective ``what`` that met ``kind`` (an error class
    name) on ``mpi_comm``, ``failed`` its failed ranks."""
    who = (f"rank{'s' if len(failed) > 1 else ''} {', '.join(map(str, failed))}"
           if failed else "a rank (not named yet by MPI)")
    return RankFailedError(
        f"{what}: {who} of the {mpi_comm.Get_size()}-rank communicator failed; MPI reported "
        f"{kind} on rank {mpi_comm.Get_rank()}. Expected every rank alive; the library's "
        f"communicators holding the lost rank are revoked, so recover with "
        f"ringreduce.elastic.run (shrink onto the survivors) or restart from a checkpoint",
        failed)
