r"""Alpha-beta-gamma cost model of the allreduce algorithms, fitted on this machine.

    python -m ringreduce.model --ranks 8 64 1024 --sizes 64K 1M 64M --network ib100
    python -m ringreduce.model --ranks 16 --ranks-per-node 8 --network 25gbe --plot out.png
    python -m ringreduce.model --list-networks

Terms (as in the algorithm modules): a message costs ``alpha``, every byte a rank sends costs
``beta``, every byte it reduces costs ``gamma``; on one node the shared-memory algorithm pays
``barrier`` per barrier and ``copy`` per byte it copies. A cost function below returns the
*coefficients* of those parameters for a message of ``n`` bytes on ``p`` ranks, so that
``time = sum(coefficient * parameter)``: linear in the parameters, hence fitted by least squares
(``fit``), and the same function serves prediction and fitting.

The forms follow Thakur, Rabenseifner and Gropp (IJHPCA 2005) for the textbook algorithms and
the library's own code for the details that change counts: the ring and the tree send every
chunk in segments of at most ``seg`` bytes, each a message; a rank count that is not a power of
two costs recursive halving-doubling and recursive doubling a fold (2 alpha + 2 n beta +
n gamma); and every call except a small "doubling" one first runs the header pass, lg p
exchanges of 24 bytes (``_allreduce``).

Scale. Beyond one node a cluster is ``nodes`` nodes of ``k`` ranks each, every node with one
network link (``Network``: alpha and beta of that link, from the sources given with each
preset) and the intra-node costs fitted here. Ranks sit on nodes in consecutive blocks of k
(mpiexec's default placement). A flat algorithm's step takes as long as its slowest message,
which is the one that crosses the network, and the k ranks of a node share its link whenever
they all send across at once (recursive halving-doubling and doubling at distances of k or
more; in a binomial tree only one rank per node sends that far; the ring's neighbours sit on
the same node but one). The two-level
algorithms: "hierarchical" reduces to a leader per node (binomial tree), allreduces among the
leaders, and broadcasts back; "shm2" is ``algorithm="shm"`` across nodes: a shared-memory
reduce-scatter inside each node, k concurrent rings across the nodes (one per slice), and a
shared-memory allgather.

Numbers in THIS_MACHINE come from ``benchmarks/fit_model.py`` on the development machine (see
``docs/benchmarks.md``, "Cost model fit").
"""
import argparse
import math
import sys
from dataclasses import dataclass, replace

HEADER_BYTES = 24
PIGGYBACK_CAP = 64 << 10   # _allreduce.PIGGYBACK_CAP: below it "doubling" rides the header
SEGMENT_BYTES = 1 << 20    # RINGREDUCE_SEGMENT_BYTES default
SHM_MAX_BLOCK = 8 << 20    # algorithms/shm.py: _MAX_BLOCK_BYTES


def pow2_floor(p):
    b = 1
    while b * 2 <= p:
        b *= 2
    return b


def lg(p):
    return math.log2(p) if p > 1 else 0.0


def ceil_lg(p):
    return (p - 1).bit_length()


def _fold(p):
    """1 when recursive doubling / halving-doubling must fold a non-power-of-two p."""
    return 1 if p != pow2_floor(p) else 0


def header_messages(p):
    """Messages on the critical path of the header pass (recursive doubling, folded)."""
    if p == 1:
        return 0
    return int(lg(pow2_floor(p))) + 2 * _fold(p)


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
    p2, f = pow2_floor(p), _fold(p)
    return {"alpha": 2 * lg(p2) + 2 * f + (header_messages(p) if header else 0),
            "beta": 2 * n * (p2 - 1) / p2 + 2 * n * f,
            "gamma": n * (p2 - 1) / p2 + n * f}


def doubling(n, p, header=True):
    """lg p alpha + n lg p beta + n lg p gamma, plus the fold. Up to PIGGYBACK_CAP the data
    rides in the header's own messages, so there is no separate header pass."""
    if p == 1:
        return {}
    p2, f = pow2_floor(p), _fold(p)
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


@dataclass(frozen=True)
class Network:
    name: str
    alpha: float   # s per message
    beta: float    # s per byte on one node's link
    source: str


