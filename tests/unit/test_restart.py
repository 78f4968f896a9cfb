"""The pure parts of `ringreduce-run --max-restarts` (ringreduce/launch/restart.py): the rank
count of a restart, which command checks a host, which hosts are this machine; the restart loop
itself with a scripted `start`, no processes. The loop running real commands:
tests/jobs/test_restart_jobs.py."""
import socket

import pytest

from ringreduce.launch.hostfile import Host
from ringreduce.launch.restart import (RestartError, check_command, is_local, relaunch_size,
                                       run_with_restarts)

A, B, C = Host("a", 2), Host("b", 2), Host("c", 4)


@pytest.mark.parametrize("hosts,np,min_np,over,size", [
    ([A, B, C], 6, 6, False, 6),     # the slots still hold -np
    ([A, C], 8, 4, False, 6),        # fewer slots: as many ranks as there are
    ([A, B, C], None, 2, False, 8),  # no -np: every slot
    ([A], 6, 6, True, 6),            # --oversubscribe keeps -np
    ([A], 6, 2, False, 2),
])
def test_relaunch_size(hosts, np, min_np, over, size):
    assert relaunch_size(hosts, np, min_np, over) == size


def test_relaunch_size_refuses_below_min_np():
    with pytest.raises(RestartError) as e:
        relaunch_size([A, B], 8, 6, False)
    assert str(e.value) == ("only 4 slot(s) are left (a:2, b:2), and the job needs at least 6 "
                            "rank(s) (--min-np 6)")
    with pytest.raises(RestartError, match="no host is left"):
        relaunch_size([], 8, 1, False)


def test_check_command_choice():
    assert check_command("srun -N1 -n1 -w") == ["srun", "-N1", "-n1", "-w"]
    assert check_command("my check", "/usr/bin/rsh") == ["my", "check"]  # --host-check wins
    assert check_command(None, "/usr/bin/rsh") == ["/usr/bin/rsh"]
    assert check_command(None, "/usr/bin/rsh", slurm=True) == ["/usr/bin/rsh"]
    assert check_command(None, None, slurm=True) == ["srun", "--nodes=1", "--ntasks=1",
                                                     "--nodelist"]
    ssh = check_command()
    assert ssh[0] == "ssh" and "BatchMode=yes" in ssh
    with pytest.raises(RestartError, match="--host-check expects a command"):
        check_command("  ")


def test_is_local():
    here = socket.gethostname()
    for name in ("localhost", "LocalHost", "127.0.0.1", "::1", here, here.upper()):
        assert is_local(name), name
    for name in ("127.0.0.2", "node1", "10.0.0.1"):
        assert not is_local(name), name


class Script:
    """A `start` that returns the given statuses in turn and records each call."""

    def __init__(self, *statuses, signalled_at=None):
        self.statuses, self.calls, self.signalled_at = list(statuses), [], signalled_at

    def __call__(self, hosts, np, count):
        self.calls.append((hosts, np, count))
        return self.statuses.pop(0), len(self.calls) - 1 == self.signalled_at


def loop(start, hosts=None, np=2, **kw):
    lines = []
    kw = {"max_restarts": 2, "min_np": np, "np_given": np, "oversubscribe": False,
          "reload_hosts": lambda: hosts, "check": ["false"], "log": lines.append, **kw}
    return run_with_restarts(start, hosts, np, **kw), lines


def test_restarts_until_the_job_succeeds():
    start = Script(9, 0)
    status, lines = loop(start)
    assert status == 0 and [c[2] for c in start.calls] == [0, 1]
    assert lines[0].startswith("the job failed (exit status 9) after ")
    assert lines[0].endswith("s; restart 1 of 2") and lines[1] == \
        "restart 1: 2 rank(s) on this machine"


def test_stops_after_k_restarts_with_the_last_status():
    start = Script(3, 4, 5)
    status, lines = loop(start)
    assert status == 5 and len(start.calls) == 3
    assert "no restarts left (--max-restarts 2), so ringreduce-run exits with status 5" \
        in lines[-1]


def test_a_job_stopped_by_a_signal_is_not_restarted():
    start = Script(143, signalled_at=0)
    assert loop(start) == (143, []) and len(start.calls) == 1


def test_no_restarts_means_one_start():
    start = Script(7)
    status, lines = loop(start, max_restarts=0)
    assert status == 7 and len(start.calls) == 1 and lines == []


def test_hosts_that_fail_the_check_are_left_out(monkeypatch):
    verdicts = {"a": None, "b": "'ssh b true' exited with status 255: no route"}
    monkeypatch.setattr("ringreduce.launch.restart._probe",
                        lambda argv, timeout: verdicts[argv[-2]])
    start = Script(1, 0)
    status, lines = loop(start, hosts=[A, B], np=4, min_np=2)
    assert status == 0 and start.calls[1][:2] == ([A], 2)
    assert "leaving out host b (2 slot(s)) this time: 'ssh b true' exited with status 255: " \
           "no route" in lines
    assert lines[-1] == "restart 1: 2 rank(s) on a:2"


def test_too_few_slots_left_ends_with_the_jobs_status(monkeypatch):
    monkeypatch.setattr("ringreduce.launch.restart._probe",
                        lambda argv, timeout: None if argv[-2] == "a" else "down")
    start = Script(9, 0)
    status, lines = loop(start, hosts=[A, B], np=4)
    assert status == 9 and len(start.calls) == 1
    assert lines[-1] == ("cannot restart: only 2 slot(s) are left (a:2), and the job needs at "
                         "least 4 rank(s) (--min-np 4); ringreduce-run exits with status 9")
