"""`ringreduce-run --max-restarts K` running jobs: first a scripted stand-in mpiexec that fails
as told (restart messages, RINGREDUCE_RESTART_COUNT, the host list read again, hosts that fail
the check left out, the last exit status), then real MPICH jobs of examples/train_mlp.py with
one rank killed (SIGKILL) at a chosen step: restarted from the checkpoint, the parameters are
bitwise those of a run that never failed; with a "host" gone, the restart runs on fewer ranks.
The pure parts: tests/unit/test_restart.py. Every job has a timeout (tests/_jobs.py)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from _fake_mpiexec import HYDRA_VERSION, clean_env  # noqa: F401 (a fixture)
from _jobs import ROOT, TRAIN_MLP, mpirun, run_job
from ringreduce.launch.run import main

SCRIPTED = """\
#!{python}
# Stands in for mpiexec: answers --version; otherwise records its argv and hostfile, may
# rewrite a file (the user's hostfile, say) and exits with the next status of the plan.
import json, sys
if sys.argv[1:] == ["--version"]:
    sys.stdout.write({version!r})
    sys.exit(0)
with open({plan!r}) as f:
    plan = json.load(f)
n = len(plan["calls"])
hostfile = None
if "-f" in sys.argv:
    with open(sys.argv[sys.argv.index("-f") + 1]) as f:
        hostfile = f.read()
plan["calls"].append({{"argv": sys.argv[1:], "hostfile": hostfile}})
for path, text in plan.get("rewrite", {{}}).get(str(n), {{}}).items():
    with open(path, "w") as f:
        f.write(text)
with open({plan!r}, "w") as f:
    json.dump(plan, f)
sys.exit(plan["exits"][n])
"""


@pytest.fixture(autouse=True)
def no_allocation(monkeypatch):
    for name in ("SLURM_JOB_NODELIST", "SLURM_NODELIST", "PBS_NODEFILE", "LSB_MCPU_HOSTS"):
        monkeypatch.delenv(name, raising=False)


def scripted(tmp_path, exits, rewrite=None):
    """(path of a stand-in mpiexec exiting with `exits` in turn, a function giving its calls)."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"exits": exits, "calls": [], "rewrite": rewrite or {}}))
    path = tmp_path / "mpiexec"
    path.write_text(SCRIPTED.format(python=sys.executable, version=HYDRA_VERSION,
                                    plan=str(plan)))
    path.chmod(0o755)
    return str(path), lambda: json.loads(plan.read_text())["calls"]


def genv(argv, name):
    i = next((i for i in range(len(argv) - 2) if argv[i:i + 2] == ["-genv", name]), None)
    return None if i is None else argv[i + 2]


def test_restarts_with_the_count_in_the_environment(tmp_path, capsys):
    fake, calls = scripted(tmp_path, [9, 0])
    assert main(["--mpiexec", fake, "--max-restarts", "2", "-np", "2", "prog"]) == 0
    got = calls()
    assert [genv(c["argv"], "RINGREDUCE_RESTART_COUNT") for c in got] == ["0", "1"]
    assert all(c["argv"][:2] == ["-n", "2"] for c in got)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("ringreduce-run: the job failed (exit status 9) after ")
    assert err[0].endswith(" s; restart 1 of 2")
    assert err[1] == "ringreduce-run: restart 1: 2 rank(s) on this machine"


def test_stops_after_k_restarts_with_the_last_exit_status(tmp_path, capsys):
    fake, calls = scripted(tmp_path, [3, 4, 5])
    assert main(["--mpiexec", fake, "--max-restarts", "2", "-np", "1", "prog"]) == 5
    assert len(calls()) == 3
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "no restarts left (--max-restarts 2), so ringreduce-run exits with status 5")


def test_without_max_restarts_nothing_changes(tmp_path, capsys):
    fake, calls = scripted(tmp_path, [7])
    assert main(["--mpiexec", fake, "-np", "1", "prog"]) == 7
    assert len(calls()) == 1 and genv(calls()[0]["argv"], "RINGREDUCE_RESTART_COUNT") is None
    assert capsys.readouterr().err == ""


def test_the_hostfile_is_read_again(tmp_path, capsys):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost:2\nnodeb:2\n")
    # The first start fails and, meanwhile, someone replaces nodeb by nodec in the file.
    fake, calls = scripted(tmp_path, [1, 0], {"0": {str(hosts): "localhost:2\nnodec:1\n"}})
    assert main(["--mpiexec", fake, "--max-restarts", "1", "--min-np", "3", "--host-check",
                 "true", "--hostfile", str(hosts), "prog"]) == 0
    assert [(c["argv"][1], c["hostfile"]) for c in calls()] == [
        ("4", "localhost:2\nnodeb:2\n"), ("3", "localhost:2\nnodec:1\n")]
    err = capsys.readouterr().err
    assert "host nodeb is no longer in the host list" in err
    assert "restart 1: 3 rank(s) on localhost:2, nodec:1" in err


