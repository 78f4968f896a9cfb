r"""The cost of one allreduce on one node: each algorithm's coefficients of the parameters, the
fitted parameters of this machine, and the least-squares fit that produced them. The terms
and how a cluster is built from these: ``model.py``'s docstring.

The forms follow Thakur, Rabenseifner and Gropp (IJHPCA 2005) for the textbook algorithms and
the library's own code for the details that change counts: the ring and the tree send every
chunk in segments of at most ``seg`` bytes, each a message; a rank count that is not a power of
two costs recursive halving-doubling and recursive doubling a fold (2 alpha + 2 n beta +
n gamma); and every call except a small "doubling" one first runs the header pass, lg p
exchanges of 24 bytes (``collectives/header.py``).

Numbers in THIS_MACHINE come from ``benchmarks/fit_model.py`` on the development machine (see
``docs/benchmarks.md``, "Cost model fit").
"""
import math
from dataclasses import dataclass

from ..config import DEFAULTS
from ..core.choose import PIGGYBACK_CAP  # below it "doubling" rides the header

HEADER_BYTES = 24
SEGMENT_BYTES = DEFAULTS["RINGREDUCE_SEGMENT_BYTES"]
# algorithms/shm.py's _MAX_BLOCK_BYTES, written out: that module loads MPI and Numba, and the
# model is pure arithmetic.
SHM_MAX_BLOCK = 8 << 20


def pow2_floor(p):
    b = 1
    while b * 2 <= p:
        b *= 2
    return b


def lg(p):
    return math.log2(p) if p > 1 else 0.0


def ceil_lg(p):
    return (p - 1).bit_length()


def folds(p):
    """1 when recursive doubling / halving-doubling must fold a non-power-of-two p."""
    return 1 if p != pow2_floor(p) else 0


def header_messages(p):
    """Messages on the critical path of the header pass (recursive doubling, folded)."""
    if p == 1:
        return 0
    return int(lg(pow2_floor(p))) + 2 * folds(p)


# -- coefficient functions: dict parameter -> coefficient; n in bytes ---------------------------

def ring(n, p, seg=SEGMENT_BYTES, header=True):
    """2 (p-1) alpha per segment of a chunk + 2 n (p-1)/p beta + n (p-1)/p gamma."""
    if p == 1:
        return {}
    segs = max(1, math.ceil(n / p / seg))
    return {"alpha": 2 * (p - 1) * segs + (header_messages(p) if header else 0),
            "beta": 2 * n * (p - 1) / p, "gamma": n * (p - 1) / p}


def rhd(n, p, header=True):
    """2 lg p alpha + 2 n (p-1)/p beta + n (p-1)/p gamma over p2 = 2**floor(lg p) ranks,
    plus the fold's 2 alpha + 2 n beta + n gamma when p is not a power of two."""
    if p == 1:
        return {}
    p2, f = pow2_floor(p), folds(p)
    return {"alpha": 2 * lg(p2) + 2 * f + (header_messages(p) if header else 0),
            "beta": 2 * n * (p2 - 1) / p2 + 2 * n * f,
            "gamma": n * (p2 - 1) / p2 + n * f}


def doubling(n, p, header=True):
    """lg p alpha + n lg p beta + n lg p gamma, plus the fold. Up to PIGGYBACK_CAP the data
    rides in the header's own messages, so there is no separate header pass."""
    if p == 1:
        return {}
    p2, f = pow2_floor(p), folds(p)
    extra = header_messages(p) if header and n > PIGGYBACK_CAP else 0
    return {"alpha": lg(p2) + 2 * f + extra,
            "beta": (n + HEADER_BYTES) * (lg(p2) + 2 * f),
            "gamma": n * (lg(p2) + f)}


def tree(n, p, seg=SEGMENT_BYTES, header=True):
    """Binomial reduce then broadcast: 2 ceil(lg p) alpha per segment + 2 n ceil(lg p) beta +
    n ceil(lg p) gamma (the root receives from, and sends to, ceil(lg p) children)."""
    if p == 1:
        return {}
    d, segs = ceil_lg(p), max(1, math.ceil(n / seg))
    return {"alpha": 2 * d * segs + (header_messages(p) if header else 0),
            "beta": 2 * n * d, "gamma": n * d}


def dbtree(n, p, seg=SEGMENT_BYTES, header=True):
    """Double binary tree (Sanders, Speck and Traeff 2009; NCCL across nodes), pipelined: two
    trees of depth D = ceil(lg p) carry half the data each, in m segments of s <= seg bytes,
    and every rank is a leaf in one of them. Up and down, each of D + m - 1 steps moves one
    segment per tree into an inner node from its two children: 2 (D + m - 1) alpha +
    4 (D + m - 1) s beta + n gamma, which tends to 2 n beta for long messages. Not one of the
    library's algorithms: here for comparison at scale."""
    if p == 1:
        return {}
    d = ceil_lg(p)
    m = max(1, math.ceil(n / 2 / seg))
    s = n / 2 / m
    return {"alpha": 2 * (d + m - 1) + (header_messages(p) if header else 0),
            "beta": 4 * (d + m - 1) * s, "gamma": n}


