"""Communicators of a test's own, for tests that need state (a window, a race) made from
scratch. They stay alive: a freed one's handle can come back for the next Dup, and the library
would then hand back the old one's cached state (get_comm's cache)."""
from mpi4py import MPI

_KEEP = []


def fresh_comm(comm=None):
    """A duplicate of ``comm`` (default the world), kept for the process's life."""
    c = (MPI.COMM_WORLD if comm is None else comm).Dup()
    _KEEP.append(c)
    return c
