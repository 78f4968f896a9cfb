"""ringreduce.perf.model: the cost formulas, the least-squares fit, the cluster predictions, the CLI.

Pure: no MPI traffic. The formulas are checked against the textbook forms of Thakur,
Rabenseifner and Gropp (2005) written out by hand, the fit against data the model itself
generated with known parameters.
"""
import math

import numpy as np
import pytest

from ringreduce.perf import model
from ringreduce.perf.model import Costs

MiB = 1 << 20


def test_ring_is_the_textbook_form_plus_segments_and_header():
    n, p = 8 * MiB, 4
    c = model.ring(n, p, seg=1 << 40)
    assert c["alpha"] == 2 * (p - 1) + 2            # + lg 4 header exchanges
    assert c["beta"] == 2 * n * (p - 1) / p
    assert c["gamma"] == n * (p - 1) / p
    # 1 MiB segments: a chunk of 2 MiB goes as 2 messages per step
    assert model.ring(n, p, seg=MiB)["alpha"] == 2 * (p - 1) * 2 + 2
    assert model.ring(n, p, header=False, seg=1 << 40)["alpha"] == 2 * (p - 1)


def test_rhd_power_of_two_and_fold():
    n = 3 * MiB
    c = model.rhd(n, 8, header=False)
    assert c == {"alpha": 6, "beta": 2 * n * 7 / 8, "gamma": n * 7 / 8}
    # p = 6 folds onto 4: + 2 alpha + 2 n beta + n gamma (the even ranks hand over and get back)
    c6 = model.rhd(n, 6, header=False)
    assert c6["alpha"] == 2 * 2 + 2
    assert c6["beta"] == pytest.approx(2 * n * 3 / 4 + 2 * n)
    assert c6["gamma"] == pytest.approx(n * 3 / 4 + n)


def test_doubling_rides_the_header_when_small():
    small, big = 1024, 1 * MiB
    assert model.doubling(small, 4)["alpha"] == 2                      # lg 4, nothing else
    assert model.doubling(big, 4)["alpha"] == 2 + model.header_messages(4)
    assert model.doubling(big, 4)["gamma"] == big * 2


def test_header_messages():
    assert [model.header_messages(p) for p in (1, 2, 3, 4, 5, 8)] == [0, 1, 3, 2, 4, 3]


def test_trees():
    n = 4 * MiB
    c = model.tree(n, 5, seg=1 << 40, header=False)
    assert c == {"alpha": 2 * 3, "beta": 2 * n * 3, "gamma": n * 3}    # ceil(lg 5) = 3
    # one segment per tree: 2 D latencies, the whole half-message per hop from two children
    d = model.dbtree(n, 1024, seg=1 << 40, header=False)
    assert d == {"alpha": 2 * 10, "beta": 4 * 10 * n / 2, "gamma": n}
    # long messages in small segments: tends to 2 n beta
    long = model.dbtree(1 << 30, 1024, seg=1 << 20, header=False)
    assert long["beta"] == pytest.approx(2 * (1 << 30), rel=0.02)


def test_shm_counts_barriers_copies_and_reductions():
    n, p, seg = 10 * MiB, 4, 1 * MiB
    c = model.shm(n, p, seg=seg)
    assert c["barrier"] == 3 + 1        # blocks of 4 segments: 4 + 4 + 2 MiB
    assert model.shm(64 * MiB, 16, seg=seg)["barrier"] == 8 + 1   # capped at 8 MiB blocks
    assert c["copy"] == n * (2 - 1 / p)
    assert c["gamma"] == n * 3 / 4
    assert c["alpha"] == model.header_messages(p)
    assert model.shm(100, 2, seg=seg)["barrier"] == 2


def test_one_rank_costs_nothing():
    for name, fn in model.COEFFICIENTS.items():
        assert Costs(1, 1, 1, 1, 1).time(fn(1000, 1)) == 0, name


def test_fit_recovers_known_parameters():
    truth = Costs(alpha=7e-6, beta=0.4e-9, gamma=0.2e-9)
    points = [(n, p, truth.time(model.ring(n, p))) for p in (2, 3, 4)
              for n in (1 << 10, 1 << 14, 1 << 18, 1 << 22, 1 << 26)]
    got = model.fit(points, "ring", {"gamma": truth.gamma}, ("alpha", "beta"))
    assert got.alpha == pytest.approx(truth.alpha, rel=1e-9)
    assert got.beta == pytest.approx(truth.beta, rel=1e-9)
    assert got.gamma == truth.gamma


