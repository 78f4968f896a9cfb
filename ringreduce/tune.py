"""``python -m ringreduce.tune``: measure "auto"'s thresholds on this machine and write a
tuning file (``perf/tune.py``)."""
import sys

from .perf.tune import main

if __name__ == "__main__":
    sys.exit(main())
