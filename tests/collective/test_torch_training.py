"""Training through ringreduce.torch against DDP over gloo in the same job, at any rank count:
DistributedDataParallel on the ringreduce backend, the DDP communication hook on a gloo group,
and horovod.torch's DistributedOptimizer all reach DDP-gloo's parameters (bitwise where the
sums are the same sums: at 1 and 2 ranks); bfloat16 models, and the compressing hooks and
Compression.fp16/bf16 within a bound on float32 models; then horovod.torch's other calls."""
import math

import numpy as np
import pytest

import ringreduce as rr
from _torch import P, RANK, dist, every_rank_raises, gloo_world, ringreduce_world, torch
import ringreduce.torch as hvd

nn = torch.nn
DDP = nn.parallel.DistributedDataParallel
STEPS = 4


@pytest.fixture(scope="module")
def groups():
    return ringreduce_world(), gloo_world()


def model():
    torch.manual_seed(0)  # the same weights on every rank, as DDP also broadcasts them
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10),
                         nn.ReLU(), nn.Linear(10, 3)).double()


def batch(step):
    """This rank's equal slice of a global batch of 4 * P samples."""
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(4 * P, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (4 * P,), generator=g)
    return x[4 * RANK:4 * (RANK + 1)], y[4 * RANK:4 * (RANK + 1)]


def train(net, opt, steps=STEPS, passes=1):
    for step in range(steps):
        opt.zero_grad()
        for k in range(passes):
            x, y = batch(passes * step + k)
            nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def gloo_reference(gloo, steps=STEPS):
    m = model()
    ddp = DDP(m, process_group=gloo, bucket_cap_mb=0.002)
    return train(ddp, torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9), steps)


def check_same(got, ref, identical=True):
    if P <= 2:  # a + b == b + a: the same bits whatever the reduction order
        assert torch.equal(got, ref)
    else:
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    if identical:  # every rank holds the same bits
        everyone = hvd.allgather(got.reshape(1, -1))
        assert all(torch.equal(everyone[r], everyone[0]) for r in range(P))


def test_ddp_on_ringreduce_equals_ddp_on_gloo(groups):
    _, gloo = groups
    ref = gloo_reference(gloo)
    m = model()
    # Tiny buckets: several allreduces in flight while backward goes on.
    ddp = DDP(m, bucket_cap_mb=0.002)
    got = train(ddp, torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9))
    check_same(got, ref)


def test_ddp_no_sync_and_broadcast_buffers(groups):
    _, gloo = groups
    nets = []
    for group in (None, gloo):
        torch.manual_seed(RANK)  # different weights per rank: DDP broadcasts rank 0's
        m = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
        ddp = DDP(m, process_group=group, bucket_cap_mb=0.001)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
        for step in range(3):
            g = torch.Generator().manual_seed(step * 10 + RANK)
            x = torch.randn(6, 5, generator=g, dtype=torch.float64)
            with ddp.no_sync():
                ddp(x).sum().backward()
            ddp(x * 2).sum().backward()
            opt.step()
            opt.zero_grad()
        nets.append(torch.cat([t.detach().reshape(-1) for t in m.state_dict().values()
                               if t.is_floating_point()]))
    check_same(*nets, identical=False)  # BatchNorm's running stats are each rank's own


def test_comm_hook_on_gloo_equals_ddp_on_gloo(groups):
    _, gloo = groups
    ref = gloo_reference(gloo)
    m = model()
    ddp = DDP(m, process_group=gloo, bucket_cap_mb=0.002)
    ddp.register_comm_hook(None, hvd.allreduce_hook)
    got = train(ddp, torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9))
    check_same(got, ref)


@pytest.mark.parametrize("passes", [1, 2])
def test_distributed_optimizer_equals_ddp_on_gloo(groups, passes):
    _, gloo = groups
    m = model()
    ddp = DDP(m, process_group=gloo)
    ref_opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    for step in range(STEPS):  # DDP's reference for accumulation: no_sync, then one sync
        ref_opt.zero_grad()
        for k in range(passes):
            x, y = batch(passes * step + k)
            ctx = ddp.no_sync() if k < passes - 1 else torch.enable_grad()
            with ctx:
                nn.functional.cross_entropy(ddp(x), y).backward()
        ref_opt.step()
    ref = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    net = model()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
                                   named_parameters=net.named_parameters(),
                                   backward_passes_per_step=passes)
    got = train(net, opt, passes=passes)
    if passes == 1:
        check_same(got, ref)
    else:
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)


