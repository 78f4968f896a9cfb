"""Configuration from ``RINGREDUCE_*`` environment variables, validated once per process.

Every variable is parsed on first use; a bad value is a ``ValueError`` naming the variable, the
value and what is allowed. The first collective on a communicator (its duplication in
``_comm.get_comm``) also compares the parsed values across ranks, so ranks started with
different settings all raise instead of running different schedules.

Two variables are read at every use instead, because they are asked before anything else
is set up and may be changed by the process itself: ``RINGREDUCE_CUDA_AWARE``
(:func:`cuda_aware_setting`, asked by every device call before its header) and
``RINGREDUCE_ABORT_ON_EXCEPTION`` (:func:`abort_on_exception`, asked when ringreduce is
imported). Every ``RINGREDUCE_*`` variable is read in this module and nowhere else.
"""
import math
import numbers
import os
import sys
from dataclasses import astuple, dataclass, fields

from .core.tables import ALGORITHM_NAMES
from .errors import agree

# Defaults. FUSION_THRESHOLD: 64 MiB, from the fusion sweep in docs/benchmarks.md
# ("Fusion threshold"): on the ResNet-50-shaped list, 16, 64 and 128 MiB buckets were within
# noise of each other at 2 ranks, and 64 MiB needs half Horovod's buffer memory.
DEFAULTS = {
    "RINGREDUCE_ALGORITHM": "auto",
    "RINGREDUCE_FUSION_THRESHOLD": 64 << 20,
    # 5 ms, Horovod's former default (it uses 1 ms now): in benchmarks/train_scaling.py at
    # 2 ranks on 2 cores, overlap with a 1 ms cycle reached 1.27x one rank's throughput and
    # with 5 ms 1.76x (docs/benchmarks.md, "Training"): the engine wakes a fifth as often
    # and takes that much less CPU and GIL from the caller's compute.
    "RINGREDUCE_CYCLE_TIME_MS": 5.0,
    "RINGREDUCE_TIMELINE": "",
    "RINGREDUCE_STALL_CHECK_SECONDS": 60.0,
    "RINGREDUCE_STALL_SHUTDOWN_SECONDS": 0.0,
    # The largest message one step of an algorithm sends: 1 MiB won the segment sweep in
    # docs/benchmarks.md (``python -m ringreduce.perf.bench -a ring:64K ring:256K ring:1M ring:4M``).
    "RINGREDUCE_SEGMENT_BYTES": 1 << 20,
    # Ranks per node for algorithm="hierarchical": 0 takes the nodes MPI reports
    # (COMM_TYPE_SHARED); k > 0 makes pretend nodes of k consecutive ranks, to try the
    # two-level path on one machine.
    "RINGREDUCE_LOCAL_SIZE": 0,
    # A tuning file written by ``python -m ringreduce.tune``: "auto"'s thresholds measured on
    # this machine, by MPI library, rank count and whether the ranks share one node. Unset:
    # the built-in rule (core/choose.py).
    "RINGREDUCE_TUNING_FILE": "",
    # 1: "auto" times shm against the ring on one node from 1 MiB to 32 MiB in the job and
    # keeps the faster (core/adapt.py); 0: the fixed rule alone.
    "RINGREDUCE_ADAPT": 1,
}


@dataclass(frozen=True)
class Config:
    algorithm: str
    fusion_threshold: int
    cycle_time_ms: float
    timeline: str
    stall_check_seconds: float
    stall_shutdown_seconds: float
    segment_bytes: int
    local_size: int
    tuning_file: tuple  # the file's entries (read_tuning), compared across ranks
    adapt: bool

    def items(self):
        return [(f"RINGREDUCE_{f.name.upper()}", v) for f, v in zip(fields(self), astuple(self))]


def _number(name, text, kind, minimum, allowed, strict=False):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        value = None
    if value is None or (isinstance(value, float) and not math.isfinite(value)) \
            or value < minimum or (strict and value == minimum):
        raise ValueError(f"{name}={text!r} is not valid; expected {allowed}")
    return value


def _int_bytes(name, text, allowed):
    t = str(text).strip()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    mult = 1
    if t[-1:].upper() in units:
        mult, t = units[t[-1].upper()], t[:-1]
    return _number(name, t, int, 0, allowed) * mult