# A link's beta is 1 / (line rate in bytes per second); protocol framing costs a few percent
# more (Ethernet with TCP/IP at MTU 1500: 1448 payload bytes per 1538 on the wire, 6%).
NETWORKS = {
    "10gbe": Network("10 GbE, MPI over TCP", 10e-6, 1 / 1.25e9,
                     "alpha: ~10 us half-round-trip MPI ping-pong over TCP on 10 GbE (NetPIPE, "
                     "Open MPI; J. Squyres, blogs.cisco.com/performance/aint-your-fathers-tcp); "
                     "beta: 10 Gbit/s line rate"),
    "25gbe": Network("25 GbE, MPI over TCP", 10e-6, 1 / 3.125e9,
                     "alpha: as 10 GbE (the TCP stack, not the line rate, sets it: same source); "
                     "beta: 25 Gbit/s line rate (IEEE 802.3by); Horovod's paper ran on 25 Gbit/s"),
    "ib100": Network("100 Gb InfiniBand EDR", 1.0e-6, 1 / 12.4e9,
                     "alpha: osu_latency of small messages between two nodes: 0.90-0.95 us "
                     "with Open MPI and MPICH over UCX on InfiniBand "
                     "(gist.github.com/jfgrimm/3af692a5475bdd4ed836b5a18197a209), 1.18 us "
                     "with one rank per node on 100 Gb/s Omni-Path "
                     "(gist.github.com/hppritcha/6a3acd0c192fcfd082bd543fc98e6fe6); "
                     "beta: EDR's line rate is 12.5 GB/s (4 lanes x 25.78 Gb/s, 64b/66b, "
                     "ConnectX-5 user manual), and osu_mbw_mr reaches 12.38 GB/s on a 100 Gb/s "
                     "fabric (Omni-Path, gist.github.com/hppritcha/8da4436a216c9d96bf10ad9d403da03f)"),
    "ib200": Network("200 Gb InfiniBand HDR", 1.0e-6, 1 / 24.8e9,
                     "alpha: as EDR (same adapters' software path); beta: twice EDR's, the "
                     "HDR line rate of 200 Gb/s at EDR's measured efficiency"),
}

# Fitted on the development machine (2-core x86-64 VM, MPICH 5.0.2 ch4 shared memory) by
# ``benchmarks/fit_model.py`` from ``python -m ringreduce.bench --json`` at 2, 3 and 4 ranks;
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


# -- clusters -----------------------------------------------------------------------------------

def _across(costs, net, share=1):
    """The costs of a message between nodes. The alpha fitted on one node is mostly the
    library's own time per message (Python, mpi4py, MPI's software path) and is paid on any
    message, so the network's latency adds to it; bytes stream through memory and over the
    wire at once, so the slower of the two sets beta (the wire's counts ``share`` times when
    that many ranks of a node send across at once)."""
    return replace(costs, alpha=costs.alpha + net.alpha, beta=max(costs.beta, net.beta * share))


def _distances(p2):
    """Partner distances of recursive doubling over p2 ranks: 1, 2, 4, ..., p2 / 2."""
    return [1 << i for i in range(int(lg(p2)))]


def _header(p, k, net, local):
    """The header pass: recursive doubling of 24 bytes, folded; distances of k or more cross
    the network (ranks are placed on nodes in consecutive blocks of k, mpiexec's default)."""
    if p == 1:
        return 0.0
    steps = _distances(pow2_floor(p))
    return (sum(local.alpha + (net.alpha if d >= k else 0.0) for d in steps)
            + 2 * _fold(p) * local.alpha)


