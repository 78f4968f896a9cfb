"""OMPI_MCA_osc defaults to ^ucx before MPI starts, and a user's value is left alone."""
import sys

from ringreduce.config import quiet_open_mpi_osc


def test_set_when_absent_and_mpi_not_started(monkeypatch):
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    env = {}
    assert quiet_open_mpi_osc(env) is True
    assert env == {"OMPI_MCA_osc": "^ucx"}


def test_a_users_value_wins(monkeypatch):
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    env = {"OMPI_MCA_osc": "ucx,sm"}
    assert quiet_open_mpi_osc(env) is False
    assert env == {"OMPI_MCA_osc": "ucx,sm"}


def test_too_late_once_mpi_is_imported(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", object())
    env = {}
    assert quiet_open_mpi_osc(env) is False
    assert env == {}
