"""ringreduce: allreduce over MPI for data-parallel training.

    import ringreduce as rr
    out = rr.allreduce(x, op="sum")          # under mpiexec -n N
"""
from ._allreduce import (ALGORITHM_NAMES, OPS, MismatchError, RingReduceError, allreduce,
                         choose_algorithm)
from ._abort import install as _install_abort_hook
from ._config import get_config
from ._engine import Handle, StallError, allreduce_async, init
from ._fusion import assign_buckets
from ._grouped import grouped_allreduce

__all__ = ["init", "allreduce", "allreduce_async", "Handle", "StallError", "grouped_allreduce", "assign_buckets", "choose_algorithm",
           "get_config", "MismatchError", "RingReduceError", "OPS", "ALGORITHM_NAMES"]
__version__ = "0.1.0"

_install_abort_hook()
