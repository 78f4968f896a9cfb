"""Scheduler allocations (ringreduce/launch/schedulers.py): Slurm's compressed host lists and
task counts, PBS's node file, LSF's host list, each parsed alone and then through
`ringreduce-run --dry-run` with the variables set here (no scheduler needed), against the
stand-in mpiexec."""
import pytest

from _fake_mpiexec import (HYDRA_VERSION, OPENMPI5_VERSION, clean_env,  # noqa: F401 (fixture)
                           dry_run, make_fake)
from ringreduce.launch.hostfile import Host, HostfileError
from ringreduce.launch.run import main
from ringreduce.launch.schedulers import (allocation_hosts, expand_nodelist,
                                          expand_tasks_per_node, lsf_hosts, pbs_hosts,
                                          slurm_hosts)

SCHEDULER_VARS = ("SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_TASKS_PER_NODE", "PBS_NODEFILE",
                  "LSB_MCPU_HOSTS")


@pytest.fixture(autouse=True)
def no_allocation(monkeypatch):
    # Run inside a real allocation, the caller's variables would mix with the test's.
    for name in SCHEDULER_VARS:
        monkeypatch.delenv(name, raising=False)


# --- Slurm ---

@pytest.mark.parametrize("text,names", [
    ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
    ("n1", ["n1"]),
    ("n[8-11]", ["n8", "n9", "n10", "n11"]),          # no padding: widths as they come
    ("n[08-10]", ["n08", "n09", "n10"]),              # the first number's width
    ("n[098-100]", ["n098", "n099", "n100"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),  # every combination, first outer
    ("a[1,3],b,c[5-5]", ["a1", "a3", "b", "c5"]),
    ("node[1-2].example.org", ["node1.example.org", "node2.example.org"]),
    (" 10.0.0.[1-2] ", ["10.0.0.1", "10.0.0.2"]),
])
def test_nodelist_expands(text, names):
    assert expand_nodelist(text) == names


@pytest.mark.parametrize("text,counts", [
    ("2(x3),1", [2, 2, 2, 1]), ("4", [4]), ("1,2,3", [1, 2, 3]), ("16(x2)", [16, 16]),
])
def test_tasks_per_node_expand(text, counts):
    assert expand_tasks_per_node(text) == counts


def test_slurm_hosts_pair_nodes_with_their_counts():
    env = {"SLURM_JOB_NODELIST": "node[01-03,07],gpu5", "SLURM_TASKS_PER_NODE": "2(x3),1,4"}
    assert slurm_hosts(env) == [Host("node01", 2), Host("node02", 2), Host("node03", 2),
                                Host("node07", 1), Host("gpu5", 4)]
    # The older name, still set by Slurm.
    assert slurm_hosts({"SLURM_NODELIST": "a,b", "SLURM_TASKS_PER_NODE": "1(x2)"}) == \
        [Host("a", 1), Host("b", 1)]


@pytest.mark.parametrize("env,message", [
    ({"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_TASKS_PER_NODE": "2(x2)"},
     "SLURM_JOB_NODELIST: 'n[1-3]' names 3 node(s) but SLURM_TASKS_PER_NODE='2(x2)' gives "
     "counts for 2; expected one count per node"),
    ({"SLURM_JOB_NODELIST": "n[1-3]"}, "SLURM_JOB_NODELIST is set but SLURM_TASKS_PER_NODE is "
                                       "not"),
    ({"SLURM_JOB_NODELIST": "n[1-3", "SLURM_TASKS_PER_NODE": "1"},
     "SLURM_JOB_NODELIST: a '[' that is never closed"),
    ({"SLURM_JOB_NODELIST": "n1", "SLURM_TASKS_PER_NODE": "one"},
     "SLURM_TASKS_PER_NODE: expected counts such as"),
    ({"SLURM_JOB_NODELIST": "n_[1-2]", "SLURM_TASKS_PER_NODE": "1(x2)"},
     "SLURM_JOB_NODELIST node 1: 'n_1' is not a valid host name"),
    ({"SLURM_JOB_NODELIST": "n$(x)", "SLURM_TASKS_PER_NODE": "1"}, "'n$(x)' is not a valid"),
    ({"SLURM_JOB_NODELIST": "n1,n[1-1]", "SLURM_TASKS_PER_NODE": "1(x2)"},
     "SLURM_JOB_NODELIST node 2: host 'n1' is already listed as node 1"),
])
def test_slurm_errors_name_the_variable(env, message):
    with pytest.raises(HostfileError) as e:
        slurm_hosts(env)
    assert message in str(e.value)


# --- PBS and LSF ---

def test_pbs_node_file_counts_lines_per_host(tmp_path):
    f = tmp_path / "nodes"
    f.write_bytes(b"cn2\ncn2\ncn2\n\ncn1\r\ncn1\ncn3\ncn2\n")
    # First-line order (the mother superior first), every line a slot, wherever it is.
    assert pbs_hosts(str(f)) == [Host("cn2", 4), Host("cn1", 2), Host("cn3", 1)]


@pytest.mark.parametrize("data,message", [
    (b"cn1\ncn 2\n", ":2: 'cn 2' is not a valid host name"),
    (b"cn1\n-oProxyCommand=x\n", ":2: '-oProxyCommand=x' starts with '-'"),
    (b"\n\n", ": no hosts: expected one host name per line"),
    (b"cn1\n\xff\n", ":2: not valid UTF-8"),
])
def test_pbs_errors_give_file_and_line(tmp_path, data, message):
    f = tmp_path / "nodes"
    f.write_bytes(data)
    with pytest.raises(HostfileError) as e:
        pbs_hosts(str(f))
    assert str(e.value).startswith(str(f)) and message in str(e.value)


def test_lsf_pairs():
    assert lsf_hosts("host1 4 host2 4") == [Host("host1", 4), Host("host2", 4)]
    assert lsf_hosts("  a 1\n b 16 ") == [Host("a", 1), Host("b", 16)]


# Slurm's two variables and LSF's, each value alone: the message says what was expected.
@pytest.mark.parametrize("parse,text,message", [
    (expand_nodelist, "", "the host list is empty"),
    (expand_nodelist, "node[1-3", "a '[' that is never closed in 'node[1-3'"),
    (expand_nodelist, "node1-3]", "a ']' with no '[' before it at character 8"),
    (expand_nodelist, "n[[1]]", "a '[' inside brackets at character 3"),
    (expand_nodelist, "n[3-1]", "the range '3-1' in 'n[3-1]' runs backwards"),
    (expand_nodelist, "n[a-b]", "expected numbers or ranges like '01-03' inside the brackets "
                                "of 'n[a-b]', got 'a-b'"),
    (expand_nodelist, "n[]", "got ''"),
    (expand_nodelist, "n[1-3],,m", "an empty item at character 8 of 'n[1-3],,m'"),
    (expand_nodelist, "n[0-99999999]", "names more than"),
    (expand_tasks_per_node, "2(3)", "expected counts such as '2(x3),1'"),
    (expand_tasks_per_node, "", "got ''"),
    (expand_tasks_per_node, "x", "got 'x'"),
    (expand_tasks_per_node, "0", "the count in '0' must be at least 1"),
    (expand_tasks_per_node, "2(x0)", "the repeat in '2(x0)' must be"),
    (expand_tasks_per_node, "2,,1", "got ''"),
    (lsf_hosts, "host1 4 host2", "expected pairs of host and slots such as 'host1 4 host2 4', "
                                 "got 3 word"),
    (lsf_hosts, "", "got 0 word(s)"),
    (lsf_hosts, "host1 4 host2 four", "LSB_MCPU_HOSTS pair 2: the slots of 'host2' must be a "
                                      "whole number"),
    (lsf_hosts, "host1 4 host1 2", "LSB_MCPU_HOSTS pair 2: host 'host1' is already listed as "
                                   "pair 1"),
    (lsf_hosts, "host;1 4", "LSB_MCPU_HOSTS pair 1: 'host;1' is not a valid host name"),
])
def test_errors_say_what_was_expected(parse, text, message):
    with pytest.raises(ValueError) as e:  # HostfileError is one
        parse(text)
    assert message in str(e.value)


def test_no_allocation_and_two_at_once():
    assert allocation_hosts({"HOME": "/root"}) is None
    with pytest.raises(HostfileError) as e:
        allocation_hosts({"SLURM_JOB_NODELIST": "a", "SLURM_TASKS_PER_NODE": "1",
                          "LSB_MCPU_HOSTS": "b 1"})
    assert "found the variables of Slurm (SLURM_JOB_NODELIST) and LSF (LSB_MCPU_HOSTS)" \
        in str(e.value) and "Pass -H or --hostfile" in str(e.value)


# --- through the launcher's dry run ---

def hostfile_lines(comments):
    i = next(i for i, c in enumerate(comments) if c.startswith("# hostfile"))
    return comments[i], [c[len("#   "):] for c in comments[i + 1:] if c.startswith("#   ")]


def test_dry_run_inside_slurm(tmp_path, capsys, monkeypatch):
    fake, _ = make_fake(tmp_path, HYDRA_VERSION)
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[01-03,07],gpu5")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "2(x3),1,4")
    cmd, comments = dry_run(capsys, ["--mpiexec", fake, "python", "train.py"])
    header, lines = hostfile_lines(comments)
    assert "written from the Slurm allocation (SLURM_JOB_NODELIST=node[01-03,07],gpu5, " \
           "SLURM_TASKS_PER_NODE=2(x3),1,4)" in header
    # Rank 0 on the first host: Hydra fills the hostfile's lines in order.
    assert lines == ["node01:2", "node02:2", "node03:2", "node07:1", "gpu5:4"]
    assert cmd[:3] == [fake, "-n", "11"] and cmd[-2:] == ["python", "train.py"]


def test_dry_run_inside_pbs_with_open_mpi(tmp_path, capsys, monkeypatch):
    fake, _ = make_fake(tmp_path, OPENMPI5_VERSION, name="mpirun")
    nodes = tmp_path / "aggregate"
    nodes.write_text("cn7\ncn7\ncn3\ncn3\n")
    monkeypatch.setenv("PBS_NODEFILE", str(nodes))
    cmd, comments = dry_run(capsys, ["--mpiexec", fake, "-np", "3", "python", "train.py"])
    header, lines = hostfile_lines(comments)
    assert f"written from the PBS allocation (PBS_NODEFILE={nodes})" in header
    assert lines == ["cn7 slots=2", "cn3 slots=2"]
    assert cmd[:3] == [fake, "-np", "3"]


def test_dry_run_inside_lsf(tmp_path, capsys, monkeypatch):
    fake, _ = make_fake(tmp_path, HYDRA_VERSION)
    monkeypatch.setenv("LSB_MCPU_HOSTS", "launch1 4 compute2 4")
    cmd, comments = dry_run(capsys, ["--mpiexec", fake, "python", "train.py"])
    assert hostfile_lines(comments)[1] == ["launch1:4", "compute2:4"]
    assert cmd[:3] == [fake, "-n", "8"]


def test_a_hostfile_wins_over_the_allocation(tmp_path, capsys, monkeypatch):
    fake, _ = make_fake(tmp_path, HYDRA_VERSION)
    monkeypatch.setenv("LSB_MCPU_HOSTS", "launch1 4 compute2 4")
    cmd, comments = dry_run(capsys, ["--mpiexec", fake, "-H", "mine:1", "python", "train.py"])
    assert hostfile_lines(comments)[1] == ["mine:1"] and cmd[2] == "1"


@pytest.mark.parametrize("env,argv,message", [
    ({"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_TASKS_PER_NODE": "1"}, [],
     "SLURM_JOB_NODELIST: 'n[1-2]' names 2 node(s)"),
    ({"LSB_MCPU_HOSTS": "a 2 b 2"}, ["-np", "5"],
     "-np 5 is more than the 4 slots in the LSF allocation (LSB_MCPU_HOSTS=a 2 b 2) (a:2, b:2)"),
    ({"PBS_NODEFILE": "/nonexistent/nodes"}, [],
     "cannot read PBS_NODEFILE '/nonexistent/nodes': No such file or directory"),
])
def test_a_bad_allocation_stops_the_launch(tmp_path, capsys, monkeypatch, env, argv, message):
    fake, record = make_fake(tmp_path, HYDRA_VERSION)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["--dry-run", "--mpiexec", fake, *argv, "python", "train.py"]) == 2
    assert message in capsys.readouterr().err
    assert not record.exists()
