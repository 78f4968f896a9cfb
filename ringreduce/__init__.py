"""ringreduce: allreduce over MPI for data-parallel training.

    import ringreduce as rr
    out = rr.allreduce(x, op="sum")          # under mpiexec -n N

The public names load on first use (PEP 562): importing ringreduce does not import mpi4py,
so tools such as the launcher (``ringreduce-run``) never initialise MPI in their own process.
Importing it does install the abort-on-uncaught-exception hook (``engine/abort.py``), and gives two
Open MPI settings a default where they are unset (``config.open_mpi_defaults``).
This module is the facade only: nothing inside the package imports it.
"""
import importlib

from .config import open_mpi_defaults as _open_mpi_defaults
from .engine.abort import install as _install_abort_hook

__version__ = "0.1.0"

# public name -> the module that defines it (a name mapped to itself is a subpackage:
# rr.elastic.State)
_EXPORTS = {
    "init": "engine.api", "allreduce_async": "engine.api", "Handle": "engine.handle",
    "allreduce": "collectives.allreduce", "grouped_allreduce": "collectives.grouped",
    "broadcast": "collectives.moves", "allgather": "collectives.moves",
    "reduce_scatter": "collectives.moves", "barrier": "collectives.moves",
    "StallError": "errors", "MismatchError": "errors", "RingReduceError": "errors",
    "RankFailedError": "errors", "elastic": "elastic",
    "choose_algorithm": "core.choose", "OPS": "core.tables",
    "ALGORITHM_NAMES": "core.tables", "assign_buckets": "core.fusion", "get_config": "config",
    "broadcast_parameters": "training", "GradSync": "training",
    "DistributedSampler": "training", "rank": "transport.topology",
    "size": "transport.topology", "local_rank": "transport.topology",
    "local_size": "transport.topology",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ringreduce' has no attribute {name!r}")
    found = importlib.import_module(f".{module}", __name__)
    value = found if module == name else getattr(found, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


_open_mpi_defaults()  # before anything imports mpi4py's MPI (config.py says why)
_install_abort_hook()