def shm(n, p, seg=SEGMENT_BYTES, header=True):
    """One node: (K + 1) barriers for K = ceil(n / block) blocks of p segments (at most
    SHM_MAX_BLOCK unless one segment is more), n (2 - 1/p) bytes copied (in: all but the
    rank's own slice; out: everything) and n (p-1)/p reduced; no message but the header's."""
    if p == 1:
        return {}
    block = min(n, p * seg, max(seg, SHM_MAX_BLOCK))
    k = math.ceil(n / block)
    return {"alpha": header_messages(p) if header else 0, "barrier": k + 1,
            "copy": n * (2 - 1 / p), "gamma": n * (p - 1) / p}


COEFFICIENTS = {"ring": ring, "rhd": rhd, "doubling": doubling, "tree": tree, "dbtree": dbtree,
                "shm": shm}
# MPICH's MPI_Allreduce above a few bytes is Rabenseifner's algorithm (REFERENCES.md), without
# our header: fitted with the rhd form.
COEFFICIENTS["native"] = lambda n, p, **kw: rhd(n, p, header=False)


# -- parameters ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Costs:
    """Per-algorithm parameters in seconds (alpha, barrier) and seconds per byte (the rest)."""
    alpha: float = 0.0
    beta: float = 0.0
    gamma: float = 0.0
    barrier: float = 0.0
    copy: float = 0.0

    def time(self, coefficients):
        return sum(c * getattr(self, k) for k, c in coefficients.items())


# Fitted on the development machine (2-core x86-64 VM, MPICH 5.0.2 ch4 shared memory) by
# ``benchmarks/fit_model.py`` from ``python -m ringreduce.perf.bench --json`` at 2, 3 and 4 ranks;
# the fit, its errors and the command lines are in docs/benchmarks.md ("Cost model fit").
# gamma is the Numba sum kernel on float32 arrays of 64 MiB, per byte of dst.
THIS_MACHINE = {
    "native": Costs(alpha=2.52e-06, beta=2.22e-10, gamma=7.21e-11),
    "ring": Costs(alpha=8.31e-06, beta=1.42e-10, gamma=7.21e-11),
    "rhd": Costs(alpha=6.08e-06, beta=1.98e-10, gamma=7.21e-11),
    "doubling": Costs(alpha=9.13e-06, beta=2.22e-10, gamma=7.21e-11),
    "tree": Costs(alpha=5.63e-06, beta=1.36e-10, gamma=7.21e-11),
    "shm": Costs(gamma=7.21e-11, barrier=7.48e-06, copy=8.06e-11),
}


# An algorithm the library does not have borrows the fitted costs of its nearest relative.
FITTED_AS = {"dbtree": "tree"}


def timeshare(p, cores):
    """How much slower every step runs when ``p`` ranks share ``cores`` cores (1 when each
    rank has its own): all ranks are busy at once in these algorithms, so each gets
    ``cores / p`` of a core. ``cores=None``: as many as ranks."""
    return max(1.0, p / cores) if cores else 1.0


def predict(algorithm, n, p, costs=None, seg=SEGMENT_BYTES, cores=None):
    """Predicted seconds of one call of ``algorithm`` on one node with fitted ``costs``."""
    costs = THIS_MACHINE if costs is None else costs
    fn = COEFFICIENTS[algorithm]
    kw = {"seg": seg} if algorithm in ("ring", "tree", "shm", "dbtree") else {}
    return costs[FITTED_AS.get(algorithm, algorithm)].time(fn(n, p, **kw)) * timeshare(p, cores)


# -- fitting ------------------------------------------------------------------------------------

def fit(points, algorithm, fixed, free, seg=SEGMENT_BYTES, cores=None):
    """Least-squares fit of the ``free`` parameters of ``algorithm``.

    ``points``: ``[(n_bytes, p, seconds)]``; ``fixed``: parameter values held (e.g. gamma
    measured by itself, since the ring's beta and gamma always come in a 2:1 ratio and cannot
    be told apart from its timings). Residuals are relative (each row divided by its time), so
    a 20 us call counts as much as a 20 ms one. A parameter that comes out negative is pinned
    to zero and the rest refitted. ``cores``: the machine's cores, for :func:`timeshare`.
    Returns a :class:`Costs`.
    """
    import numpy as np
    fn = COEFFICIENTS[algorithm]
    kw = {"seg": seg} if algorithm in ("ring", "tree", "shm") else {}
    free = list(free)
    while True:
        rows, rhs = [], []
        for n, p, t in points:
            share = timeshare(p, cores)
            c = {k: v * share for k, v in fn(n, p, **kw).items()}
            known = sum(v * fixed.get(k, 0.0) for k, v in c.items() if k not in free)
            rows.append([c.get(k, 0.0) / t for k in free])
            rhs.append((t - known) / t)
        sol = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0] if free else []
        neg = [k for k, v in zip(free, sol) if v < 0]
        if not neg:
            break
        fixed = dict(fixed, **{neg[0]: 0.0})
        free.remove(neg[0])
    values = dict(fixed)
    values.update(zip(free, (float(v) for v in sol)))
    return Costs(**{k: v for k, v in values.items() if k in Costs.__dataclass_fields__})


def points_from_bench(docs, spec):
    """``[(bytes, ranks, seconds)]`` of one algorithm column of ``ringreduce.perf.bench --json``
    outputs (parsed dicts)."""
    out = []
    for d in docs:
        for row in d["rows"]:
            res = row["results"].get(spec)
            if res is not None and row["bytes"] > 0:
                out.append((row["bytes"], d["ranks"], res["time_us"] * 1e-6))
    return out
