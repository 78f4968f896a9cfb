"""Run one algorithm on buffers every rank already agreed on (no header)."""
import time

import numpy as np

from ..algorithms import ALGORITHMS
from ..algorithms.direct import available as direct_available
from ..algorithms.shm import on_one_node
from ..config import get_config
from ..core import adapt
from ..core.choose import Rule, choose_algorithm, may_use_direct, may_use_shm, shm_max_bytes
from ..memory.spans import Spans
from ..transport.comm import mpi_library


def auto_choice(c, mem, nbytes):
    """What "auto" runs for ``nbytes`` of ``mem``'s memory on ``c``. Collective the first
    time per communicator (on_one_node); every rank gets here in the same call, since all
    agreed on "auto", the memory and the size in the header."""
    choices = c.state.choices
    name = choices.get((mem, nbytes))
    if name is None:
        name = _choose(c, mem, nbytes)
        if len(choices) > 1024:
            choices.clear()
        choices[(mem, nbytes)] = name  # the same inputs give the same choice: 0.4 us a call
    return name


def _choose(c, mem, nbytes):
    library = mpi_library()
    shm_max = shm_max_bytes(library)
    host = "shm" in mem.algorithms
    # Single-copy on one node where the kernel allows it, for the sizes it wins at: asked
    # (collectively, once per communicator) only then, by every rank in the same call.
    direct = host and may_use_direct(nbytes, c.size) and direct_available(c)
    # A tuning file's rule for this library and rank count (host memory: it was measured
    # there), by whether the ranks share a node; every rank holds the same file (the
    # configuration is compared across ranks), so all ask on_one_node here or none does.
    tuned = _tuned(c, library)
    if tuned and host and nbytes:
        one_node = on_one_node(c)
        for _, _, one, lo, hi, ring in tuned:
            if one == one_node:
                return choose_algorithm(nbytes, c.size, one_node, rule=Rule(lo, hi, ring),
                                        direct=direct)
    one_node = host and may_use_shm(nbytes, c.size, shm_max) and on_one_node(c)
    return choose_algorithm(nbytes, c.size, one_node, shm_max, direct=direct)


def _tuned(c, library):
    return [e for e in get_config().tuning_file if e[0] == library and e[1] == c.size]


def _race(c, mem, nbytes, dtype):
    """The race "auto" runs for ``nbytes`` of ``mem``'s memory on ``c`` (core/adapt.py), or
    None where it follows its rule alone; one per size class and dtype (a compressed call's
    16-bit wire reduces at another speed than float32). Collective the first time per
    communicator (on_one_node), like auto_choice, and asked in the same calls on every
    rank."""
    races = c.state.races
    key = (mem, adapt.size_class(nbytes), dtype)
    if key not in races:
        host = "shm" in mem.algorithms
        raced = (get_config().adapt and host and not _tuned(c, mpi_library())
                 and adapt.races(nbytes, c.size, True, host) and on_one_node(c))
        races[key] = adapt.Race() if raced else None
    return races[key]


# The race's clock, a name of its own so tests can give it made-up times.
_clock = time.perf_counter


def run_algorithm(c, mem, name, flat_in, flat_out, reduce, seg_bytes):
    """``name`` ("auto" or an algorithm ``mem`` supports) on 1-D buffers of ``mem``'s memory
    (or ``Spans`` of host arrays, for the ring) over the library communicator ``c``, through
    ``mem``'s transport. Where "auto" races shm against the ring (core/adapt.py), the call
    runs the race's candidate, times it, and on the last call of a race's round the ranks
    sum their medians with one small allreduce and all keep the same winner (or, where it
    is close, all race another round)."""
    seg = max(1, seg_bytes // flat_in.dtype.itemsize)
    if name != "auto":
        ALGORITHMS[name](mem.transport(c), flat_in, flat_out, reduce, seg)
        return
    nbytes = flat_in.nbytes
    race = None if isinstance(flat_in, Spans) else _race(c, mem, nbytes, flat_in.dtype)
    if race is None:
        ALGORITHMS[auto_choice(c, mem, nbytes)](mem.transport(c), flat_in, flat_out, reduce, seg)
        return
    i = race.next()
    t = _clock()
    ALGORITHMS[race.candidates[i]](mem.transport(c), flat_in, flat_out, reduce, seg)
    if race.record(i, _clock() - t, nbytes):
        sums = np.array(race.medians(), np.float64)
        add, _ = mem.kernels("sum", sums.dtype)
        ALGORITHMS["doubling"](mem.transport(c), sums, sums, add, sums.size)
        race.decide(sums.tolist())