# Compressed training against float32 DDP-gloo. Each averaged gradient element is within
# (1 + r) u of the sum of its magnitudes (collectives/compress.py: u = 2**-8 bf16, 2**-11 fp16,
# r the steps that reduce it, at most max(P - 1, ceil(lg P) + 1) for "auto"), so every update
# is that close to the exact one relative to its size; we allow twice that, relative to the
# whole move of the parameters, for cancellation between ranks' gradients and for four steps
# of changed parameters changing the next gradients (measured at 2 and 3 ranks: 0.28-0.45% of
# the move for bf16, 0.03-0.05% for fp16, against bounds of 2.3-3.1% and 0.29-0.39%).
U = {"bf16": 2.0 ** -8, "fp16": 2.0 ** -11}
R = max(P - 1, math.ceil(math.log2(P)) + 1) if P > 1 else 0


def model32():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10),
                         nn.ReLU(), nn.Linear(10, 3))


def train_as(net, opt, dtype, steps=STEPS):
    for step in range(steps):
        opt.zero_grad()
        x, y = batch(step)
        nn.functional.cross_entropy(net(x.to(dtype)), y).backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).double()


def ddp_gloo(gloo, make, dtype):
    ddp = DDP(make(), process_group=gloo, bucket_cap_mb=0.002)
    return train_as(ddp, torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9), dtype)


def check_compressed(got, ref, init, compression):
    moved = (ref - init).norm()
    assert (got - ref).norm() <= 2 * (1 + R) * U[compression] * moved
    if P > 1:  # the 16-bit wire did round: not DDP-gloo's float32 sums
        assert not torch.equal(got, ref)
    everyone = hvd.allgather(got.reshape(1, -1))
    assert all(torch.equal(everyone[r], everyone[0]) for r in range(P))


@pytest.mark.parametrize("compression", ["bf16", "fp16"])
def test_compress_hooks_reach_float32_ddp_on_gloo(groups, compression):
    _, gloo = groups
    ref = ddp_gloo(gloo, model32, torch.float32)
    init = torch.cat([p.detach().reshape(-1) for p in model32().parameters()]).double()
    ddp = DDP(model32(), process_group=gloo, bucket_cap_mb=0.002)
    ddp.register_comm_hook(None, getattr(hvd, f"{compression}_compress_hook"))
    got = train_as(ddp, torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9), torch.float32)
    check_compressed(got, ref, init, compression)


def test_distributed_optimizer_bf16_reaches_float32_ddp_on_gloo(groups):
    _, gloo = groups
    ref = ddp_gloo(gloo, model32, torch.float32)
    init = torch.cat([p.detach().reshape(-1) for p in model32().parameters()]).double()
    net = model32()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
                                   named_parameters=net.named_parameters(),
                                   compression=hvd.Compression.bf16)
    check_compressed(train_as(net, opt, torch.float32), ref, init, "bf16")


def test_bfloat16_models_equal_ddp_on_gloo(groups):
    """A bfloat16 model: DDP on the ringreduce backend, allreduce_hook and bf16_compress_hook
    (whose bfloat16 buckets are reduced as they are) against DDP-gloo. At 1 and 2 ranks each
    sum is one rounded addition, the same bits as gloo's; beyond, the order of the additions
    differs (a gradient moves by up to 2u of its magnitude) and bfloat16 parameters round the
    updates apart, so the bound above with twice its margin (measured at 3 ranks: 0.9%)."""
    _, gloo = groups

    def bf16_model():
        return model().to(torch.bfloat16)
    ref = ddp_gloo(gloo, bf16_model, torch.bfloat16)
    init = torch.cat([p.detach().reshape(-1) for p in bf16_model().parameters()]).double()
    ddp = DDP(bf16_model(), bucket_cap_mb=0.002)
    runs = [train_as(ddp, torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9),
                     torch.bfloat16)]
    for hook in (hvd.allreduce_hook, hvd.bf16_compress_hook):
        ddp = DDP(bf16_model(), process_group=gloo, bucket_cap_mb=0.002)
        ddp.register_comm_hook(None, hook)
        runs.append(train_as(ddp, torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9),
                             torch.bfloat16))
    for got in runs:
        if P <= 2:
            assert torch.equal(got, ref)
        else:
            assert (got - ref).norm() <= 4 * (1 + R) * U["bf16"] * (ref - init).norm()
        everyone = hvd.allgather(got.reshape(1, -1))
        assert all(torch.equal(everyone[r], everyone[0]) for r in range(P))


class _Bucket:
    """What a hook reads of DDP's GradBucket."""

    def __init__(self, buffer):
        self._buffer = buffer

    def buffer(self):
        return self._buffer


