"""What ``algorithm="auto"`` runs: a pure function of the agreed size, the rank count and
whether every rank shares one node's memory, so every rank computes the same choice.

The thresholds come from the 2- and 4-rank tables in docs/benchmarks.md
(``python -m ringreduce.perf.bench``). Device buffers take the same rule: the algorithms that
need host memory (``shm``) are simply never offered to them (``one_node`` is False there).
"""
import math
from typing import NamedTuple

# Below SMALL the data rides in the header's own lg p exchanges; from RING on the ring's
# pipelined neighbour traffic wins; rhd in between.
AUTO_SMALL_BYTES = 32 << 10
AUTO_RING_BYTES = 512 << 10
# All ranks on one node: from here on the shared-memory algorithm runs. Best of four runs of
# ``mpiexec -n P python -m ringreduce.perf.bench -b 1K -e 64M -f 4 -a native ring rhd doubling tree
# shm`` (docs/benchmarks.md, "Cost model fit"): at 2 ranks shm was the fastest of the
# library's algorithms from 64 KiB up but at 4 MiB (ring 0.97 ms, shm 1.06), and at 32 KiB
# already ahead of rhd; at 3 and 4 ranks (more ranks than the 2 cores) it ties doubling at
# 64 KiB and leads from 256 KiB up but at 64 MiB with 4 ranks.
AUTO_SHM_BYTES = 32 << 10
# ... and up to here (exclusive); larger messages take the ring. At 2 ranks shm's copies into
# the window ran 1.2-2.8x slower than the ring from 1 MiB up in 4-5 of 10 runs (its writes
# to lines the other core had just read were 5x slower; docs/benchmarks.md, "Shared-memory
# allreduce") and won by 10-20% in the others. At 1 MiB it has led over the ring in every
# later table of both MPIs: under Open MPI 0.68x native against the ring's 1.08x (three
# jobs), under MPICH 0.53x against 0.84x in the three jobs of "MPICH and Open MPI" (now) and
# 0.53-0.81 against 0.58-0.87 over nine runs before; at 2 MiB the two alternate from job to
# job (shm 0.54-0.98, ring 0.58-0.88 in four), at 4 MiB the ring leads. So 2 MiB, on both.
# From 1 to 32 MiB "auto" does not follow this bound but races the two in the job
# (core/adapt.py, collectives/run.py): this bound is what RINGREDUCE_ADAPT=0 runs.
AUTO_SHM_MAX_BYTES = 2 << 20
# A library whose measurements differ gets its own limit here, by ``MPI.get_vendor()[0]``
# ("MPICH", "Open MPI"); none does now (MPICH's was 1 MiB while its 1 MiB runs alternated).
SHM_MAX_BY_LIBRARY = {}
# All ranks on one node and the kernel letting them copy from and into each other's memory
# (``algorithms/direct.py``): from here on the single-copy algorithm runs, whatever the rule
# below says. Its kernel copies run at memory speed, where the ring's and shm's copies through
# cache-sized buffers are as fast while the data fits in this machine's 32 MiB L3. Medians of
# three jobs per MPI at 2 ranks, out of place (docs/benchmarks.md, "Single-copy allreduce"),
# direct / native against the ring's: MPICH 8 MiB 0.63 / 0.58, 16 MiB 0.60 / 0.66, 32 MiB
# 0.28 / 0.33, 64 MiB 0.24 / 0.25, 128 MiB 0.24 / 0.26; Open MPI 0.82 / 0.76, 0.65 / 0.66,
# 0.31 / 0.39, 0.27 / 0.34, 0.24 / 0.30. In place, over ResNet-50's 97.5 MiB of gradients,
# it takes 1.3-1.5x a memcpy where the ring took 1.9-2.2x.
AUTO_DIRECT_BYTES = 32 << 20
# Ranks at which AUTO_RING_BYTES was measured. Beyond them the ring's 2 (p - 1) latencies
# (rhd pays 2 lg p) move the size where its bandwidth wins upwards, about as sqrt(p) with 8
# ranks per node: over 25 GbE and 100 Gb InfiniBand at 16 to 1,024 ranks the cost model
# (``ringreduce.perf.model``, 2-rank fit) loses at most 10% on average between 32 KiB and
# 1 GiB with the threshold scaled by sqrt(p / 4), against up to 251% kept fixed and 35%
# scaled by p / 4 (``python benchmarks/fit_model.py --scaling``, docs/scaling.md).
AUTO_RING_RANKS = 4
# Largest payload that may ride with the header (explicit algorithm="doubling" included);
# it sizes the two receive buffers kept per communicator.
PIGGYBACK_CAP = 64 << 10
# Every rank on one host: "auto" rides the header up to PIGGYBACK_CAP (inclusive), since its
# lg p exchanges are then memory copies. At 2 ranks, three jobs per MPI of ``--sizes 32K 64K
# 128K -a native auto shm doubling`` (docs/benchmarks.md, "MPICH and Open MPI"): doubling /
# native MPICH 0.95-1.20 at 32 KiB and 0.90-1.29 at 64 KiB against shm's 1.22-1.44 and
# 1.09-1.40; Open MPI 1.11-1.26 and 1.07-1.33 against 1.47-1.56 and 1.34-1.50; at 128 KiB shm
# led on both (0.96-1.49 against 1.43-2.65). Across hosts the cost model (2-rank fit, 8 ranks
# a node) has doubling 1.3-3.3x rhd's time at 64 KiB over 10 and 25 GbE and 1.2-1.8x over
# InfiniBand from 8 to 1,024 ranks, so there the bound stays AUTO_SMALL_BYTES.
AUTO_SMALL_HOST_BYTES = PIGGYBACK_CAP + 1


