"""``python -m ringreduce.bench``: time allreduce per algorithm against native
``MPI_Allreduce`` in one run, nccl-tests style, naming the MPI library (``perf/bench.py``,
also runnable as ``python -m ringreduce.perf.bench``)."""
import sys

from .perf.bench import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m ringreduce.bench"))
