"""ringreduce.training and the example MLP, in one process.

The MLP's hand-written backward is checked against central differences; the sampler for every
rank of several rank counts at once; GradSync, the optimizers and broadcast_parameters on
COMM_SELF (so these tests mean the same under plain pytest and under mpiexec); checkpoints
for atomicity and every way a file can be wrong. tests/jobs/test_training_mpi.py covers N
ranks, tests/jobs/test_training_device.py the optimizers on device arrays.
"""
import os
import sys

import numpy as np
import pytest
from mpi4py import MPI

from ringreduce.core.schedule import chunk_bounds
from ringreduce.kernels import reference as float64_ref
from ringreduce.training import checkpoint
from ringreduce.training import sync as training_sync
from ringreduce.training import (SGD, Adam, CheckpointError, DistributedSampler, GradSync,
                                 broadcast_parameters, load_checkpoint, save_checkpoint)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples"))
from mlp import MLP, softmax_cross_entropy  # noqa: E402



# ---------------------------------------------------------------------------------------------
# MLP: backward against numerical gradients
# ---------------------------------------------------------------------------------------------

def _loss(model, x, y, scale):
    return softmax_cross_entropy(model.forward(x), y, scale)[0]


@pytest.mark.parametrize("sizes", [[5, 3], [5, 7, 3], [6, 8, 7, 4]])
def test_mlp_backward_matches_central_differences(sizes):
    rng = np.random.default_rng(3)
    model = MLP(sizes, dtype=np.float64, seed=1)
    # Non-zero biases so that a bug mixing up bias and weight gradients cannot hide.
    for b in model.parameters()[1::2]:
        b[...] = rng.standard_normal(b.shape) * 0.1
    x = rng.standard_normal((9, sizes[0]))
    y = rng.integers(0, sizes[-1], 9)
    scale = 1 / 13  # as for a rank holding 9 of a global batch of 13
    loss, dlogits = softmax_cross_entropy(model.forward(x), y, scale)
    grads = [np.full_like(p, np.nan) for p in model.parameters()]  # every entry must be written
    order = []
    model.backward(dlogits, grads, on_ready=order.append)
    n = len(model.parameters())
    assert order == list(reversed(range(n)))  # last layer first, bias before weight
    eps = 1e-6
    for p, g in zip(model.parameters(), grads):
        numeric = np.empty_like(p)
        for j in range(p.size):
            old = p.flat[j]
            p.flat[j] = old + eps
            up = _loss(model, x, y, scale)
            p.flat[j] = old - eps
            down = _loss(model, x, y, scale)
            p.flat[j] = old
            numeric.flat[j] = (up - down) / (2 * eps)
        np.testing.assert_allclose(g, numeric, rtol=1e-6, atol=1e-9)
    assert np.isclose(loss, _loss(model, x, y, scale))


def test_mlp_backward_accumulates_and_splits_like_one_batch():
    # Two halves accumulated == the whole batch: what gradient accumulation and data
    # parallelism both rely on.
    rng = np.random.default_rng(4)
    model = MLP([6, 10, 4], seed=2)
    x, y = rng.standard_normal((10, 6)), rng.integers(0, 4, 10)
    whole = [np.empty_like(p) for p in model.parameters()]
    _, d = softmax_cross_entropy(model.forward(x), y, 1 / 10)
    model.backward(d, whole)
    parts = [np.zeros_like(p) for p in model.parameters()]
    for sl in (slice(0, 7), slice(7, 10)):
        _, d = softmax_cross_entropy(model.forward(x[sl]), y[sl], 1 / 10)
        model.backward(d, parts, accumulate=True)
    for a, b in zip(whole, parts):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_softmax_cross_entropy_values_and_empty_batch():
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]])  # the second would overflow exp
    y = np.array([2, 0])
    loss, grad = softmax_cross_entropy(logits, y, scale=0.5)
    p0 = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    assert np.isclose(loss, 0.5 * (-np.log(p0[2]) + 0.0))
    np.testing.assert_allclose(grad[0], 0.5 * (p0 - [0, 0, 1]))
    np.testing.assert_allclose(grad[1], [0, 0, 0], atol=1e-300)
    loss, grad = softmax_cross_entropy(np.empty((0, 3)), np.empty(0, dtype=int), 0.1)
    assert loss == 0.0 and grad.shape == (0, 3)