def test_fit_with_noise_and_for_shm():
    rng = np.random.default_rng(0)
    truth = Costs(alpha=20e-6, barrier=3e-6, copy=0.2e-9, gamma=0.15e-9)
    points = []
    for p in (2, 3, 4):
        for e in range(10, 27):
            n = 1 << e
            t = truth.time(model.shm(n, p)) * (1 + 0.03 * rng.standard_normal())
            points.append((n, p, t))
    got = model.fit(points, "shm", {"gamma": truth.gamma}, ("alpha", "barrier", "copy"))
    assert got.copy == pytest.approx(truth.copy, rel=0.05)
    assert got.alpha + got.barrier == pytest.approx(truth.alpha + truth.barrier, rel=0.2)


def test_fit_pins_a_negative_parameter_to_zero():
    # Pure bandwidth data: an unconstrained fit would give alpha a small negative value.
    points = [(n, 2, 1e-9 * n * (1 + (0.01 if n < 1 << 20 else 0.0) * -1)) for n in
              (1 << 12, 1 << 16, 1 << 20, 1 << 24)]
    got = model.fit(points, "ring", {"gamma": 0.0}, ("alpha", "beta"))
    assert got.alpha == 0.0 and got.beta > 0


def test_points_from_bench():
    doc = {"ranks": 3, "rows": [
        {"bytes": 1024, "results": {"ring": {"time_us": 50.0}, "native": {"time_us": 20.0}}},
        {"bytes": 0, "results": {"ring": {"time_us": 5.0}}}]}
    assert model.points_from_bench([doc], "ring") == [(1024, 3, pytest.approx(50e-6))]


def test_cluster_time_on_one_node_is_the_node_model():
    costs = model.THIS_MACHINE
    net = model.NETWORKS["ib100"]
    n = 16 * MiB
    assert model.cluster_time("shm2", n, 1, 8, net) == model.predict("shm", n, 8, costs)
    assert model.cluster_time("ring", n, 1, 8, net) == model.predict("ring", n, 8, costs)
    assert model.cluster_time("ring", n, 1, 1, net) == 0.0


def test_cluster_ring_pays_the_network_on_every_step():
    net = model.NETWORKS["25gbe"]
    n, nodes, k = 4 * MiB, 16, 8
    t = model.cluster_time("ring", n, nodes, k, net)
    p = nodes * k
    c = model.ring(n, p, header=False)
    local = model.THIS_MACHINE["ring"]
    # header: recursive doubling over 128 ranks, distances 8..64 cross, 1..4 stay on a node
    header = 7 * local.alpha + 4 * net.alpha
    # every step waits for the hop that crosses: the library's own time per message plus
    # the wire's latency, and the slower of memory and wire per byte
    assert t == pytest.approx(c["alpha"] * (local.alpha + net.alpha)
                              + c["beta"] * max(net.beta, local.beta)
                              + c["gamma"] * local.gamma + header)


def test_two_level_beats_flat_ring_at_scale_for_latency_bound_sizes():
    net = model.NETWORKS["25gbe"]
    n = 64 << 10
    flat = model.cluster_time("ring", n, 128, 8, net)
    two = model.cluster_time("shm2", n, 128, 8, net)
    assert two < flat / 4      # 2 * 127 network latencies instead of 2 * 1023


def test_link_sharing_penalises_rhd_across_nodes():
    net = model.NETWORKS["25gbe"]
    n = 64 * MiB
    one_per_node = model.cluster_time("rhd", n, 64, 1, net)
    eight_per_node = model.cluster_time("rhd", n, 8, 8, net)
    # the same 64 ranks; 8 of them behind each link in the steps that cross
    local = model.THIS_MACHINE["rhd"]
    assert 8 * net.beta > local.beta     # so sharing, not memory, sets the pace
    assert eight_per_node > 2 * one_per_node
    # the ring never sends more than one rank's stream through a link
    assert model.cluster_time("ring", n, 8, 8, net) < eight_per_node


def test_best_and_busbw():
    net = model.NETWORKS["ib100"]
    name, t = model.best(1 << 30, 16, 8, net)
    for a in model.CLUSTER_ALGORITHMS:
        assert t <= model.cluster_time(a, 1 << 30, 16, 8, net)
    assert model.busbw(1e9, 2, 1.0) == pytest.approx(1.0)
    assert model.busbw(1e9, 4, 1.0) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="unknown algorithm"):
        model.cluster_time("butterfly", 1, 2, 2, net)


