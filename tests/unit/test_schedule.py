"""The pure schedule, checked by simulating every rank in one process (no MPI)."""
import numpy as np
import pytest

from ringreduce.core.schedule import (binomial_tree, chunk_bounds, doubling_partners, fold,
                                  halving_steps, owned_chunk, pow2_floor, ring_allgather_steps,
                                  ring_steps, segment_bounds, unfold_rank)

RANKS = [1, 2, 3, 4, 5, 6, 7, 8, 13, 16]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 10, 97, 1000])
@pytest.mark.parametrize("p", RANKS)
def test_chunk_bounds_cover_in_order(n, p):
    b = chunk_bounds(n, p)
    assert len(b) == p and b[0][0] == 0 and b[-1][1] == n
    assert all(b[i][1] == b[i + 1][0] for i in range(p - 1))
    sizes = [hi - lo for lo, hi in b]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the first n % p get one more
    assert sum(s == n // p + 1 for s in sizes) == (n % p if n % p else 0)


@pytest.mark.parametrize("lo,hi,k", [(0, 0, 3), (0, 1, 3), (5, 17, 4), (5, 17, 100), (3, 10, 1)])
def test_segment_bounds(lo, hi, k):
    segs = segment_bounds(lo, hi, k)
    flat = [i for a, b in segs for i in range(a, b)]
    assert flat == list(range(lo, hi))
    assert all(0 < b - a <= k for a, b in segs)


def test_bad_arguments():
    with pytest.raises(ValueError):
        chunk_bounds(5, 0)
    with pytest.raises(ValueError):
        segment_bounds(0, 5, 0)


def simulate_ring(inputs):
    """Run the ring's schedule for every rank over numpy buffers; return each rank's result."""
    p = len(inputs)
    n = inputs[0].size
    b = chunk_bounds(n, p)
    work = [x.astype(np.float64).copy() for x in inputs]
    rs = [ring_steps(r, p) for r in range(p)]
    for step in range(p - 1):
        # Everyone sends at once: snapshot what goes out before anyone reduces.
        out = [work[r][slice(*b[rs[r][step][0]])].copy() for r in range(p)]
        for r in range(p):
            left = (r - 1) % p
            send_c_left = rs[left][step][0]
            recv_c = rs[r][step][1]
            assert send_c_left == recv_c, "left neighbour must send the chunk I expect"
            work[r][slice(*b[recv_c])] += out[left]
    for r in range(p):
        assert ring_steps(r, p)[-1][1] == owned_chunk(r, p) if p > 1 else True
    ag = [ring_allgather_steps(r, p) for r in range(p)]
    for step in range(p - 1):
        out = [work[r][slice(*b[ag[r][step][0]])].copy() for r in range(p)]
        for r in range(p):
            left = (r - 1) % p
            assert ag[left][step][0] == ag[r][step][1]
            work[r][slice(*b[ag[r][step][1]])] = out[left]
    return work


@pytest.mark.parametrize("n", [0, 1, 3, 10, 31])
@pytest.mark.parametrize("p", RANKS)
def test_ring_schedule_reduces_everything(n, p):
    rng = np.random.default_rng(p * 100 + n)
    inputs = [rng.integers(-50, 50, n).astype(np.float64) for _ in range(p)]
    expect = np.sum(inputs, axis=0)
    for got in simulate_ring(inputs):
        np.testing.assert_array_equal(got, expect)


def test_ring_step_formula_matches_baidu():
    # send (rank - i) % p, receive (rank - i - 1) % p
    assert ring_steps(0, 4) == [(0, 3), (3, 2), (2, 1)]
    assert ring_steps(2, 4) == [(2, 1), (1, 0), (0, 3)]
    assert owned_chunk(0, 4) == 1


@pytest.mark.parametrize("p", RANKS)
@pytest.mark.parametrize("root", [0, 1])
def test_binomial_tree_is_a_tree(p, root):
    root %= p
    parents = {}
    for r in range(p):
        parent, children = binomial_tree(r, p, root)
        parents[r] = parent
        for c in children:
            assert binomial_tree(c, p, root)[0] == r
        dist = [(c - root) % p - (r - root) % p for c in children]
        assert dist == sorted(dist, reverse=True) and all(d & (d - 1) == 0 for d in dist)
        if p & (p - 1) == 0:  # full tree: decreasing distance is largest subtree first
            sizes = [_subtree_size(c, p, root) for c in children]
            assert sizes == sorted(sizes, reverse=True)
    assert parents[root] is None
    assert sum(v is None for v in parents.values()) == 1
    # depth <= ceil(lg p): every rank reaches the root within that many hops
    depth_bound = max(1, (p - 1).bit_length())
    for r in range(p):
        hops, v = 0, r
        while parents[v] is not None:
            v, hops = parents[v], hops + 1
        assert hops <= depth_bound


def _subtree_size(r, p, root):
    return 1 + sum(_subtree_size(c, p, root) for c in binomial_tree(r, p, root)[1])


@pytest.mark.parametrize("p", RANKS)
def test_fold_and_unfold(p):
    p2 = pow2_floor(p)
    news = {}
    for r in range(p):
        new, partner = fold(r, p)
        if new is None:
            assert fold(partner, p) == (partner // 2, r)
        else:
            news[new] = r
            assert unfold_rank(new, p) == r
    assert sorted(news) == list(range(p2))


@pytest.mark.parametrize("p2", [1, 2, 4, 8, 16])
def test_halving_simulation(p2):
    n = 3 * p2 + 1
    b = chunk_bounds(n, p2)
    rng = np.random.default_rng(p2)
    inputs = [rng.integers(-9, 9, n).astype(np.float64) for _ in range(p2)]
    work = [x.copy() for x in inputs]
    steps = [halving_steps(r, p2) for r in range(p2)]

    def span(rng_):
        return slice(b[rng_[0]][0], b[rng_[1] - 1][1])
    for k in range(len(steps[0])):
        out = [work[r][span(steps[r][k][2])].copy() for r in range(p2)]
        for r in range(p2):
            partner, keep, _ = steps[r][k]
            assert steps[partner][k][0] == r and steps[partner][k][2] == keep
            work[r][span(keep)] += out[partner]
    total = np.sum(inputs, axis=0)
    for r in range(p2):
        np.testing.assert_array_equal(work[r][slice(*b[r])], total[slice(*b[r])])
        assert doubling_partners(r, p2) == [r ^ m for m in (1, 2, 4, 8) if m < p2]


@pytest.mark.parametrize("p", RANKS)
def test_doubling_plan_combines_everyone_once(p):
    """Simulate the plan with sets: every rank ends holding every rank's contribution."""
    from ringreduce.core.schedule import doubling_plan
    plans = [doubling_plan(r, p) for r in range(p)]
    held = [{r} for r in range(p)]
    # folding: absorb/give pairs
    for r in range(p):
        for action, peer in plans[r]:
            if action == "absorb":
                assert plans[peer][0] == ("give", r)
                held[r] |= held[peer]
    exchanges = [[peer for a, peer in plans[r] if a == "exchange"] for r in range(p)]
    steps = max(map(len, exchanges))
    for k in range(steps):
        snapshot = [set(h) for h in held]
        for r in range(p):
            if k < len(exchanges[r]):
                peer = exchanges[r][k]
                assert exchanges[peer][k] == r
                held[r] = snapshot[r] | snapshot[peer]
    for r in range(p):
        if plans[r] and plans[r][-1][0] == "take":
            held[r] = held[plans[r][-1][1]]
    assert all(h == set(range(p)) for h in held)