def cluster_time(algorithm, n, nodes, k, net, costs=None, seg=SEGMENT_BYTES):
    """Seconds for one allreduce of n bytes over ``nodes`` nodes of ``k`` ranks each.

    Ranks sit on nodes in consecutive blocks of k. A message inside a node costs this
    machine's fitted alpha and beta, one between nodes that alpha plus the network's, and the
    slower of the two betas (``_across``); when all k ranks of a node send across at once
    (recursive halving-doubling and doubling at distances of k or more) they share the node's
    link, so its beta counts k times.
    """
    if algorithm not in CLUSTER_ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of "
                         f"{', '.join(CLUSTER_ALGORITHMS)}")
    costs = THIS_MACHINE if costs is None else costs
    p = nodes * k
    if p == 1:
        return 0.0
    if nodes == 1:
        if algorithm in ("shm", "shm2"):
            return predict("shm", n, p, costs, seg)
        if algorithm == "hierarchical":
            return _node_tree(n, k, costs, seg)
        return predict(algorithm, n, p, costs, seg)
    fitted = costs[FITTED_AS.get(algorithm, "ring" if algorithm in ("hierarchical", "shm2")
                                  else algorithm)]
    gamma = fitted.gamma
    if algorithm == "ring":
        # Neighbours: k - 1 of every k hops stay on a node, one crosses, and each link carries
        # one rank's stream; a step lasts as long as its slowest hop.
        c = ring(n, p, seg, header=False)
        return _across(fitted, net).time(c) + _header(p, k, net, fitted)
    if algorithm in ("rhd", "doubling"):
        p2, f = pow2_floor(p), _fold(p)
        t = _header(p, k, net, fitted) if algorithm == "rhd" or n > PIGGYBACK_CAP else 0.0
        for d in _distances(p2):
            # rhd: a halving and a doubling message of n d / p2 bytes; doubling: one of n.
            msgs, nbytes = (2, 2 * n * d / p2) if algorithm == "rhd" else (1, n + HEADER_BYTES)
            step = _across(fitted, net, share=k) if d >= k else fitted
            t += msgs * step.alpha + nbytes * step.beta
        t += f * (2 * fitted.alpha + 2 * n * fitted.beta)   # the fold pairs neighbours
        return t + COEFFICIENTS[algorithm](n, p)["gamma"] * gamma
    if algorithm == "tree":
        # Binomial: at a distance of k or more only one rank per node sends, so no sharing.
        segs = max(1, math.ceil(n / seg))
        t = _header(p, k, net, fitted)
        for d in (1 << i for i in range(ceil_lg(p))):
            step = _across(fitted, net) if d >= k else fitted
            t += 2 * (segs * step.alpha + n * step.beta)
        return t + tree(n, p, seg)["gamma"] * gamma
    if algorithm == "dbtree":
        # The trees span the nodes (one rank per node in them, as NCCL builds them); a step
        # waits for the network, each link carrying one stream.
        c = dbtree(n, nodes, seg, header=False)
        return _across(fitted, net).time(c) + _node_tree(n, k, costs, seg) \
            + _header(p, k, net, fitted)
    if algorithm == "hierarchical":
        outer = min(cluster_time(a, n, nodes, 1, net, costs, seg)
                    for a in ("ring", "rhd", "doubling", "dbtree"))
        return _node_tree(n, k, costs, seg) + outer + _header(p, k, net, fitted)
    if algorithm == "shm2":
        inner = predict("shm", n, k, costs, seg) - costs["shm"].alpha * header_messages(k) \
            if k > 1 else 0.0
        # k rings at once, one per slice of n / k bytes, all through the node's one link: the
        # link carries 2 n (N - 1) / N bytes; each ring reduces its own n / k.
        c = ring(n / k, nodes, seg, header=False)
        c["beta"] *= k
        return inner + _across(fitted, net).time(c) + _header(p, k, net, fitted)


def _node_tree(n, k, costs, seg):
    """Reduce to the node's leader and broadcast back (binomial trees inside one node)."""
    return costs["tree"].time(tree(n, k, seg, header=False)) if k > 1 else 0.0


CLUSTER_ALGORITHMS = ("ring", "rhd", "doubling", "tree", "dbtree", "hierarchical", "shm2")


def best(n, nodes, k, net, costs=None, algorithms=CLUSTER_ALGORITHMS, seg=SEGMENT_BYTES):
    """``(name, seconds)`` of the fastest algorithm for one message."""
    return min(((a, cluster_time(a, n, nodes, k, net, costs, seg)) for a in algorithms),
               key=lambda x: x[1])


