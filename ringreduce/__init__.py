"""ringreduce: allreduce over MPI for data-parallel training.

    import ringreduce as rr
    out = rr.allreduce(x, op="sum")          # under mpiexec -n N
"""
from ._allreduce import (ALGORITHM_NAMES, OPS, MismatchError, RingReduceError, allreduce,
                         choose_algorithm)

__all__ = ["allreduce", "choose_algorithm", "MismatchError", "RingReduceError", "OPS",
           "ALGORITHM_NAMES"]
__version__ = "0.1.0"
