"""ringreduce.elastic.State at any rank count, and what must not change without ULFM: commit,
restore and sync (rank 0's state wins), the checks of what a state holds, and @run calling a
function that meets no failure exactly once. The lost-rank tests are tests/jobs/
test_elastic_jobs.py (real kills under Open MPI with ULFM)."""
import numpy as np
import pytest
from mpi4py import MPI

import ringreduce as rr
from ringreduce.elastic import State, run
from ringreduce.training import SGD, Adam
from ringreduce.transport import fault

pytestmark = pytest.mark.timeout(120)


def make(rank=0):
    params = [np.full((3, 4), float(rank)), np.arange(5.0) + rank]
    opt = SGD(params, lr=0.1, momentum=0.9)
    return params, opt


def test_commit_and_restore_in_place():
    params, opt = make()
    state = State(params=params, opt=opt, epoch=1, step=7, seen=3)
    ids = [id(p) for p in params]
    params[0][...] = 5.0
    opt.step([np.ones((3, 4)), np.ones(5)])
    state.step, state.seen = 8, 4
    state.restore()  # back to the constructor's commit
    assert np.all(params[0] == 0) and np.array_equal(params[1], np.arange(5.0))
    assert opt.steps == 0 and (state.epoch, state.step, state.seen) == (1, 7, 3)
    assert [id(p) for p in params] == ids
    opt.step([np.ones((3, 4)), np.ones(5)])
    state.step = 9
    state.commit()
    saved = [p.copy() for p in params]
    params[1][...] = -1.0
    state.step = 10
    state.restore()
    assert all(np.array_equal(a, b) for a, b in zip(params, saved)) and state.step == 9
    assert opt.steps == 1


def test_sync_takes_rank_0s_state(comm):
    rank = comm.Get_rank()
    params, opt = make(rank)
    state = State(params={"w": params[0], "b": params[1]}, opt=Adam(params), step=rank)
    state.sync()
    assert np.all(params[0] == 0) and np.array_equal(params[1], np.arange(5.0))
    assert state.step == 0


def test_what_a_state_holds_is_checked():
    with pytest.raises(TypeError, match=r"State.step must be an int, got float 1.5"):
        State(step=1.5)
    with pytest.raises(TypeError, match=r"params\[0\] is a list; expected numpy arrays"):
        State(params=[[1, 2]])
    with pytest.raises(TypeError, match=r"opt is a dict; expected a ringreduce.training"):
        State(params=[np.zeros(2)], opt={})
    with pytest.raises(ValueError, match=r"params\[0\] must be a writable C-contiguous"):
        State(params=[np.zeros((4, 4))[:, ::2]])
    state = State(epoch=0)
    with pytest.raises(TypeError, match="must be an int"):
        state.epoch = True
    with pytest.raises(AttributeError, match=r"State has no 'epochs'; its ints are"):
        state.epochs  # noqa: B018 - the attribute read is the test


def test_torch_state(comm):
    torch = pytest.importorskip("torch")
    pytest.importorskip("ringreduce.torch")
    torch.manual_seed(comm.Get_rank())
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = State(params=model, opt=opt, step=0)
    before = model.weight.detach().clone()
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    state.restore()
    assert torch.equal(model.weight, before) and not opt.state_dict()["state"]
    state.sync()
    got = comm.allgather(model.weight.detach().numpy().tobytes())
    assert len(set(got)) == 1


def test_run_without_a_failure_calls_once():
    calls = []

    @run
    def train(state, factor):
        calls.append(rr.size())
        state.step += 1
        return factor * state.step

    state = State(step=0)
    assert train(state, 10) == 10 and calls == [MPI.COMM_WORLD.Get_size()]
    assert state.recoveries == []
    with pytest.raises(TypeError, match="must be a ringreduce.elastic.State"):
        train(object(), 1)


def test_without_ulfm_the_collectives_are_untouched():
    if fault.ENABLED:
        pytest.skip("ULFM is on here: the collectives are wrapped")
    # No wrapper at all: MPICH (and Open MPI without --with-ft) run exactly as before.
    for fn in (rr.allreduce, rr.grouped_allreduce, rr.broadcast, rr.barrier,
               rr.allreduce_async, rr.broadcast_parameters):
        assert not hasattr(fn, "__wrapped__"), fn
    assert rr.elastic.world() is MPI.COMM_WORLD
