"""ringreduce-run: flavour detection, the argv built for Hydra and Open MPI, dry-run output,
slot checks, environment forwarding, and hostile input.

Most tests run the launcher against a stand-in mpiexec: a small script that answers --version
like the real one and otherwise records the argv and the hostfile it was given. One test at
the end runs a real job with the installed MPI.
"""
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ringreduce.launch import run
from ringreduce.launch.run import HYDRA, OPENMPI, LaunchError, build_command, detect_flavour, \
    forwarded_env, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HYDRA_VERSION = """HYDRA build details:
    Version:                                 5.0.2
    Release Date:                            unreleased development copy
    Launchers available:                     ssh rsh fork slurm ll lsf sge manual persist
"""
OPENMPI4_VERSION = "mpirun (Open MPI) 4.1.5\n\nReport bugs to http://www.open-mpi.org/community/help/\n"
OPENMPI5_VERSION = "mpirun (Open MPI) 5.0.3\n\nReport bugs to https://www.open-mpi.org/community/help/\n"

FAKE = """\
#!{python}
# Stands in for mpiexec: answers --version, otherwise records its argv and hostfile.
import json, os, sys
if sys.argv[1:] == ["--version"]:
    sys.stdout.write({version!r})
    sys.exit(0)
args = sys.argv[1:]
hostfile = None
for flag in ("-f", "--hostfile"):
    if flag in args:
        with open(args[args.index(flag) + 1]) as f:
            hostfile = f.read()
with open({record!r}, "w") as f:
    json.dump({{"argv": sys.argv, "hostfile": hostfile}}, f)
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""


def make_fake(tmp_path, version, name="mpiexec"):
    path = tmp_path / name
    record = tmp_path / f"{name}.json"
    path.write_text(FAKE.format(python=sys.executable, version=version, record=str(record)))
    path.chmod(0o755)
    return str(path), record


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    # The caller's RINGREDUCE_* variables would otherwise show up in every built command.
    for name in list(os.environ):
        if name.startswith("RINGREDUCE_"):
            monkeypatch.delenv(name)


def dry_run(capsys, argv):
    assert main(["--dry-run"] + argv) == 0
    lines = capsys.readouterr().out.splitlines()
    # Comment lines first, then the command, which spans lines only if an argument holds a
    # newline (quoted, so still one shell word).
    n = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    return shlex.split("\n".join(lines[n:])), lines[:n]


# --- flavour detection ---

@pytest.mark.parametrize("output,expected", [
    (HYDRA_VERSION, HYDRA), (OPENMPI4_VERSION, OPENMPI), (OPENMPI5_VERSION, OPENMPI),
    ("mpirun (Open MPI) 1.10.7\n", OPENMPI), ("", None), ("Intel(R) MPI Library 2021\n", None),
])
def test_detect_from_version_output(output, expected):
    assert detect_flavour(output) == expected


@pytest.mark.parametrize("library,expected", [
    ("MPICH Version:      5.0.2\nMPICH Release date: ...\n", HYDRA),
    ("Open MPI v4.1.5, package: Open MPI builder, ident: 4.1.5\n", OPENMPI),
    ("Some Other MPI 1.0\n", None),
])
def test_detect_from_library_version(library, expected):
    assert detect_flavour("unrecognised", library) == expected


def test_version_output_wins_over_library():
    assert detect_flavour(OPENMPI4_VERSION, "MPICH Version: 5.0.2") == OPENMPI


def test_undetectable_mpi_is_an_error(tmp_path, monkeypatch):
    fake, _ = make_fake(tmp_path, "mystery launcher 1.0\n")
    # Make the mpi4py fallback see an unknown library as well.
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho 'Some Other MPI 1.0'\n")
    python.chmod(0o755)
    monkeypatch.setattr(run.sys, "executable", str(python))
    with pytest.raises(LaunchError, match="expected .* 'HYDRA build details' .* got "
                                          "'mystery launcher 1.0'; mpi4py's library says "
                                          "'Some Other MPI 1.0'"):
        run.query_flavour(fake)


def test_version_timeout_is_an_error(tmp_path, monkeypatch):
    slow = tmp_path / "slow-mpiexec"
    slow.write_text("#!/bin/sh\nexec sleep 60\n")
    slow.chmod(0o755)
    monkeypatch.setattr(run, "VERSION_TIMEOUT_S", 1)
    with pytest.raises(LaunchError, match="did not finish in 1 s"):
        run.query_flavour(str(slow))


# --- the built argv ---

def test_hydra_command():
    cmd = build_command(HYDRA, "/opt/mpich/bin/mpiexec", 4, ["python", "train.py", "--lr", "1"],
                        hostfile="/tmp/h", env={"RINGREDUCE_ALGORITHM": "ring", "A": "x y"},
                        launcher_exec="/usr/local/bin/ns-ssh")
    assert cmd == ["/opt/mpich/bin/mpiexec", "-n", "4", "-f", "/tmp/h",
                   "-launcher", "ssh", "-launcher-exec", "/usr/local/bin/ns-ssh",
                   "-genv", "RINGREDUCE_ALGORITHM", "ring", "-genv", "A", "x y",
                   "python", "train.py", "--lr", "1"]


def test_hydra_needs_no_oversubscribe_flag():
    assert build_command(HYDRA, "mpiexec", 8, ["p"], "/tmp/h", oversubscribe=True) == \
        ["mpiexec", "-n", "8", "-f", "/tmp/h", "p"]


def test_openmpi_command():
    cmd = build_command(OPENMPI, "/usr/bin/mpirun", 4, ["python", "train.py"], hostfile="/tmp/h",
                        env={"RINGREDUCE_ALGORITHM": "ring", "A": "x=y z"}, oversubscribe=True,
                        launcher_exec="/usr/local/bin/ns-ssh")
    assert cmd == ["/usr/bin/mpirun", "-np", "4", "--hostfile", "/tmp/h", "--oversubscribe",
                   "--mca", "plm_rsh_agent", "/usr/local/bin/ns-ssh",
                   "-x", "RINGREDUCE_ALGORITHM=ring", "-x", "A=x=y z", "python", "train.py"]


def test_openmpi5_names_the_ssh_agent_for_prrte():
    cmd = build_command(OPENMPI, "mpirun", 2, ["p"], launcher_exec="/x/ssh", openmpi_version=5)
    assert cmd == ["mpirun", "-np", "2", "--mca", "plm_ssh_agent", "/x/ssh", "p"]


@pytest.mark.parametrize("output,major", [(OPENMPI4_VERSION, 4), (OPENMPI5_VERSION, 5),
                                          (HYDRA_VERSION, None), ("", None)])
def test_openmpi_major(output, major):
    assert run.openmpi_major(output) == major


def test_dry_run_openmpi5_launcher_exec(tmp_path, capsys, monkeypatch):
    fake, _ = make_fake(tmp_path, OPENMPI5_VERSION, "mpirun")
    agent = tmp_path / "agent"
    agent.write_text("#!/bin/sh\n")
    agent.chmod(0o755)
    monkeypatch.chdir(tmp_path)  # a relative --launcher-exec comes out absolute
    cmd, _ = dry_run(capsys, ["--mpiexec", fake, "-np", "2", "--launcher-exec", "./agent", "p"])
    assert cmd == [fake, "-np", "2", "--mca", "plm_ssh_agent", str(agent), "p"]


def test_local_run_has_no_hostfile():
    assert build_command(HYDRA, "mpiexec", 2, ["p"]) == ["mpiexec", "-n", "2", "p"]
    assert build_command(OPENMPI, "mpirun", 2, ["p"]) == ["mpirun", "-np", "2", "p"]


def test_unknown_flavour():
    with pytest.raises(ValueError, match="expected 'hydra' or 'openmpi'"):
        build_command("lam", "mpiexec", 2, ["p"])


# --- environment forwarding ---

def test_forwarded_env_takes_ringreduce_variables_and_env_options():
    environ = {"RINGREDUCE_ALGORITHM": "tree", "RINGREDUCE_TIMELINE": "/tmp/t.json",
               "HOME": "/root", "MY_RINGREDUCE_X": "no"}
    env = forwarded_env(environ, ["RINGREDUCE_ALGORITHM=ring", "OMP_NUM_THREADS=1",
                                  "EMPTY=", "EQ=a=b"])
    assert env == {"RINGREDUCE_TIMELINE": "/tmp/t.json", "RINGREDUCE_ALGORITHM": "ring",
                   "OMP_NUM_THREADS": "1", "EMPTY": "", "EQ": "a=b"}


@pytest.mark.parametrize("item", ["NOVALUE", "=x", "1X=2", "A-B=1", "A B=1", "$(id)=1"])
def test_bad_env_option(item):
    with pytest.raises(LaunchError, match="--env expects NAME=VALUE"):
        forwarded_env({}, [item])


# --- the whole launcher, dry run ---

def test_dry_run_hydra(tmp_path, capsys, monkeypatch):
    fake, record = make_fake(tmp_path, HYDRA_VERSION)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1 slots=2   # Open MPI style in, Hydra style out\nnode2 slots=2\n")
    monkeypatch.setenv("RINGREDUCE_FUSION_THRESHOLD", "32M")
    cmd, comments = dry_run(capsys, ["--mpiexec", fake, "--hostfile", str(hostfile),
                                     "--env", "OMP_NUM_THREADS=1", "python", "train.py", "-v"])
    assert cmd[:4] == [fake, "-n", "4", "-f"]
    written = cmd[4]
    assert cmd[5:] == ["-genv", "RINGREDUCE_FUSION_THRESHOLD", "32M",
                       "-genv", "OMP_NUM_THREADS", "1", "python", "train.py", "-v"]
    assert "# MPI: MPICH (Hydra)" in comments[0]
    assert any(written in line for line in comments)
    assert comments[-2:] == ["#   node1:2", "#   node2:2"]
    # A dry run runs nothing (only --version) and leaves no file behind.
    assert not record.exists()
    assert not os.path.exists(written) and not os.path.exists(os.path.dirname(written))


def test_dry_run_openmpi(tmp_path, capsys):
    fake, _ = make_fake(tmp_path, OPENMPI5_VERSION, "mpirun")
    cmd, comments = dry_run(capsys, ["--mpiexec", fake, "-H", "node1:2,[fd00::2]:2", "-np", "6",
                                     "--oversubscribe", "python", "train.py"])
    assert cmd[:4] == [fake, "-np", "6", "--hostfile"]
    assert cmd[5:] == ["--oversubscribe", "python", "train.py"]
    assert "# MPI: Open MPI" in comments[0]
    assert comments[-2:] == ["#   node1 slots=2", "#   fd00::2 slots=2"]


def test_dry_run_local_without_hosts(tmp_path, capsys):
    fake, _ = make_fake(tmp_path, HYDRA_VERSION)
    cmd, comments = dry_run(capsys, ["--mpiexec", fake, "-np", "3", "python", "x.py"])
    assert cmd == [fake, "-n", "3", "python", "x.py"]
    assert len(comments) == 1


def test_double_dash_before_program(tmp_path, capsys):
    fake, _ = make_fake(tmp_path, HYDRA_VERSION)
    cmd, _ = dry_run(capsys, ["--mpiexec", fake, "-np", "1", "--", "python", "--version"])
    assert cmd == [fake, "-n", "1", "python", "--version"]


def test_hostile_program_arguments_survive_quoting(tmp_path, capsys):
    fake, _ = make_fake(tmp_path, HYDRA_VERSION)
    marker = tmp_path / "pwned"
    hostile = ["python", "-c", f"open('{marker}', 'w')", f"$(touch {marker})", f"; touch {marker}",
               "it's", 'a "b"', "`id`", "*", "", "new\nline", "--"]
    cmd, _ = dry_run(capsys, ["--mpiexec", fake, "-np", "1", "--env", f"X=$(touch {marker})",
                              *hostile])
    assert cmd[-len(hostile):] == hostile
    assert cmd[3:6] == ["-genv", "X", f"$(touch {marker})"]
    assert not marker.exists()


# --- the whole launcher, running the stand-in ---

def test_runs_with_the_argv_and_hostfile_shown(tmp_path, capsys, monkeypatch):
    fake, record = make_fake(tmp_path, HYDRA_VERSION)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("RINGREDUCE_ALGORITHM", "ring")
    argv = ["--mpiexec", fake, "-H", "node1:1,10.0.0.2:2", "python", f"$(touch {marker})"]
    shown, _ = dry_run(capsys, argv)
    assert main(argv) == 0
    got = json.loads(record.read_text())
    # Passed as one argv, no shell: the $(...) is an argument, never run.
    shown[4] = got["argv"][4]  # each run writes its own temporary hostfile
    assert got["argv"] == shown
    assert got["argv"][-1] == f"$(touch {marker})" and not marker.exists()
    assert got["hostfile"] == "node1:1\n10.0.0.2:2\n"
    assert not os.path.exists(got["argv"][4])


def test_exit_status_is_the_jobs(tmp_path, monkeypatch):
    fake, _ = make_fake(tmp_path, HYDRA_VERSION)
    monkeypatch.setenv("FAKE_EXIT", "7")
    assert main(["--mpiexec", fake, "-np", "1", "true"]) == 7


def test_sigterm_reaches_the_job(tmp_path):
    # SIGTERM sent to the launcher alone must end the job, not leave it running.
    ready, got = tmp_path / "ready", tmp_path / "got-term"
    fake = tmp_path / "mpiexec"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = --version ]; then echo 'HYDRA build details:'; exit 0; fi
        trap 'echo TERM > {got}; exit 143' TERM
        touch {ready}
        while :; do sleep 0.1; done
        """))
    fake.chmod(0o755)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO,
                                                                   os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "ringreduce.launch.run", "--mpiexec", str(fake),
                             "-np", "1", "true"], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, f"the launcher exited early ({proc.returncode})"
            assert time.monotonic() < deadline, "the stand-in mpiexec never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert got.read_text().strip() == "TERM"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- refusals: each an exit status of 2 and a message saying what was expected ---

