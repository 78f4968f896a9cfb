"""ringreduce-run without running a job: flavour detection, the argv built for Hydra and Open
MPI, dry-run output, slot checks, environment forwarding, and hostile input.

The launcher runs against a stand-in mpiexec (tests/_fake_mpiexec.py) that answers --version
like the real one. tests/jobs/test_launcher_jobs.py runs the stand-in and a real job.
"""
import os

import pytest

from _fake_mpiexec import HYDRA_VERSION, OPENMPI4_VERSION, OPENMPI5_VERSION, clean_env, \
    dry_run, make_fake  # noqa: F401 - clean_env: an autouse fixture
from ringreduce.launch import run
from ringreduce.launch.run import HYDRA, OPENMPI, LaunchError, btl_chosen, build_command, \
    detect_flavour, forwarded_env, main


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
    assert cmd == ["mpirun", "-np", "2", "--mca", "btl", "^ofi", "--mca", "plm_ssh_agent",
                   "/x/ssh", "p"]


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
    assert cmd == [fake, "-np", "2", "--mca", "btl", "^ofi", "--mca", "plm_ssh_agent",
                   str(agent), "p"]


def test_local_run_has_no_hostfile():
    assert build_command(HYDRA, "mpiexec", 2, ["p"]) == ["mpiexec", "-n", "2", "p"]
    # Open MPI on this machine only: without its libfabric layer (a second of MPI_Init)
    assert build_command(OPENMPI, "mpirun", 2, ["p"]) == ["mpirun", "-np", "2", "--mca", "btl",
                                                           "^ofi", "p"]


def test_dry_run_leaves_out_ofi_unless_the_environment_chose(tmp_path, capsys, monkeypatch):
    fake, _ = make_fake(tmp_path, OPENMPI5_VERSION, "mpirun")
    cmd, _ = dry_run(capsys, ["--mpiexec", fake, "-np", "2", "p"])
    assert cmd == [fake, "-np", "2", "--mca", "btl", "^ofi", "p"]
    monkeypatch.setenv("OMPI_MCA_btl", "self,tcp")
    cmd, _ = dry_run(capsys, ["--mpiexec", fake, "-np", "2", "p"])
    assert cmd == [fake, "-np", "2", "p"]


def test_a_btl_line_in_an_mca_parameter_file_counts_as_chosen(tmp_path):
    home, prefix = tmp_path / "home", tmp_path / "ompi"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "etc").mkdir()
    mpirun = prefix / "bin" / "mpirun"
    mpirun.write_text("")
    env = {"HOME": str(home)}
    assert not btl_chosen(env, str(mpirun))
    assert btl_chosen({**env, "OMPI_MCA_btl": "self,sm"}, str(mpirun))
    (home / ".openmpi").mkdir(parents=True)
    (home / ".openmpi" / "mca-params.conf").write_text("# btl = self\npml = ob1\n")
    assert not btl_chosen(env, str(mpirun))  # a comment and another parameter do not count
    (home / ".openmpi" / "mca-params.conf").write_text("pml = ob1\n btl = self,tcp\n")
    assert btl_chosen(env, str(mpirun))
    (home / ".openmpi" / "mca-params.conf").unlink()
    (prefix / "etc" / "openmpi-mca-params.conf").write_text("btl=^openib\n")
    assert btl_chosen(env, str(mpirun))


def test_the_users_own_btl_choice_stands():
    """OMPI_MCA_btl in the environment, or forwarded with --env: no --mca btl of ours (it
    would override theirs); with a hostfile (other machines, a fabric maybe) none either."""
    assert build_command(OPENMPI, "mpirun", 2, ["p"], btl_given=True) == ["mpirun", "-np", "2",
                                                                           "p"]
    assert build_command(OPENMPI, "mpirun", 2, ["p"], env={"OMPI_MCA_btl": "self,tcp"}) == \
        ["mpirun", "-np", "2", "-x", "OMPI_MCA_btl=self,tcp", "p"]
    assert build_command(OPENMPI, "mpirun", 2, ["p"], "/tmp/h") == \
        ["mpirun", "-np", "2", "--hostfile", "/tmp/h", "p"]


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