def test_a_hostfile_broken_meanwhile_ends_the_job(tmp_path, capsys):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost:2\n")
    fake, calls = scripted(tmp_path, [1, 0], {"0": {str(hosts): "localhost:2\nnodeb:0\n"}})
    assert main(["--mpiexec", fake, "--max-restarts", "1", "--hostfile", str(hosts),
                 "prog"]) == 1
    assert len(calls()) == 1
    assert (f"cannot restart: the hostfile, read again: {hosts}:2: the slot count must be at "
            "least 1, got 0; ringreduce-run exits with status 1") in capsys.readouterr().err


def test_hosts_that_fail_the_check_are_left_out(tmp_path, capsys, monkeypatch):
    check = tmp_path / "check"
    check.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        # Called as 'check HOST true', like ssh.
        echo "$1" >> {tmp_path}/checked
        case "$1" in
          deadhost) echo "ssh: connect to host deadhost port 22: No route to host" >&2
                    exit 255 ;;
          slowhost) exec sleep 60 ;;
        esac
        exec "$2"
        """))
    check.chmod(0o755)
    monkeypatch.setattr("ringreduce.launch.restart.PROBE_TIMEOUT_S", 1)
    fake, calls = scripted(tmp_path, [9, 0])
    began = time.monotonic()
    assert main(["--mpiexec", fake, "--max-restarts", "1", "--min-np", "3", "--host-check",
                 str(check), "-H", "localhost:2,deadhost:2,slowhost:2,livehost:1",
                 "prog"]) == 0
    assert time.monotonic() - began < 30  # the checks ran at once, the slow one cut short
    got = calls()
    assert got[1]["argv"][:2] == ["-n", "3"] and got[1]["hostfile"] == "localhost:2\nlivehost:1\n"
    # This machine is never checked; the others once each.
    assert sorted((tmp_path / "checked").read_text().split()) == ["deadhost", "livehost",
                                                                 "slowhost"]
    err = capsys.readouterr().err
    assert (f"leaving out host deadhost (2 slot(s)) this time: '{check} deadhost true' exited "
            "with status 255: ssh: connect to host deadhost port 22: No route to host") in err
    assert f"leaving out host slowhost (2 slot(s)) this time: '{check} slowhost true' did " \
           "not answer in 1 s" in err
    assert "restart 1: 3 rank(s) on localhost:2, livehost:1" in err


@pytest.mark.parametrize("argv,message", [
    (["--min-np", "1", "-np", "2"], "--min-np and --host-check apply to restarts; expected "
                                    "--max-restarts K"),
    (["--max-restarts", "1", "--min-np", "3", "-np", "2"],
     "--min-np 3 is more than the 2 rank(s) the job starts with"),
    (["--max-restarts", "1", "--min-np", "1", "-np", "2"],
     "--min-np needs hosts that can drop out"),
    (["--max-restarts", "1", "--host-check", "", "-H", "a:1"], "--host-check expects a command"),
])
def test_restart_usage_errors(tmp_path, capsys, argv, message):
    fake, calls = scripted(tmp_path, [0])
    assert main(["--mpiexec", fake, *argv, "prog"]) == 2
    assert message in capsys.readouterr().err and calls() == []


def test_max_restarts_takes_a_whole_number(capsys):
    with pytest.raises(SystemExit):
        main(["--max-restarts", "-1", "-np", "1", "prog"])
    assert "expected a whole number of at least 0, got '-1'" in capsys.readouterr().err


def test_dry_run_says_what_a_failure_does(tmp_path, capsys):
    fake, calls = scripted(tmp_path, [0])
    assert main(["--dry-run", "--mpiexec", fake, "--max-restarts", "3", "--min-np", "2",
                 "-H", "localhost:2,b:2", "prog"]) == 0
    out = capsys.readouterr().out
    assert ("# on failure: up to 3 restart(s), on the hosts that pass 'ssh -o BatchMode=yes -o "
            "ConnectTimeout=15 HOST true', at least 2 rank(s)") in out
    assert "-genv RINGREDUCE_RESTART_COUNT 0 prog" in out and calls() == []


def test_a_job_stopped_by_sigterm_is_not_restarted(tmp_path):
    # The launcher passes SIGTERM on to mpiexec, which ends; a job ended on purpose must not
    # start again, whatever --max-restarts says.
    starts = tmp_path / "starts"
    fake = tmp_path / "mpiexec"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = --version ]; then echo 'HYDRA build details:'; exit 0; fi
        echo start >> {starts}
        trap 'exit 143' TERM
        echo started
        while :; do sleep 0.1; done
        """))
    fake.chmod(0o755)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT,
                                                                   os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "ringreduce.launch.run", "--mpiexec",
                             str(fake), "--max-restarts", "3", "-np", "1", "true"], env=env,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline() == "started\n"  # '' if the launcher ended instead
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert starts.read_text().split() == ["start"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- real jobs: examples/train_mlp.py under MPICH, one rank killed ---

SMALL = ["--synthetic", "66", "--features", "12", "--hidden", "16,8", "--batch-size", "16",
         "--epochs", "3", "--no-progress", "--max-steps", "12"]


def real_mpi(test):
    test = pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec on PATH")(test)
    return pytest.mark.skipif(
        any(k in os.environ for k in ("PMI_RANK", "PMI_FD", "OMPI_COMM_WORLD_RANK")),
        reason="starts its own MPI jobs; run under plain pytest, not mpiexec")(test)


def params_of(path):
    with np.load(path, allow_pickle=False) as z:
        return [z[f"param.{i}"] for i in range(sum(k.startswith("param.") for k in z.files))]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """12 steps at 2 ranks that never failed: (parameters, metrics)."""
    tmp = tmp_path_factory.mktemp("straight")
    mpirun(2, [*SMALL, "--save-params", str(tmp / "p.npz"), "--metrics-out", str(tmp / "m.json")])
    return params_of(tmp / "p.npz"), json.loads((tmp / "m.json").read_text())


def restarted_job(tmp_path, launcher_args, die_at):
    """Run train_mlp.py through ringreduce-run --max-restarts 1 with rank die_at[1] killed
    before step die_at[0]; return (stderr, parameters, metrics)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               TRAIN_MLP_DIE_AT=f"{die_at[0]}:{die_at[1]}",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    # Checkpoints after steps 4, 5 (the first epoch's end), 8, 10 (the second's) and 12.
    cmd = [sys.executable, "-m", "ringreduce.launch.run", "--max-restarts", "1",
           *launcher_args, sys.executable, TRAIN_MLP, *SMALL, "--checkpoint-dir",
           tmp_path / "ckpt", "--checkpoint-every", "4", "--resume", "auto", "--save-params",
           tmp_path / "p.npz", "--metrics-out", tmp_path / "m.json"]
    rc, out, err = run_job(cmd, env=env, timeout=240)
    assert rc == 0, f"exit {rc}\nstdout:\n{out}\nstderr:\n{err}"
    return err, params_of(tmp_path / "p.npz"), json.loads((tmp_path / "m.json").read_text())


@real_mpi
def test_killed_rank_restarts_from_its_checkpoint_bitwise(tmp_path, straight):
    err, params, metrics = restarted_job(tmp_path, ["-np", "2"], die_at=(7, 1))
    assert "rank 1: TRAIN_MLP_DIE_AT: SIGKILL before step 7" in err
    assert "ringreduce-run: the job failed (exit status 9)" in err
    assert "ringreduce-run: restart 1: 2 rank(s) on this machine" in err
    # The second start went on from the checkpoint of step 5, not from the beginning.
    assert metrics["start_step"] == 5 and metrics["steps"] == 12 and metrics["ranks"] == 2
    ref, ref_metrics = straight
    for i, (a, b) in enumerate(zip(params, ref)):
        assert np.array_equal(a, b), f"parameter {i} differs from the run that never failed"
    assert metrics["loss_curve"] == ref_metrics["loss_curve"]
    assert metrics["test_accuracy_curve"] == ref_metrics["test_accuracy_curve"]


FAKE_SSH = """\
#!/bin/sh
# Stands in for ssh to 'host' 127.0.0.2, which is this machine: Hydra calls it as
# 'fake-ssh [-x] HOST COMMAND...', ringreduce-run's check as 'fake-ssh HOST true'. The host
# answers its first connection only, then is down, like a machine that crashed with its rank.
[ "$1" = "-x" ] && shift
echo "$1" >> {log}
if [ "$(grep -c . {log})" -gt 1 ]; then
  echo "ssh: connect to host $1 port 22: No route to host" >&2
  exit 255
fi
shift
exec sh -c "$*"
"""


@real_mpi
def test_lost_host_restarts_on_fewer_ranks(tmp_path, straight):
    if "HYDRA build details" not in subprocess.run(["mpiexec", "--version"], text=True,
                                                   capture_output=True).stdout:
        pytest.skip("the stand-in 'remote' host is set up for MPICH's Hydra")
    ssh, log = tmp_path / "fake-ssh", tmp_path / "ssh.log"
    ssh.write_text(FAKE_SSH.format(log=log))
    ssh.chmod(0o755)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1:1\n127.0.0.2:1\n")
    err, params, metrics = restarted_job(
        tmp_path, ["--hostfile", hosts, "--launcher-exec", ssh, "--min-np", "1"], die_at=(7, 1))
    assert "leaving out host 127.0.0.2 (1 slot(s)) this time: " in err and \
        "exited with status 255: ssh: connect to host 127.0.0.2 port 22: No route" in err
    assert "ringreduce-run: restart 1: 1 rank(s) on 127.0.0.1:1" in err
    assert log.read_text().split() == ["127.0.0.2", "127.0.0.2"]  # Hydra's, then the check
    assert metrics["ranks"] == 1 and metrics["start_step"] == 5 and metrics["steps"] == 12
    # Another rank count adds the gradient's pieces in another order: equal to rounding.
    ref, ref_metrics = straight
    for i, (a, b) in enumerate(zip(params, ref)):
        rel = np.max(np.abs(a - b)) / np.max(np.abs(b))
        assert rel < 1e-10, f"parameter {i}: relative difference {rel:.3g}"
    np.testing.assert_allclose(metrics["loss_curve"], ref_metrics["loss_curve"], rtol=1e-10)