def test_compress_hooks_refuse_what_they_cannot_compress(groups):
    _, gloo = groups
    for dtype in (torch.int32, torch.float64):
        bucket = _Bucket(torch.ones(4, dtype=dtype))
        every_rank_raises(lambda: hvd.bf16_compress_hook(None, bucket), TypeError,
                          f"compresses float32 gradient buckets .* got a {dtype}")
    every_rank_raises(lambda: hvd.fp16_compress_hook("gloo", _Bucket(torch.ones(4))),
                      TypeError, "fp16_compress_hook's state must be None")
    # Inside DDP the error reaches backward on every rank (each has the float64 buckets).
    ddp = DDP(model(), process_group=gloo)
    ddp.register_comm_hook(None, hvd.fp16_compress_hook)
    x, y = batch(0)
    every_rank_raises(lambda: nn.functional.cross_entropy(ddp(x), y).backward(), TypeError,
                      "float64 bucket")
    fut = hvd.bf16_compress_hook(None, _Bucket(torch.full((5,), RANK + 1.0)))
    assert torch.equal(fut.wait(), torch.full((5,), (P + 1) / 2))


def test_compression_through_hvd_allreduce(groups):
    """Compression.bf16/fp16 of a float32 tensor is the core's wire compression (the same bits
    as rr.allreduce with compression=), not a cast; other tensors take the compressor's
    methods, as in Horovod, and the static methods work as Horovod's."""
    hvd.init()
    g = torch.Generator().manual_seed(RANK)
    x = torch.randn(997, generator=g) * 10.0 ** torch.empty(997).uniform_(-2, 2, generator=g)
    for name in ("bf16", "fp16"):
        comp = getattr(hvd.Compression, name)
        got = hvd.allreduce(x, compression=comp)
        assert got.dtype == torch.float32
        assert torch.equal(got, torch.from_numpy(rr.allreduce(x.numpy(), "avg",
                                                              compression=name)))
        h = hvd.allreduce_async(x, name=f"wire.{name}", compression=comp, op=hvd.Sum)
        assert torch.equal(hvd.synchronize(h), got * P)
    # fp16 sums that would overflow float16 (Horovod's cast gives inf): scaled, finite.
    big = hvd.allreduce(torch.full((4,), 60000.0), op=hvd.Sum, compression=hvd.Compression.fp16)
    torch.testing.assert_close(big, torch.full((4,), 60000.0 * P), rtol=2e-3, atol=0)
    # float64 is cast, as Horovod does; integers are left alone.
    d = x.double()
    cast = hvd.allreduce(d, compression=hvd.Compression.bf16)
    assert cast.dtype == torch.float64
    assert torch.equal(cast, hvd.allreduce(d.to(torch.bfloat16)).double())
    ints = torch.arange(5) * (RANK + 1)
    assert torch.equal(hvd.allreduce(ints, op=hvd.Sum, compression=hvd.Compression.bf16),
                       torch.arange(5) * P * (P + 1) // 2)
    c, ctx = hvd.Compression.bf16.compress(x)
    assert c.dtype == torch.bfloat16 and ctx == torch.float32
    assert torch.equal(hvd.Compression.bf16.decompress(c, ctx), x.to(torch.bfloat16).float())
    same, ctx = hvd.Compression.bf16.compress(ints)
    assert same is ints and ctx is None
    every_rank_raises(lambda: hvd.allreduce(x, compression="bf16"), TypeError,
                      "hvd.Compression.bf16")
    assert np.array_equal(hvd.allreduce(torch.ones(2), op=hvd.Sum).numpy(), np.full(2, P))


def test_distributed_optimizer_guard_rails(groups):
    net = model()
    base = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="Adasum"):
        hvd.DistributedOptimizer(base, op=hvd.Adasum)
    with pytest.raises(ValueError, match="duplicate names"):
        hvd.DistributedOptimizer(base, named_parameters=[("w", p) for p in net.parameters()])
    with pytest.raises(ValueError, match="not in it"):
        hvd.DistributedOptimizer(base, named_parameters=list(net.named_parameters())[:2])
    opt = hvd.DistributedOptimizer(base, named_parameters=net.named_parameters())
    assert isinstance(opt, torch.optim.SGD)
    x, y = batch(0)
    nn.functional.cross_entropy(net(x), y).backward()
    with pytest.raises(AssertionError, match="zero_grad"):
        opt.zero_grad()
    with pytest.raises(AssertionError, match="backward_passes_per_step"):
        nn.functional.cross_entropy(net(x), y).backward()
    opt.synchronize()
    with opt.skip_synchronize():
        opt.step()
    opt.zero_grad()