def shm_max_bytes(library=None):
    """Where shm stops for "auto" under the MPI library named ``library``."""
    return SHM_MAX_BY_LIBRARY.get(library, AUTO_SHM_MAX_BYTES)


class Rule(NamedTuple):
    """Where "auto" switches above the header-riding sizes: shm from ``shm_min`` to
    ``shm_max`` (exclusive; equal bounds: never), when every rank shares one node; the ring
    from ``ring`` on, rhd below it. The built-in rule is :func:`default_rule`; a tuning file
    (``python -m ringreduce.tune``) gives measured ones."""
    shm_min: int
    shm_max: int
    ring: int


def default_rule(p, shm_max=AUTO_SHM_MAX_BYTES):
    """The built-in rule at ``p`` ranks; ``shm_max``: :func:`shm_max_bytes` of the library."""
    ring = math.ceil(AUTO_RING_BYTES * math.sqrt(max(p, AUTO_RING_RANKS) / AUTO_RING_RANKS))
    return Rule(AUTO_SHM_BYTES, shm_max, ring)


def choose_algorithm(nbytes, p, one_node=False, shm_max=AUTO_SHM_MAX_BYTES, rule=None,
                     direct=False):
    """The algorithm "auto" runs for ``nbytes`` on ``p`` ranks (every rank computes the same).
    ``one_node``: all ``p`` ranks share one node's memory (agreed by every rank); ``shm_max``:
    :func:`shm_max_bytes` of the MPI library (every rank runs the same one); ``rule``: a
    measured :class:`Rule` instead of the built-in one (the same on every rank: it comes
    from the agreed configuration); ``direct``: every rank shares one node and may copy from
    and into the others' memory (agreed by every rank)."""
    if p == 1 or nbytes < AUTO_SMALL_BYTES:
        return "doubling"
    if direct and nbytes >= AUTO_DIRECT_BYTES:
        return "direct"
    if rule is None:
        rule = default_rule(p, shm_max)
    if one_node and rule.shm_min <= nbytes < rule.shm_max:
        return "shm"
    if nbytes < rule.ring:
        return "rhd"
    return "ring"


def may_use_shm(nbytes, p, shm_max=AUTO_SHM_MAX_BYTES):
    """Whether "auto" would pick shm for ``nbytes`` on ``p`` ranks of one node: only then is
    the (collective, once per communicator) one-node question worth asking."""
    return p > 1 and AUTO_SHM_BYTES <= nbytes < shm_max


def may_use_direct(nbytes, p):
    """Whether "auto" would pick direct for ``nbytes`` on ``p`` ranks of one node whose ranks
    reach each other's memory: only then is that (collective, once per communicator)
    question worth asking."""
    return p > 1 and nbytes >= AUTO_DIRECT_BYTES


def rides_in_header(nbytes, algorithm, one_host=False):
    """Whether a call's payload travels inside the header pass (host memory only);
    ``one_host``: every rank of the communicator runs on one host (agreed by all)."""
    small = AUTO_SMALL_HOST_BYTES if one_host else AUTO_SMALL_BYTES
    return nbytes <= PIGGYBACK_CAP and (
        algorithm == "doubling" or (algorithm == "auto" and nbytes < small))
