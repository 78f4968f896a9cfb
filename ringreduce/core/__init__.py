"""The pure layer: schedules, fusion plans, the dtype and op tables and the "auto" choice.

Nothing here imports mpi4py, numba or any other layer of the package, so all of it runs and is
tested in one process without MPI (``tests/unit``).
"""
