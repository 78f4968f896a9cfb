r"""Alpha-beta-gamma cost model of the allreduce algorithms, fitted on this machine.

    python -m ringreduce.perf.model --ranks 8 64 1024 --sizes 64K 1M 64M --network ib100
    python -m ringreduce.perf.model --ranks 16 --ranks-per-node 8 --network 25gbe --plot out.png
    python -m ringreduce.perf.model --list-networks

Terms (as in the algorithm modules): a message costs ``alpha``, every byte a rank sends costs
``beta``, every byte it reduces costs ``gamma``; on one node the shared-memory algorithm pays
``barrier`` per barrier and ``copy`` per byte it copies. A cost function (``costs.py``) returns
the *coefficients* of those parameters for a message of ``n`` bytes on ``p`` ranks, so that
``time = sum(coefficient * parameter)``: linear in the parameters, hence fitted by least squares
(``fit``), and the same function serves prediction and fitting.

Scale. Beyond one node a cluster is ``nodes`` nodes of ``k`` ranks each, every node with one
network link (``Network``: alpha and beta of that link, from the sources given with each
preset) and the intra-node costs fitted here. Ranks sit on nodes in consecutive blocks of k
(mpiexec's default placement). A flat algorithm's step takes as long as its slowest message,
which is the one that crosses the network, and the k ranks of a node share its link whenever
they all send across at once (recursive halving-doubling and doubling at distances of k or
more; in a binomial tree only one rank per node sends that far; the ring's neighbours sit on
the same node but one). The two-level algorithms: "hierarchical" reduces to a leader per node
(binomial tree), allreduces among the leaders, and broadcasts back; "shm2" is
``algorithm="shm"`` across nodes: a shared-memory reduce-scatter inside each node, k
concurrent rings across the nodes (one per slice), and a shared-memory allgather.
"""
import argparse
import math
import sys
from dataclasses import dataclass, replace

from .costs import (COEFFICIENTS, FITTED_AS, HEADER_BYTES, PIGGYBACK_CAP, SEGMENT_BYTES,
                    SHM_MAX_BLOCK, THIS_MACHINE, Costs, ceil_lg, dbtree, doubling, fit, folds,
                    header_messages, lg, points_from_bench, pow2_floor, predict, rhd, ring, shm,
                    timeshare, tree)

# The one-node costs (costs.py) are part of the model's names, beside the cluster and the CLI.
__all__ = ["HEADER_BYTES", "PIGGYBACK_CAP", "SEGMENT_BYTES", "SHM_MAX_BLOCK", "pow2_floor", "lg",
           "ceil_lg", "folds", "header_messages", "ring", "rhd", "doubling", "tree", "dbtree",
           "shm", "COEFFICIENTS", "Costs", "THIS_MACHINE", "FITTED_AS", "timeshare", "predict",
           "fit", "points_from_bench", "Network", "NETWORKS", "cluster_time",
           "CLUSTER_ALGORITHMS", "best", "busbw", "table", "plot", "main"]


# -- networks -----------------------------------------------------------------------------------

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
            + 2 * folds(p) * local.alpha)


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
        p2, f = pow2_floor(p), folds(p)
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
    ap = argparse.ArgumentParser(prog="python -m ringreduce.perf.model",
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