def refuse(capsys, argv, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ringreduce-run: error: ") and fragment in err, err


def test_np_above_slots_is_refused(tmp_path, capsys):
    fake, record = make_fake(tmp_path, HYDRA_VERSION)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1:2\nnode2:2\n")
    refuse(capsys, ["--mpiexec", fake, "--hostfile", str(hostfile), "-np", "5", "p"],
           f"-np 5 is more than the 4 slots in hostfile {hostfile} (node1:2, node2:2); "
           "lower -np, add slots, or pass --oversubscribe")
    cmd, _ = dry_run(capsys, ["--mpiexec", fake, "--hostfile", str(hostfile), "-np", "5",
                              "--oversubscribe", "p"])
    assert cmd[:3] == [fake, "-n", "5"]
    assert not record.exists()


def test_np_below_slots_is_fine(tmp_path, capsys):
    fake, _ = make_fake(tmp_path, HYDRA_VERSION)
    cmd, _ = dry_run(capsys, ["--mpiexec", fake, "-H", "a:2,b:2", "-np", "3", "p"])
    assert cmd[:3] == [fake, "-n", "3"]


def test_bad_hostfile_is_refused_before_anything_runs(tmp_path, capsys):
    fake, record = make_fake(tmp_path, HYDRA_VERSION)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1:2\r\nnode2:2;reboot\r\n")
    refuse(capsys, ["--mpiexec", fake, "--hostfile", str(hostfile), "p"],
           f"{hostfile}:2: found ';'")
    assert not record.exists()


def test_hostile_host_list_is_refused(tmp_path, capsys):
    fake, _ = make_fake(tmp_path, HYDRA_VERSION)
    refuse(capsys, ["--mpiexec", fake, "-H", "a:1,-oProxyCommand=sh:1", "p"],
           "-H item 2: '-oProxyCommand=sh' starts with '-'")


def test_missing_hostfile(tmp_path, capsys):
    refuse(capsys, ["--hostfile", str(tmp_path / "absent"), "p"],
           f"cannot read hostfile '{tmp_path / 'absent'}': No such file or directory")


def test_ipv6_host_with_hydra_is_refused(tmp_path, capsys):
    fake, _ = make_fake(tmp_path, HYDRA_VERSION)
    refuse(capsys, ["--mpiexec", fake, "-H", "[fd00::1]:2", "p"],
           "Hydra cannot take the IPv6 address 'fd00::1'")


@pytest.mark.parametrize("argv,fragment", [
    (["-np", "2"], "no program given"),
    (["python"], "expected -np N, or hosts"),
    (["-np", "2", "--", "-x"], "unknown option '-x'"),
    (["-np", "2", "--mpiexec", "/nonexistent/mpiexec", "p"],
     "--mpiexec '/nonexistent/mpiexec' is not an executable"),
    (["-np", "2", "--launcher-exec", "/nonexistent/ssh", "p"],
     "--launcher-exec '/nonexistent/ssh' is not an executable"),
    (["-np", "2", "--env", "BROKEN", "p"], "--env expects NAME=VALUE"),
])
def test_usage_errors(tmp_path, capsys, argv, fragment):
    fake, _ = make_fake(tmp_path, HYDRA_VERSION)
    if "--mpiexec" not in argv:
        argv = ["--mpiexec", fake] + argv
    refuse(capsys, argv, fragment)


@pytest.mark.parametrize("argv", [["-np", "0", "p"], ["-np", "two", "p"], ["-np", "-1", "p"],
                                  ["-H", "a:1", "--hostfile", "h", "p"]])
def test_argparse_refusals(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


# --- the real thing ---

@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec on PATH")
@pytest.mark.skipif(any(k in os.environ for k in ("PMI_RANK", "PMI_FD", "OMPI_COMM_WORLD_RANK")),
                    reason="starts its own MPI job; run under plain pytest, not mpiexec")
def test_real_job_gets_forwarded_environment(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""\
        import os
        from mpi4py import MPI
        c = MPI.COMM_WORLD
        seen = c.gather((os.environ.get("RINGREDUCE_CYCLE_TIME_MS"), os.environ.get("EXTRA")))
        if c.rank == 0:
            print("SEEN", c.size, seen, flush=True)
        """))
    env = dict(os.environ, RINGREDUCE_CYCLE_TIME_MS="2.5",
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "ringreduce.launch.run", "-H", "localhost:2",
                           "--env", "EXTRA=a b;c", sys.executable, str(script)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SEEN 2 [('2.5', 'a b;c'), ('2.5', 'a b;c')]" in done.stdout
