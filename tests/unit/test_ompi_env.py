"""Open MPI settings get ringreduce's defaults before MPI starts; a user's value is kept."""
import sys

from ringreduce.config import OPEN_MPI_DEFAULTS, open_mpi_defaults


def test_set_when_absent_and_mpi_not_started(monkeypatch):
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    env = {}
    assert sorted(open_mpi_defaults(env)) == sorted(OPEN_MPI_DEFAULTS)
    assert env == {"OMPI_MCA_osc": "^ucx", "OMPI_MCA_btl_sm_eager_limit": "8192"}


def test_a_users_value_wins(monkeypatch):
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    env = {"OMPI_MCA_osc": "ucx,sm"}
    assert open_mpi_defaults(env) == ["OMPI_MCA_btl_sm_eager_limit"]
    assert env == {"OMPI_MCA_osc": "ucx,sm", "OMPI_MCA_btl_sm_eager_limit": "8192"}


def test_too_late_once_mpi_is_imported(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", object())
    env = {}
    assert open_mpi_defaults(env) == []
    assert env == {}