def parse(env=None):
    """Parse the ``RINGREDUCE_*`` variables of ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env

    def get(name):
        return env.get(name, DEFAULTS[name])

    algorithm = get("RINGREDUCE_ALGORITHM")
    if algorithm not in ALGORITHM_NAMES:
        raise ValueError(f"RINGREDUCE_ALGORITHM={algorithm!r} is not valid; expected one of "
                         f"{', '.join(ALGORITHM_NAMES)}")
    fusion = _int_bytes("RINGREDUCE_FUSION_THRESHOLD", get("RINGREDUCE_FUSION_THRESHOLD"),
                        "a whole number of bytes >= 0, optionally with K, M or G (0 turns fusion off)")
    seg = _int_bytes("RINGREDUCE_SEGMENT_BYTES", get("RINGREDUCE_SEGMENT_BYTES"),
                     "a whole number of bytes >= 1, optionally with K, M or G")
    if seg < 1:
        raise ValueError(f"RINGREDUCE_SEGMENT_BYTES={get('RINGREDUCE_SEGMENT_BYTES')!r} is not "
                         "valid; expected a whole number of bytes >= 1")
    cycle = _number("RINGREDUCE_CYCLE_TIME_MS", get("RINGREDUCE_CYCLE_TIME_MS"), float, 0,
                    "a number of milliseconds > 0", strict=True)
    check = _number("RINGREDUCE_STALL_CHECK_SECONDS", get("RINGREDUCE_STALL_CHECK_SECONDS"),
                    float, 0, "a number of seconds >= 0 (0 turns the stall warning off)")
    shutdown = _number("RINGREDUCE_STALL_SHUTDOWN_SECONDS",
                       get("RINGREDUCE_STALL_SHUTDOWN_SECONDS"), float, 0,
                       "a number of seconds >= 0 (0 never shuts down)")
    local = _number("RINGREDUCE_LOCAL_SIZE", str(get("RINGREDUCE_LOCAL_SIZE")), int, 0,
                    "a whole number of ranks per node >= 0 (0 uses the nodes MPI reports)")
    timeline = str(get("RINGREDUCE_TIMELINE"))
    tuning = str(get("RINGREDUCE_TUNING_FILE"))
    entries = read_tuning(tuning, "RINGREDUCE_TUNING_FILE") if tuning else ()
    adapt = str(get("RINGREDUCE_ADAPT")).strip()
    if adapt not in ("0", "1"):
        raise ValueError(f"RINGREDUCE_ADAPT={adapt!r} is not valid; expected 1 (race shm "
                         "against the ring in the job) or 0 (the fixed rule)")
    return Config(algorithm, fusion, cycle, timeline, check, shutdown, seg, local, entries,
                  adapt == "1")


# A tuning file: JSON {"ringreduce_tuning": 1, "entries": [{ENTRY}, ...]}, each entry naming
# the MPI library (MPI.get_vendor()[0]), the rank count, whether every rank shares one node,
# and the three thresholds of core.choose.Rule in bytes (other keys, such as the timings the
# thresholds came from, are kept in the file and ignored here).
TUNING_KEYS = ("library", "ranks", "one_node", "shm_min", "shm_max", "ring")


def read_tuning(path, what="tuning file"):
    """The entries of the tuning file at ``path`` as a sorted tuple of
    ``(library, ranks, one_node, shm_min, shm_max, ring)``; ValueError naming ``what`` for a
    file that cannot be read or is not one."""
    return tuning_entries(load_tuning(path, what), path, what)


def load_tuning(path, what="tuning file"):
    """The JSON of the file at ``path``, unchecked; ValueError naming ``what`` if unreadable."""
    import json
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what}={path!r} cannot be read as a ringreduce tuning file "
                         f"(python -m ringreduce.tune writes one): {exc}") from None


def tuning_entries(data, path, what="tuning file"):
    """:func:`read_tuning` of a tuning file's loaded JSON ``data``."""
    if not isinstance(data, dict) or data.get("ringreduce_tuning") != 1 or not isinstance(
            data.get("entries"), list):
        raise ValueError(f"{what}={path!r} is not a ringreduce tuning file: expected "
                         '{"ringreduce_tuning": 1, "entries": [...]}')
    out = {}
    for i, e in enumerate(data["entries"]):
        try:
            lib, ranks, one, lo, hi, ring = (e[k] for k in TUNING_KEYS)
        except (KeyError, TypeError):
            raise ValueError(f"{what}={path!r}: entry {i} needs the keys "
                             f"{', '.join(TUNING_KEYS)}, got {e!r}") from None
        if not (isinstance(lib, str) and is_whole(ranks, 2) and isinstance(one, bool)
                and all(is_whole(v, 0) for v in (lo, hi, ring)) and lo <= hi):
            raise ValueError(f"{what}={path!r}: entry {i} is not valid: expected a library "
                             "name, ranks >= 2, one_node true or false and byte thresholds "
                             f">= 0 with shm_min <= shm_max, got {e!r}")
        out[(lib, ranks, one)] = (lib, ranks, one, lo, hi, ring)
    return tuple(out[k] for k in sorted(out))



def cuda_aware_setting(env=None):
    """``RINGREDUCE_CUDA_AWARE``: True (1: MPI takes device memory), False (0: stage through
    host memory) or None (auto, the default: ask the MPI library). ValueError otherwise."""
    env = os.environ if env is None else env
    text = env.get("RINGREDUCE_CUDA_AWARE", "auto").strip().lower()
    if text in ("1", "0"):
        return text == "1"
    if text == "auto":
        return None
    raise ValueError(f"RINGREDUCE_CUDA_AWARE={text!r} is not valid; expected 1 (MPI "
                     "takes device memory), 0 (stage through host memory) or auto")