def test_mlp_is_a_function_of_the_seed_and_checks_inputs():
    a, b, c = MLP([4, 5, 2], seed=7), MLP([4, 5, 2], seed=7), MLP([4, 5, 2], seed=8)
    assert all(np.array_equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not np.array_equal(a.parameters()[0], c.parameters()[0])
    assert MLP([4, 5, 2], dtype=np.float32).parameters()[0].dtype == np.float32
    with pytest.raises(ValueError, match=r"\(batch, 4\).*\(3, 5\)"):
        a.forward(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="float32 or float64"):
        MLP([4, 2], dtype=np.int32)
    with pytest.raises(RuntimeError, match="before forward"):
        MLP([4, 2]).backward(np.zeros((1, 2)), [np.zeros((4, 2)), np.zeros(2)])


# ---------------------------------------------------------------------------------------------
# DistributedSampler
# ---------------------------------------------------------------------------------------------

CASES = [(10, 4), (100, 32), (66, 16), (7, 7), (5, 8), (37, 1)]


@pytest.mark.parametrize("n,batch", CASES)
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_sampler_slices_rebuild_the_rank_independent_global_batch(n, batch, size):
    reference = DistributedSampler(n, batch, rank=0, size=1, seed=11)
    samplers = [DistributedSampler(n, batch, rank=r, size=size, seed=11) for r in range(size)]
    for epoch in (0, 1, 5):
        seen = []
        for step in range(len(reference)):
            locals_ = [s.local_batch(epoch, step) for s in samplers]
            glued = np.concatenate(locals_)
            # The same samples in the same order as one rank would use, whatever the size.
            np.testing.assert_array_equal(glued, reference.local_batch(epoch, step))
            assert all(s.global_batch_size(step) == len(glued) for s in samplers)
            # The allreduce's chunk rule: the first len % size ranks get one more.
            assert [len(b) for b in locals_] == [hi - lo for lo, hi in
                                                 chunk_bounds(len(glued), size)]
            seen.append(glued)
        # drop_last=False: every sample exactly once per epoch, the last batch the short one.
        np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(n))
        assert [len(b) for b in seen] == [batch] * (n // batch) + ([n % batch] if n % batch else [])


def test_sampler_short_last_batch_leaves_some_ranks_empty():
    # 66 = 4 * 16 + 2: the last global batch has 2 samples for 4 ranks.
    samplers = [DistributedSampler(66, 16, rank=r, size=4, seed=0) for r in range(4)]
    assert [len(s.local_batch(0, 4)) for s in samplers] == [1, 1, 0, 0]
    assert all(s.global_batch_size(4) == 2 for s in samplers)
    steps = list(samplers[3].batches(0))
    assert [st for st, _, _ in steps] == [0, 1, 2, 3, 4]
    assert steps[-1][1].size == 0 and steps[-1][2] == 2


@pytest.mark.parametrize("size", [1, 3])
def test_sampler_drop_last(size):
    samplers = [DistributedSampler(66, 16, rank=r, size=size, seed=2, drop_last=True)
                for r in range(size)]
    assert len(samplers[0]) == 4
    for epoch in (0, 1):
        used = np.concatenate([s.local_batch(epoch, st) for st in range(4) for s in samplers])
        assert len(used) == 64 and len(np.unique(used)) == 64
        dropped = set(range(66)) - set(used.tolist())
        # The two dropped samples are the tail of this epoch's order.
        assert dropped == set(samplers[0].order(epoch)[64:].tolist())
    with pytest.raises(IndexError, match=r"\[0, 4\).*got 4"):
        samplers[0].local_batch(0, 4)
    with pytest.raises(ValueError, match="leaves no step"):
        DistributedSampler(5, 8, rank=0, size=1, drop_last=True)


@pytest.mark.parametrize("total", [0, 1, 7, 8, 21])
def test_sampler_steps_run_on_across_epochs(total):
    s = DistributedSampler(50, 8, rank=1, size=3, seed=4)  # 7 steps an epoch, the last of 2
    expected = [(e * len(s) + k, idx, bs) for e in range(4) for k, idx, bs in s.batches(e)]
    got = list(s.steps(total))
    assert [step for step, _, _ in got] == list(range(total))
    for (step, idx, bs), (_, want_idx, want_bs) in zip(got, expected):
        np.testing.assert_array_equal(idx, want_idx)
        assert bs == want_bs


def test_sampler_order_is_a_function_of_seed_and_epoch():
    a = DistributedSampler(50, 8, rank=0, size=2, seed=1)
    b = DistributedSampler(50, 8, rank=1, size=3, seed=1)
    c = DistributedSampler(50, 8, rank=0, size=2, seed=2)
    np.testing.assert_array_equal(a.order(3), b.order(3))
    np.testing.assert_array_equal(a.order(3), np.random.default_rng([1, 3]).permutation(50))
    assert not np.array_equal(a.order(0), a.order(1))
    assert not np.array_equal(a.order(0), c.order(0))
    np.testing.assert_array_equal(DistributedSampler(9, 4, rank=0, size=1, shuffle=False)
                                  .global_batch(0, 2), [8])
    # Resuming in the middle of an epoch yields the same steps as running through.
    assert [s for s, _, _ in a.batches(2, start_step=5)] == [5, 6]
    np.testing.assert_array_equal(list(a.batches(2, 5))[0][1], a.local_batch(2, 5))


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank=2, size=2"):
        DistributedSampler(10, 2, rank=2, size=2)
    with pytest.raises(ValueError, match="batch_size=0"):
        DistributedSampler(10, 0, rank=0, size=1)
    with pytest.raises(ValueError, match="seed >= 0.*got -1"):
        DistributedSampler(10, 2, rank=0, size=1, seed=-1)
    with pytest.raises(ValueError, match="epoch"):
        DistributedSampler(10, 2, rank=0, size=1).order(-1)
    with pytest.raises(TypeError):
        DistributedSampler(10, 2)  # rank and size must be given: a default would hide a bug


# ---------------------------------------------------------------------------------------------
# GradSync (one rank: COMM_SELF)
# ---------------------------------------------------------------------------------------------

def test_reverse_buckets():
    p = [np.zeros(n, dtype=np.float64) for n in (4, 4, 2, 8, 1)]  # 32, 32, 16, 64, 8 bytes
    assert training_sync._reverse_buckets(p, 48) == [[4], [3], [2, 1], [0]]
    assert training_sync._reverse_buckets(p, 10**6) == [[4, 3, 2, 1, 0]]
    assert training_sync._reverse_buckets(p, 1) == [[4], [3], [2], [1], [0]]
    mixed = [np.zeros(2, np.float32), np.zeros(2, np.float32), np.zeros(2, np.float64)]
    assert training_sync._reverse_buckets(mixed, 10**6) == [[2], [1, 0]]  # one dtype per bucket


class _Recorder:
    """Wraps the allreduce_async GradSync calls to record which buckets start when (and still
    reduce)."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = training_sync.allreduce_async

        def record(x, *args, **kwargs):
            self.calls.append(kwargs.get("name"))
            return real(x, *args, **kwargs)
        monkeypatch.setattr(training_sync, "allreduce_async", record)


def _params():
    return [np.ones((3, 4)), np.ones(4), np.ones((4, 2)), np.ones(2)]  # 96, 32, 64, 16 bytes


def test_gradsync_grads_are_views_into_reverse_order_buckets(monkeypatch):
    rec = _Recorder(monkeypatch)
    params = _params()
    sync = GradSync(params, bucket_cap_bytes=80, comm=MPI.COMM_SELF)
    assert sync.bucket_members == [[3, 2], [1], [0]]
    for p, g, in zip(params, sync.grads):
        assert g.shape == p.shape and g.dtype == p.dtype and g.flags.c_contiguous
    # Zero-copy: the gradients live in the bucket buffers, the last parameter first.
    assert np.shares_memory(sync.grads[3], sync.buffers[0])
    assert np.shares_memory(sync.grads[2], sync.buffers[0])
    sync.grads[3][...] = 7
    assert sync.buffers[0][0] == 7 and sync.buffers[0][2] == 0
    # A bucket starts when its last gradient is marked, not before.
    sync.mark_ready(3)
    assert rec.calls == []
    sync.mark_ready(2)
    assert len(rec.calls) == 1 and rec.calls[0].endswith("bucket0")
    sync.mark_ready(1)
    assert len(rec.calls) == 2 and rec.calls[1].endswith("bucket1")
    with pytest.raises(RuntimeError, match=r"mark_ready\(1\) called twice"):
        sync.mark_ready(1)
    with pytest.raises(RuntimeError, match="in flight"):
        sync.zero_grad()
    assert sync.wait() is True  # bucket 2 starts here: parameter 0 was never marked
    assert len(rec.calls) == 3
    np.testing.assert_array_equal(sync.grads[3], 7)  # one rank: the sum is the value
    sync.mark_ready(3)  # marks were reset for the next step
    with pytest.raises(IndexError, match=r"\[0, 4\), got 4"):
        sync.mark_ready(4)


def test_gradsync_no_overlap_reduces_every_bucket_in_wait(monkeypatch):
    rec = _Recorder(monkeypatch)
    grouped = []
    real = training_sync.grouped_allreduce

    def record(arrays, *args, **kwargs):
        grouped.append(list(arrays))
        return real(arrays, *args, **kwargs)
    monkeypatch.setattr(training_sync, "grouped_allreduce", record)
    sync = GradSync(_params(), bucket_cap_bytes=1, comm=MPI.COMM_SELF, overlap=False)
    for i in reversed(range(4)):
        sync.grads[i][...] = i
        sync.mark_ready(i)
    assert rec.calls == [] and grouped == []
    assert sync.wait() is True
    # One blocking call with every bucket buffer, reduced in place; no background allreduce.
    assert rec.calls == [] and len(grouped) == 1
    assert [a is b for a, b in zip(grouped[0], sync.buffers)] == [True] * 4
    for i in range(4):
        np.testing.assert_array_equal(sync.grads[i], i)


def test_gradsync_no_sync_sends_nothing(monkeypatch):
    rec = _Recorder(monkeypatch)
    sync = GradSync(_params(), comm=MPI.COMM_SELF)
    with sync.no_sync():
        for _ in range(2):  # two micro-batches: marking twice is fine here
            for i in reversed(range(4)):
                sync.mark_ready(i)
        with pytest.raises(RuntimeError, match="inside no_sync"):
            sync.wait()
    assert rec.calls == []
    for i in reversed(range(4)):
        sync.mark_ready(i)
    assert len(rec.calls) == 1
    with pytest.raises(RuntimeError, match="middle of a synchronised step"):
        with sync.no_sync():
            pass
    sync.wait()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_gradsync_reports_nonfinite(bad):
    sync = GradSync(_params(), bucket_cap_bytes=40, comm=MPI.COMM_SELF)
    assert sync.wait() is True
    sync.grads[0][1, 2] = bad
    assert sync.wait() is False and sync.last_finite is False
    sync.grads[0][1, 2] = 0
    assert sync.wait() is True


# ---------------------------------------------------------------------------------------------
# Optimizers: the kernels through the wrappers, against PyTorch's formulas in numpy
# ---------------------------------------------------------------------------------------------

def _problem(seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal((3, 5)), rng.standard_normal(5)]
    grads = [[rng.standard_normal(p.shape) for p in params] for _ in range(4)]
    return params, grads


@pytest.mark.parametrize("momentum,wd,nesterov", [(0.0, 0.0, False), (0.9, 0.0, False),
                                                  (0.9, 1e-2, True), (0.5, 1e-3, False)])
def test_sgd_matches_reference(momentum, wd, nesterov):
    params, grads = _problem()
    start = [p.copy() for p in params]
    opt = SGD(params, lr=0.1, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    for g in grads:
        opt.step(g)
    for i, p in enumerate(params):
        ref = float64_ref.sgd(start[i], [g[i] for g in grads], 0.1, momentum, wd, nesterov)[0]
        np.testing.assert_allclose(p, ref, rtol=1e-12, atol=1e-14)
    assert opt.steps == 4


def test_adam_matches_reference_and_grad_scale():
    params, grads = _problem(1)
    start = [p.copy() for p in params]
    opt = Adam(params, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-2)
    for g in grads:
        opt.step([2 * x for x in g], grad_scale=0.5)  # the scale folds into the update
    for i, p in enumerate(params):
        ref = float64_ref.adam(start[i], [g[i] for g in grads], 0.01, 0.9, 0.99, 1e-8, 1e-2)[0]
        np.testing.assert_allclose(p, ref, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
                                  lambda ps: Adam(ps, lr=0.01)])
def test_optimizer_state_dict_round_trip_is_bitwise(make):
    params, grads = _problem(2)
    twin = [p.copy() for p in params]
    a = make(params)
    for g in grads[:2]:
        a.step(g)
    state = a.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    for i, p in enumerate(params):
        twin[i][...] = p
    b = make(twin)
    b.load_state_dict(state)
    state["step"][...] = 99  # a copy: changing it does not reach into a
    for g in grads[2:]:
        a.step(g)
        b.step(g)
    for p, q in zip(params, twin):
        assert np.array_equal(p, q)


def test_optimizer_errors():
    params, _ = _problem()
    with pytest.raises(ValueError, match="nesterov"):
        SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="C-contiguous"):
        SGD([np.zeros((4, 4))[:, ::2]], lr=0.1)
    opt = SGD(params, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"gradient 1 is float64\(4,\), parameter 1 is "
                                         r"float64\(5,\)"):
        opt.step([np.zeros((3, 5)), np.zeros(4)])
    with pytest.raises(ValueError, match="expected 2 gradients, got 1"):
        opt.step([np.zeros((3, 5))])
    state = opt.state_dict()
    state["momentum_buffer.1"] = np.zeros(6)
    with pytest.raises(ValueError, match=r"'momentum_buffer.1' is float64\(6,\), expected "
                                         r"float64\(5,\)"):
        opt.load_state_dict(state)
    with pytest.raises(ValueError, match=r"missing entries \['exp_avg.0'"):
        Adam(params).load_state_dict(opt.state_dict())


# ---------------------------------------------------------------------------------------------
# broadcast_parameters (one rank; N ranks in test_training_mpi.py)
# ---------------------------------------------------------------------------------------------

def test_gradsync_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least one parameter"):
        GradSync([], comm=MPI.COMM_SELF)
    with pytest.raises(TypeError, match="parameter 1 is a list, expected a numpy array"):
        GradSync([np.zeros(2), [1.0]], comm=MPI.COMM_SELF)
    for cap in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"bucket_cap_bytes must be an int >= 1, got {cap}"):
            GradSync([np.zeros(2)], bucket_cap_bytes=cap, comm=MPI.COMM_SELF)


def test_broadcast_parameters_single_rank_and_errors():
    a = [np.arange(5.0), np.ones((2, 2), np.float32)]
    broadcast_parameters(a, comm=MPI.COMM_SELF)
    np.testing.assert_array_equal(a[0], np.arange(5.0))
    with pytest.raises(ValueError, match="root must be in"):
        broadcast_parameters(a, root=1, comm=MPI.COMM_SELF)
    with pytest.raises(ValueError, match="not a writable C-contiguous"):
        broadcast_parameters([np.zeros((4, 4))[:, ::2]], comm=MPI.COMM_SELF)
    with pytest.raises(ValueError, match="expected a numpy array"):
        broadcast_parameters([[1.0, 2.0]], comm=MPI.COMM_SELF)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

def _state():
    return {"param.0": np.arange(12.0).reshape(3, 4), "param.1": np.ones(4, np.float32),
            "epoch": 3, "step": np.int64(7), "loss_curve": np.linspace(1, 0, 5),
            "name": np.array("mlp")}


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, _state())
    got = load_checkpoint(path, like={k: v for k, v in _state().items()},
                          match={"epoch": 3, "step": 7})
    assert set(got) == set(_state())
    for k, v in _state().items():
        assert np.array_equal(got[k], v) and got[k].dtype == np.asarray(v).dtype
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temporary file left behind
    save_checkpoint(path, {**_state(), "epoch": 4})  # replaces the old one
    assert int(load_checkpoint(path)["epoch"]) == 4
    assert os.listdir(tmp_path) == ["ckpt.npz"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    # A writer that dies half-way leaves the previous checkpoint whole and no temporary file.
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, _state())
    before = path.read_bytes()
    real_savez = np.savez

    def dies_half_way(f, **arrays):
        real_savez(f, **arrays)
        f.truncate(f.tell() // 2)
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {**_state(), "epoch": 9})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    assert int(load_checkpoint(path)["epoch"]) == 3


def test_checkpoint_refuses_object_arrays_and_reserved_names(tmp_path):
    with pytest.raises(ValueError, match="entry 'bad' is an object array"):
        save_checkpoint(tmp_path / "c.npz", {"bad": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="'__format__'"):
        save_checkpoint(tmp_path / "c.npz", {"__format__": 1})
    assert not os.listdir(tmp_path)


def test_checkpoint_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.npz does not exist"):
        load_checkpoint(tmp_path / "nope.npz")


def test_checkpoint_truncated_at_every_length_is_an_error(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, _state())
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    for length in sorted({0, 1, 4, 30, 100} | set(range(0, len(data), max(1, len(data) // 40)))):
        cut.write_bytes(data[:length])
        with pytest.raises(CheckpointError, match=r"cut\.npz"):
            load_checkpoint(cut)


def test_checkpoint_corrupt_byte_is_an_error(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.arange(1000.0)})
    data = bytearray(path.read_bytes())
    # Flip one byte inside the array data (well past the zip and .npy headers): the zip CRC
    # catches it, since every entry is read in full on load.
    data[4000] ^= 0xFF
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"bad\.npz is truncated or corrupt.*CRC"):
        load_checkpoint(bad)


def test_checkpoint_never_unpickles(tmp_path):
    # An .npz holding an object array (which np.load could only read by unpickling).
    evil = tmp_path / "evil.npz"
    np.savez(evil, __format__=np.array(checkpoint._FORMAT), x=np.array([object()], dtype=object))
    with pytest.raises(CheckpointError, match=r"evil\.npz.*allow_pickle"):
        load_checkpoint(evil)
    pickled = tmp_path / "pickled.npz"
    np.save(pickled, np.array([None], dtype=object), allow_pickle=True)
    os.replace(str(pickled) + ".npy", pickled)
    with pytest.raises(CheckpointError, match=r"pickled\.npz"):
        load_checkpoint(pickled)


def test_checkpoint_not_ours(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.zeros(3))
    with pytest.raises(CheckpointError, match=r"plain\.npz is not a ringreduce checkpoint.*"
                                              r"found no __format__"):
        load_checkpoint(plain)
    npy = tmp_path / "array.npz"
    with open(npy, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(CheckpointError, match=r"array\.npz is not an \.npz archive"):
        load_checkpoint(npy)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"text\.npz"):
        load_checkpoint(text)


def test_checkpoint_mismatches_name_what_was_expected_and_found(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {**_state(), "world_size": 2})
    like = {**_state(), "world_size": 0}
    with pytest.raises(CheckpointError, match=r"entry 'param.0' is float64\(3, 4\), this run "
                                              r"expects float64\(4, 3\)"):
        load_checkpoint(path, like={**like, "param.0": np.zeros((4, 3))})
    with pytest.raises(CheckpointError, match=r"entry 'param.1' is float32\(4,\), this run "
                                              r"expects float64\(4,\)"):
        load_checkpoint(path, like={**like, "param.1": np.zeros(4)})
    with pytest.raises(CheckpointError, match=r"missing entries \['param.2'\], unexpected "
                                              r"entries \[\]"):
        load_checkpoint(path, like={**like, "param.2": np.zeros(1)})
    with pytest.raises(CheckpointError, match=r"missing entries \[\], unexpected entries "
                                              r"\['name'\]"):
        load_checkpoint(path, like={k: v for k, v in like.items() if k != "name"})
    # None: the entry must be there, any shape (a log that grows).
    load_checkpoint(path, like={**like, "loss_curve": None})
    with pytest.raises(CheckpointError, match=r"written with world_size=2, this run has "
                                              r"world_size=4"):
        load_checkpoint(path, match={"world_size": 4})
    with pytest.raises(CheckpointError, match=r"no entry 'seed'"):
        load_checkpoint(path, match={"seed": 0})
    assert issubclass(CheckpointError, ValueError)
