"""DistributedOptimizer's gradient buckets (ringreduce/torch/buckets.py): how parameters are
cut into buckets, buckets reduced in bucket order whatever order each rank hands its
gradients in, Horovod's groups and num_groups trained against DDP over gloo, and a gradient
one rank cannot hand in raising on every rank without a hang."""
import pytest

from _torch import P, RANK, every_rank_raises, gloo_world, ringreduce_world, torch
import ringreduce.torch as hvd
from ringreduce.errors import MismatchError
from ringreduce.torch import buckets

nn = torch.nn
DDP = nn.parallel.DistributedDataParallel


@pytest.fixture(scope="module")
def gloo():
    ringreduce_world()
    return gloo_world()


def params(*sizes):
    return [nn.Parameter(torch.zeros(n, dtype=torch.float64)) for n in sizes]


def ids(plan):
    return [[id(p) for p in b] for b in plan]


def test_plan_by_bytes_num_groups_and_groups():
    ps = params(3, 1, 4, 1, 5)  # 24, 8, 32, 8, 40 bytes
    rev = ps[::-1]
    # by bytes, in the reverse of the parameters' order, a bucket closing once it holds cap
    assert ids(buckets.plan(ps, cap=40)) == ids([rev[:1], rev[1:3], rev[3:]])
    assert ids(buckets.plan(ps, cap=1 << 30)) == ids([rev])
    assert ids(buckets.plan(ps, cap=1)) == ids([[p] for p in rev])
    assert buckets.plan([], cap=40) == []
    # num_groups: that many buckets of consecutive parameters, the first ones one longer
    assert ids(buckets.plan(ps, num_groups=2)) == ids([rev[:3], rev[3:]])
    assert ids(buckets.plan(ps, num_groups=9)) == ids([[p] for p in rev])
    # groups: reduced together, the rest one by one
    assert ids(buckets.plan(ps, groups=[[ps[0], ps[4]], []])) == ids(
        [[ps[0], ps[4]], [ps[3]], [ps[2]], [ps[1]]])
    with pytest.raises(ValueError, match="not one of the optimizer's parameters"):
        buckets.plan(ps, groups=[[nn.Parameter(torch.zeros(1))]])
    with pytest.raises(ValueError, match="repeats a parameter"):
        buckets.plan(ps, groups=[[ps[0]], [ps[0]]])
    with pytest.raises(ValueError, match="num_groups must be an int >= 0, got -1"):
        buckets.plan(ps, num_groups=-1)


def test_buckets_run_in_bucket_order_whatever_order_gradients_come_in():
    ps = params(0, 1, 2, 3, 5, 7, 11, 13)
    plan = buckets.plan(ps, cap=48)
    b = buckets.Buckets(plan, "sum")
    for step in range(3):
        order = torch.randperm(len(ps), generator=torch.Generator().manual_seed(
            RANK * 10 + step)).tolist()  # a different order on every rank
        grads = {}
        for i in order:
            p = ps[i]
            p.grad = torch.arange(p.numel(), dtype=torch.float64) * (RANK + 1) + step
            grads[i] = p.grad
            b.add(p, p.grad.detach(), hvd.Compression.none, 1.0)
        assert b.works  # the buckets went out as they filled
        b.finish(1.0)
        for i, p in enumerate(ps):
            want = torch.arange(p.numel(), dtype=torch.float64) * (P * (P + 1) // 2) + step * P
            assert torch.equal(p.grad, want)
            assert p.grad is grads[i]  # reduced in place
        assert not b.pending()


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(),
                         nn.Linear(4, 3)).double()


def batch(step):
    g = torch.Generator().manual_seed(7 + step)
    x = torch.randn(3 * P, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (3 * P,), generator=g)
    return x[3 * RANK:3 * (RANK + 1)], y[3 * RANK:3 * (RANK + 1)]


def train(net, opt, steps=3):
    for step in range(steps):
        opt.zero_grad()
        x, y = batch(step)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


@pytest.mark.parametrize("how", ["bytes", "num_groups", "groups"])
def test_bucketed_optimizer_equals_ddp_on_gloo(gloo, how, monkeypatch):
    ddp = DDP(model(), process_group=gloo)
    ref = train(ddp, torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9))
    net = model()
    kw = {}
    if how == "bytes":
        monkeypatch.setattr(buckets, "BUCKET_BYTES", 100)  # several buckets during backward
    elif how == "num_groups":
        kw["num_groups"] = 2
    else:
        w = [m.weight for m in net if isinstance(m, nn.Linear)]
        kw["groups"] = [w[:2], [w[2]]]
    opt = hvd.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
                                   named_parameters=net.named_parameters(), **kw)
    assert len(opt._buckets.buckets) > 1
    got = train(net, opt)
    if P <= 2:
        assert torch.equal(got, ref)
    else:
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)


def test_a_gradient_one_rank_cannot_hand_in_raises_everywhere(gloo):
    """Rank 0's gradient of one layer turns sparse (without sparse_as_dense): backward raises
    there, its bucket's collective raises that error on every rank, the other buckets still
    run, and the next step works."""
    net = model()
    w = net[2].weight
    if RANK == 0:  # registered first, so it runs before the optimizer's hook
        spoil = w.register_post_accumulate_grad_hook(
            lambda p: setattr(p, "grad", p.grad.to_sparse()))
    opt = hvd.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1),
                                   named_parameters=net.named_parameters(), num_groups=3)
    x, y = batch(0)
    if RANK == 0:
        with pytest.raises(TypeError, match="sparse_as_dense"):
            nn.functional.cross_entropy(net(x), y).backward()
        spoil.remove()
    else:
        nn.functional.cross_entropy(net(x), y).backward()
    every_rank_raises(opt.synchronize, TypeError, "sparse" if RANK == 0 else "rank 0")
    assert not opt._buckets.pending()
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    grads = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    everyone = hvd.allgather(grads.reshape(1, -1))
    assert all(torch.equal(everyone[r], everyone[0]) for r in range(P))


def test_a_model_that_differs_between_ranks_is_refused_on_every_rank(gloo):
    """Different layer sizes, or (at more than one rank) one more layer on the last rank:
    its buckets would not line up, so the optimizer refuses at construction, on every rank,
    instead of a rank waiting in a bucket the others never reduce."""
    torch.manual_seed(0)
    width = 5 + (RANK == P - 1 and P > 1)
    net = nn.Sequential(nn.Linear(6, width), nn.Linear(width, 3)).double()
    base = torch.optim.SGD(net.parameters(), lr=0.1)
    if P == 1:
        hvd.DistributedOptimizer(base, named_parameters=net.named_parameters())
        return
    every_rank_raises(lambda: hvd.DistributedOptimizer(
        base, named_parameters=net.named_parameters()), MismatchError,
        "Mismatched DistributedOptimizer tensor shapes")
    layers = [nn.Linear(6, 6) for _ in range(2 + (RANK == P - 1))]
    extra = nn.Sequential(*layers).double()
    every_rank_raises(lambda: hvd.DistributedOptimizer(
        torch.optim.SGD(extra.parameters(), lr=0.1), num_groups=len(layers)),
        MismatchError, "Mismatched DistributedOptimizer tensor counts")