def abort_on_exception(env=None):
    """``RINGREDUCE_ABORT_ON_EXCEPTION``: False only for "0" (the default 1 aborts the job
    when one rank dies of an uncaught exception)."""
    env = os.environ if env is None else env
    return env.get("RINGREDUCE_ABORT_ON_EXCEPTION", "1") != "0"


# Open MPI settings ringreduce gives a default before MPI starts (see open_mpi_defaults).
OPEN_MPI_DEFAULTS = {"OMPI_MCA_osc": "^ucx", "OMPI_MCA_btl_sm_eager_limit": "8192"}


def open_mpi_defaults(env=None):
    """Defaults for two Open MPI settings, each only where the user has not set it, and only
    before MPI starts (mpi4py's MPI not yet imported: ``import ringreduce`` first, as the
    examples do). MPICH ignores both. Returns the names it set.

    - ``OMPI_MCA_osc=^ucx``: Open MPI 5 queries every one-sided component when a window is
      made; where UCX cannot start (a machine without its devices, such as a laptop or this
      project's test VM) the UCX component prints ``osc_ucx_component.c ... Error: OSC UCX
      component priority set inside component query failed`` at every window of the ``shm``
      algorithm, though the window then works. ringreduce's windows are node-local, which
      the ``sm`` component serves. Programs of the user's own that need UCX's RMA between
      nodes set the variable themselves (``OMPI_MCA_osc=ucx,sm``).
    - ``OMPI_MCA_btl_sm_eager_limit=8192`` (Open MPI's default: 4096): a small allreduce's
      payload rides in the header pass with 24 bytes of header, which pushed a 4 KiB payload
      over the shared-memory transport's eager limit into its rendezvous protocol: 4.1 us
      against 1.3 us for the exchange at 2 ranks here. 8 KiB keeps such messages eager and
      leaves the rest of Open MPI's protocol (and its own MPI_Allreduce) as it was; a larger
      limit changed how Open MPI's own allreduce cuts 16-64 KiB messages (docs/benchmarks.md,
      "Open MPI")."""
    env = os.environ if env is None else env
    if "mpi4py.MPI" in sys.modules:
        return []
    done = [name for name in OPEN_MPI_DEFAULTS if name not in env]
    for name in done:
        env[name] = OPEN_MPI_DEFAULTS[name]
    return done


_config = None


def get_config():
    """The process's configuration, parsed on first use."""
    global _config
    if _config is None:
        _config = parse()
    return _config


def is_whole(value, minimum):
    """Whether ``value`` is an integer (numpy's too, but not a bool) of at least ``minimum``."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= minimum


def segment_size(segment_bytes, dtype=None):
    """The per-call ``segment_bytes``, or the configuration's for None; ValueError for
    anything but an int >= 1, or, given the ``dtype`` of a single tensor, for less than one
    of its elements."""
    seg = get_config().segment_bytes if segment_bytes is None else segment_bytes
    if dtype is None and not is_whole(seg, 1):
        raise ValueError(f"segment_bytes must be an int >= 1, got {segment_bytes!r}")
    if dtype is not None and not is_whole(seg, dtype.itemsize):
        raise ValueError(f"segment_bytes must be an int of at least one element "
                         f"({dtype.itemsize} bytes for {dtype}), got {segment_bytes!r}")
    return int(seg)


def fusion_sizes(fusion_threshold, segment_bytes):
    """``(fusion cap, segment bytes)``: the arguments, or the configuration where they are
    None; ValueError for anything but an int >= 0 (cap) or >= 1 (segment)."""
    cap = get_config().fusion_threshold if fusion_threshold is None else fusion_threshold
    if not is_whole(cap, 0):
        raise ValueError(f"fusion_threshold must be an int >= 0 (bytes; 0 = no fusion), got "
                         f"{fusion_threshold!r}")
    return int(cap), segment_size(segment_bytes)


def check_agreement(mpi_comm):
    """Collective: raise ValueError on every rank if any rank's configuration is invalid or
    differs from another's. Called once per communicator, when it is first used."""
    try:
        mine, problem = get_config().items(), None
    except ValueError as exc:
        mine, problem = None, exc
    everyone = agree(mpi_comm, mine, problem, "the ringreduce configuration")
    rank = mpi_comm.Get_rank()
    for r, items in enumerate(everyone):
        for (name, value), (_, my_value) in zip(items, everyone[rank]):
            if value != my_value:
                raise ValueError(f"ranks were started with different ringreduce settings: "
                                 f"{name} is {my_value!r} on rank {rank} but {value!r} on "
                                 f"rank {r}; set the same value on every rank")
