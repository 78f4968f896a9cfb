"""``dist.init_process_group("ringreduce")`` under mpiexec with nothing else set.

torch finds its peers through a rendezvous (``init_method``, default ``env://``: a TCP store
at ``MASTER_ADDR:MASTER_PORT``, rank and world size from ``RANK`` and ``WORLD_SIZE``). Under
MPI the ranks already know each other, and the ringreduce backend never uses the store. So
``import ringreduce.torch`` wraps the ``env://`` handler: when ``MASTER_ADDR`` is set it
runs torch's own handler unchanged; when it is not, it yields MPI's rank and world size and
a :class:`LocalStore` instead of failing.

A ``LocalStore`` is this process's own key-value table. torch's set-up only writes to it and
reads back its own keys; anything that needs another rank's key (gloo's connection set-up, a
store-based barrier) gets an immediate error saying to set ``MASTER_ADDR`` and
``MASTER_PORT``, never a wait.
"""
import importlib
import os
from datetime import timedelta
from urllib.parse import parse_qs, urlparse

import torch.distributed as dist

# the module, not the function of the same name that torch.distributed exports
_rdzv = importlib.import_module("torch.distributed.rendezvous")

_NEEDS_SHARED = ("the process group was initialised under MPI without MASTER_ADDR, so its "
                 "store is local to each process: enough for the ringreduce backend, which "
                 "never uses it; a backend that needs a shared store (gloo, nccl) or a "
                 "store-based barrier needs MASTER_ADDR and MASTER_PORT set (or an "
                 "init_method / store passed to init_process_group)")


class LocalStore(dist.Store):
    """A store that only this process can see (module docstring)."""

    def __init__(self):
        super().__init__()
        self._data = {}

    @staticmethod
    def _bytes(value):
        return value if isinstance(value, bytes) else str(value).encode()

    def _missing(self, key):
        return RuntimeError(f"store key {key!r} was never set in this process: {_NEEDS_SHARED}")

    def set(self, key, value):
        self._data[key] = self._bytes(value)

    def get(self, key):
        if key not in self._data:
            raise self._missing(key)
        return self._data[key]

    def add(self, key, amount):
        value = int(self._data.get(key, b"0")) + int(amount)
        self._data[key] = str(value).encode()
        return value

    def compare_set(self, key, expected, desired):
        current = self._data.get(key)
        if (current is None and not self._bytes(expected)) or current == self._bytes(expected):
            self._data[key] = self._bytes(desired)
            return self._data[key]
        return b"" if current is None else current

    def check(self, keys):
        return all(k in self._data for k in keys)

    def wait(self, keys, timeout=None):
        for k in keys:
            if k not in self._data:
                raise self._missing(k)

    def delete_key(self, key):
        return self._data.pop(key, None) is not None

    def num_keys(self):
        return len(self._data)

    def append(self, key, value):
        self._data[key] = self._data.get(key, b"") + self._bytes(value)

    def multi_get(self, keys):
        return [self.get(k) for k in keys]

    def multi_set(self, keys, values):
        for k, v in zip(keys, values):
            self.set(k, v)


def _mpi_rendezvous(url, timeout=timedelta(minutes=30), **kwargs):
    from mpi4py import MPI
    rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    query = {k: v[-1] for k, v in parse_qs(urlparse(url).query).items()}
    for key, mine in (("rank", rank), ("world_size", size)):
        given = int(query.get(key, -1))
        if given not in (-1, mine):
            raise ValueError(f"init_process_group: {key}={given} was given, but MPI says this "
                             f"process has {key} {mine} (rank {rank} of {size}); leave it out "
                             "under mpiexec, or set MASTER_ADDR and MASTER_PORT for a torch "
                             "rendezvous of your own")
    yield LocalStore(), rank, size
    raise RuntimeError("the MPI rendezvous cannot be repeated: the ranks are MPI's")


def install():
    """Wrap torch's ``env://`` rendezvous handler (once per process)."""
    handlers = _rdzv._rendezvous_handlers
    original = handlers.get("env")
    if original is None or getattr(original, "_ringreduce", False):
        return

    def env_or_mpi(url, **kwargs):
        if os.environ.get("MASTER_ADDR"):
            return original(url, **kwargs)
        return _mpi_rendezvous(url, **kwargs)
    env_or_mpi._ringreduce = True
    env_or_mpi.original = original
    handlers["env"] = env_or_mpi
