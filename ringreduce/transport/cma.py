"""Cross-memory attach (Linux ``process_vm_readv``/``process_vm_writev``): one process of a
node copies straight from or into another's memory, one copy by the kernel, no shared window
in between and no MPI message. ``algorithms/direct.py`` reads its peers' inputs and writes its
results into their outputs with it.

The kernel allows it where the calling process may ptrace the other: the same user, and
where Yama's ``ptrace_scope`` is 1, only for a descendant unless the other process has named
its reader (``prctl(PR_SET_PTRACER)``). Every rank says "any process of mine may" when it first
makes :class:`Peers`, then the ranks of the node probe each other once and agree: where any
rank cannot read any other, none uses it (``Peers.ok`` is the same on every rank).
"""
import ctypes
import functools
import os
import sys

import numpy as np
from mpi4py import MPI

_PR_SET_PTRACER = 0x59616D61
_PR_SET_PTRACER_ANY = ctypes.c_ulong(-1).value


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


@functools.cache
def libc():
    """libc with the two calls typed, or None off Linux (loaded once)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(None, use_errno=True)
        calls = lib.process_vm_readv, lib.process_vm_writev
    except (OSError, AttributeError):
        return None
    for f in calls:
        f.restype = ctypes.c_ssize_t
        f.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong,
                      ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong]
    lib.prctl(_PR_SET_PTRACER, _PR_SET_PTRACER_ANY, 0, 0, 0)  # fails harmlessly without Yama
    return lib


class Peers:
    """The processes of a node communicator (an mpi4py one), for copies into and out of
    their memory: ``read(j, local, remote_address)`` fills the 1-D array ``local`` from rank
    j's memory, ``write(j, local, remote_address)`` copies ``local`` there. Made
    collectively; ``ok`` says, the same on every rank, whether every rank can reach every
    other."""

    def __init__(self, node):
        self.lib = lib = libc()
        self.pids = node.allgather(os.getpid())
        self.rank = node.Get_rank()
        self.local, self.remote = _Iovec(), _Iovec()
        self.local_p, self.remote_p = ctypes.byref(self.local), ctypes.byref(self.remote)
        probe = np.array([node.Get_rank() + 1], np.int64)
        where = node.allgather(probe.ctypes.data)
        ok = lib is not None
        got = np.zeros(1, np.int64)
        for j in range(node.Get_size()):
            if ok and j != self.rank:
                try:
                    self.read(j, got, where[j])
                    ok = got[0] == j + 1
                except OSError:
                    ok = False
        node.Barrier()  # nobody's probe is freed before every rank has read it
        self.ok = bool(node.allreduce(int(ok), op=MPI.MIN))

    def _move(self, call, j, local, address, what):
        n = local.nbytes
        self.local.base, self.local.len = local.ctypes.data, n
        self.remote.base, self.remote.len = address, n
        done = call(self.pids[j], self.local_p, 1, self.remote_p, 1, 0)
        if done != n:
            err = ctypes.get_errno()
            raise OSError(err, f"process_vm_{what}v of {n} bytes with node rank {j} (pid "
                               f"{self.pids[j]}) moved {done}: {os.strerror(err)}")

    def read(self, j, local, address):
        self._move(self.lib.process_vm_readv, j, local, address, "read")

    def write(self, j, local, address):
        self._move(self.lib.process_vm_writev, j, local, address, "write")