def busbw(n, p, seconds):
    """nccl-tests' bus bandwidth in GB/s: n / t * 2 (p - 1) / p."""
    return n / seconds * 2 * (p - 1) / p / 1e9 if seconds > 0 and p > 1 else 0.0


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
    """``[(bytes, ranks, seconds)]`` of one algorithm column of ``ringreduce.bench --json``
    outputs (parsed dicts)."""
    out = []
    for d in docs:
        for row in d["rows"]:
            res = row["results"].get(spec)
            if res is not None and row["bytes"] > 0:
                out.append((row["bytes"], d["ranks"], res["time_us"] * 1e-6))
    return out


# -- command line -------------------------------------------------------------------------------

def _size(text):
    t = text.strip().upper().replace("I", "").rstrip("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def _fmt_size(n):
    for unit, s in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= s and n % s == 0:
            return f"{n // s}{unit}"
    return str(n)


def table(ranks, sizes, k, net, costs=None, algorithms=CLUSTER_ALGORITHMS):
    """Lines of text: predicted time and busbw per algorithm, and the winner, per size."""
    lines = []
    for p in ranks:
        nodes = max(1, p // k) if p >= k else 1
        kk = k if p >= k else p
        lines.append(f"# {p} ranks = {nodes} node(s) x {kk}, network {net.name} "
                     f"(alpha {net.alpha * 1e6:.2f} us, {1 / net.beta / 1e9:.2f} GB/s)")
        head = f"{'size':>6} " + " ".join(f"{a:>17}" for a in algorithms) + "  best"
        lines.append(head)
        lines.append(f"{'':>6} " + " ".join(f"{'us':>9} {'busbw':>7}" for _ in algorithms))
        for n in sizes:
            cells, times = [], {}
            for a in algorithms:
                t = cluster_time(a, n, nodes, kk, net, costs)
                times[a] = t
                cells.append(f"{t * 1e6:>9.1f} {busbw(n, nodes * kk, t):>7.2f}")
            win = min(times, key=times.get)
            lines.append(f"{_fmt_size(n):>6} " + " ".join(cells) + f"  {win}")
        lines.append("")
    return lines


def plot(path, ranks, k, net, costs=None, algorithms=CLUSTER_ALGORITHMS):
    """Predicted busbw against message size, one panel per rank count (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    sizes = [1 << e for e in range(10, 31)]
    fig, axes = plt.subplots(1, len(ranks), figsize=(5 * len(ranks), 4), squeeze=False)
    for ax, p in zip(axes[0], ranks):
        nodes = max(1, p // k) if p >= k else 1
        kk = k if p >= k else p
        for a in algorithms:
            bw = [busbw(n, nodes * kk, cluster_time(a, n, nodes, kk, net, costs)) for n in sizes]
            ax.plot(sizes, bw, label=a)
        ax.set(xscale="log", xlabel="message bytes", ylabel="predicted busbw (GB/s)",
               title=f"{p} ranks ({nodes} x {kk}), {net.name}")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m ringreduce.model",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 64, 1024])
    ap.add_argument("--ranks-per-node", type=int, default=8,
                    help="ranks sharing one node's memory and network link (default 8)")
    ap.add_argument("--sizes", type=_size, nargs="+",
                    default=[8, 1 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20, 256 << 20])
    ap.add_argument("--network", default="ib100", choices=sorted(NETWORKS))
    ap.add_argument("--algorithms", nargs="+", default=list(CLUSTER_ALGORITHMS),
                    choices=list(CLUSTER_ALGORITHMS))
    ap.add_argument("--list-networks", action="store_true", help="print the presets and sources")
    ap.add_argument("--plot", help="write predicted busbw curves to this PNG (needs matplotlib)")
    args = ap.parse_args(argv)
    if args.list_networks:
        for key, net in NETWORKS.items():
            print(f"{key:>6}: {net.name}: alpha {net.alpha * 1e6:g} us, beta {net.beta * 1e9:.4f} "
                  f"ns/B ({1 / net.beta / 1e9:.2f} GB/s)\n        source: {net.source}")
        return 0
    if args.ranks_per_node < 1 or min(args.ranks) < 1:
        ap.error("--ranks and --ranks-per-node must be >= 1")
    net = NETWORKS[args.network]
    print("\n".join(table(args.ranks, args.sizes, args.ranks_per_node, net,
                          algorithms=args.algorithms)))
    if args.plot:
        plot(args.plot, args.ranks, args.ranks_per_node, net, algorithms=args.algorithms)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
