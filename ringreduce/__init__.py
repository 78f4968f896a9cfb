"""ringreduce: allreduce over MPI for data-parallel training.

    import ringreduce as rr
    out = rr.allreduce(x, op="sum")          # under mpiexec -n N

The public names load on first use (PEP 562): importing ringreduce does not import mpi4py,
so tools such as the launcher (``ringreduce-run``) never initialise MPI in their own process.
Importing it does install the abort-on-uncaught-exception hook (``_abort``).
"""
import importlib

from ._abort import install as _install_abort_hook

__version__ = "0.1.0"

# public name -> the private module that defines it
_EXPORTS = {
    "init": "_engine", "allreduce_async": "_engine", "Handle": "_engine", "StallError": "_engine",
    "allreduce": "_allreduce", "choose_algorithm": "_allreduce", "MismatchError": "_allreduce",
    "RingReduceError": "_allreduce", "OPS": "_allreduce", "ALGORITHM_NAMES": "_allreduce",
    "grouped_allreduce": "_grouped", "assign_buckets": "_fusion", "get_config": "_config",
    "broadcast_parameters": "training", "GradSync": "training",
    "DistributedSampler": "training", "rank": "_topology", "size": "_topology",
    "local_rank": "_topology", "local_size": "_topology",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ringreduce' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


_install_abort_hook()