def test_distributed_optimizer_fp16_and_unused_parameters(groups):
    net = model()
    unused = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = hvd.DistributedOptimizer(
        torch.optim.SGD(list(net.parameters()) + [unused], lr=0.1),
        compression=hvd.Compression.fp16)
    x, y = batch(RANK)
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    assert torch.all(unused.grad == 0) and torch.all(unused == 1)
    grads = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    assert grads.dtype == torch.float64
    everyone = hvd.allgather(grads.reshape(1, -1))
    assert all(torch.equal(everyone[r], everyone[0]) for r in range(P))


def test_horovod_calls(groups):
    hvd.init()
    assert (hvd.rank(), hvd.size()) == (RANK, P)
    assert 0 <= hvd.local_rank() < hvd.local_size() <= P
    assert hvd.mpi_built() and not hvd.nccl_built() and not hvd.gloo_built()
    x = torch.tensor([float(RANK), 1.0])
    assert torch.equal(hvd.allreduce(x, name="avg"), torch.tensor([(P - 1) / 2, 1.0]))
    assert torch.equal(x, torch.tensor([float(RANK), 1.0]))  # not in place
    assert torch.equal(hvd.allreduce(x, op=hvd.Sum), torch.tensor([P * (P - 1) / 2, P]))
    assert hvd.allreduce(x, op=hvd.Min)[0] == 0 and hvd.allreduce(x, op=hvd.Max)[0] == P - 1
    assert hvd.allreduce(x, average=False)[1] == P
    hs = [hvd.allreduce_async(torch.full((n,), RANK + 1.0), name=f"h{n}", op=hvd.Sum)
          for n in (3, 300, 1)]
    for h, n in zip(reversed(hs), (1, 300, 3)):
        assert torch.all(hvd.synchronize(h) == P * (P + 1) / 2)
        assert hvd.poll(h)
    y = torch.full((4,), RANK + 1.0)
    hvd.synchronize(hvd.allreduce_async_(y, name="inplace"))
    assert torch.all(y == (P + 1) / 2)
    hvd.allreduce_(y, op=hvd.Sum)
    assert torch.all(y == P * (P + 1) / 2)
    z = hvd.allreduce(torch.full((5,), 0.1), compression=hvd.Compression.fp16)
    assert z.dtype == torch.float32 and torch.allclose(z, torch.full((5,), 0.1), atol=1e-3)
    g = hvd.allgather(torch.full((RANK + 1, 2), float(RANK)))
    assert g.shape == (P * (P + 1) // 2, 2)
    assert torch.equal(g[:, 0], torch.cat([torch.full((r + 1,), float(r)) for r in range(P)]))
    b = hvd.broadcast(torch.full((3,), float(RANK)), root_rank=P - 1)
    assert torch.all(b == P - 1)
    assert hvd.broadcast_object({"rank": RANK}, root_rank=0) == {"rank": 0}
    assert hvd.allgather_object(RANK * 2) == [2 * r for r in range(P)]
    rs = hvd.reducescatter(torch.ones(2 * P, 3), op=hvd.Sum)
    assert rs.shape == (2, 3) and torch.all(rs == P)
    outs = hvd.grouped_allreduce([torch.ones(2) * RANK, torch.ones(3, dtype=torch.float64)])
    assert torch.all(outs[0] == (P - 1) / 2) and torch.all(outs[1] == 1)
    with pytest.raises(ValueError, match="Adasum"):
        hvd.allreduce(x, op=hvd.Adasum)
    if P > 1:
        every_rank_raises(lambda: hvd.allreduce(torch.ones(3 + (RANK == 0))), rr.MismatchError)


def test_broadcast_parameters_and_optimizer_state(groups):
    torch.manual_seed(RANK)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    hvd.broadcast_parameters(net.state_dict(), root_rank=0)
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    for a, b in zip(net.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    opt = torch.optim.Adam(net.parameters(), lr=0.01 * (RANK + 1))
    if RANK == 0:  # only the root has state: the others get it
        net(torch.ones(2, 3)).sum().backward()
        opt.step()
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    assert opt.param_groups[0]["lr"] == 0.01
    state = opt.state_dict()["state"]
    assert len(state) == 4
    moments = torch.cat([s["exp_avg"].reshape(-1) for s in state.values()])
    everyone = hvd.allgather(moments.reshape(1, -1))
    assert all(torch.equal(everyone[r], everyone[0]) for r in range(P))
    hvd.broadcast_parameters(list(net.named_parameters()), root_rank=P - 1)
    if P > 1:
        bad = [torch.ones(2 + (RANK == 0))]
        every_rank_raises(lambda: hvd.broadcast_parameters(bad, 0), rr.MismatchError)