def test_presets_name_their_sources():
    for key, net in model.NETWORKS.items():
        assert net.alpha > 0 and net.beta > 0, key
        assert "alpha" in net.source and "beta" in net.source, key
    # the line rates the names promise
    assert 1 / model.NETWORKS["25gbe"].beta == pytest.approx(25e9 / 8)
    assert 1 / model.NETWORKS["10gbe"].beta == pytest.approx(10e9 / 8)


def test_cli_table_and_network_list(capsys):
    assert model.main(["--ranks", "8", "64", "--sizes", "1K", "64M", "--network", "ib100"]) == 0
    out = capsys.readouterr().out
    assert "64 ranks = 8 node(s) x 8" in out and "best" in out
    lines = [ln for ln in out.splitlines() if ln.strip().startswith(("1K", "64M"))]
    assert len(lines) == 4
    for ln in lines:
        assert ln.split()[-1] in model.CLUSTER_ALGORITHMS
    assert model.main(["--list-networks"]) == 0
    out = capsys.readouterr().out
    for key in model.NETWORKS:
        assert key in out
    with pytest.raises(SystemExit):
        model.main(["--network", "carrier-pigeon"])


def test_cli_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "m.png"
    assert model.main(["--ranks", "8", "--sizes", "1M", "--plot", str(out)]) == 0
    assert out.stat().st_size > 1000


def test_sizes_parse():
    assert model._size("64K") == 64 << 10 and model._size("1MiB") == MiB and model._size("8") == 8
    assert model._fmt_size(64 << 20) == "64M" and model._fmt_size(1000) == "1000"
    assert math.isclose(model.lg(8), 3)


def test_auto_ring_threshold_grows_with_sqrt_p():
    """choose_algorithm's rhd-to-ring threshold: measured at up to 4 ranks, scaled by
    sqrt(p / 4) beyond, as the model's crossovers across nodes suggest."""
    from ringreduce.core.choose import AUTO_RING_BYTES, choose_algorithm
    for p in (2, 3, 4):
        assert choose_algorithm(AUTO_RING_BYTES - 1, p) == "rhd"
        assert choose_algorithm(AUTO_RING_BYTES, p) == "ring"
    assert choose_algorithm(4 * AUTO_RING_BYTES - 1, 64) == "rhd"     # sqrt(64 / 4) = 4
    assert choose_algorithm(4 * AUTO_RING_BYTES, 64) == "ring"
    assert choose_algorithm(16 * AUTO_RING_BYTES - 1, 1024) == "rhd"
    assert choose_algorithm(16 * AUTO_RING_BYTES, 1024) == "ring"
    assert choose_algorithm(512 << 10, 1024, one_node=True) == "shm"
    # where the rule switches, the model agrees within a factor of two of the crossover
    net = model.NETWORKS["ib100"]
    n = 16 * AUTO_RING_BYTES
    assert model.cluster_time("ring", 4 * n, 128, 8, net) < model.cluster_time("rhd", 4 * n, 128, 8, net)


def test_shm_limit_per_library(monkeypatch):
    """shm up to 2 MiB (exclusive) under both MPIs (core/choose.py gives the measurements),
    the ring beyond, and off one node never shm; a library listed in SHM_MAX_BY_LIBRARY
    gets its own limit."""
    from ringreduce.core import choose
    ompi, mpich = choose.shm_max_bytes("Open MPI"), choose.shm_max_bytes("MPICH")
    assert (ompi, mpich, choose.shm_max_bytes(None)) == (2 << 20, 2 << 20, 2 << 20)
    assert choose.choose_algorithm(1 << 20, 2, True, mpich) == "shm"
    assert choose.choose_algorithm((2 << 20) - 4, 3, True, ompi) == "shm"
    assert choose.choose_algorithm(2 << 20, 2, True, ompi) == "ring"
    assert choose.choose_algorithm(1 << 20, 2, False, ompi) == "ring"
    monkeypatch.setitem(choose.SHM_MAX_BY_LIBRARY, "Some MPI", 1 << 20)
    lim = choose.shm_max_bytes("Some MPI")
    assert lim == 1 << 20 and choose.choose_algorithm(1 << 20, 2, True, lim) == "ring"