"""A real multi-host run: two network namespaces stand in for two machines.

Each namespace has only a loopback and one end of a veth pair ("rrnet"), addressed 10.231.0.1
and 10.231.0.2 (the test's own /24; nothing else is ever contacted). `python -m ringreduce.launch.run`
runs inside the first namespace, like a launch from node 0, and starts 2 + 2 ranks from a
hostfile; Hydra reaches the second "host" through a stand-in for ssh that runs the proxy in
that host's namespace. The job checks `rr.allreduce`, every algorithm, against the native
`MPI_Allreduce` and a float64 numpy reference, and measures the bytes that crossed the veth
during each call: every byte a namespace needs from the other must arrive over the wire, so at
least the array's size must cross each time. That check is what makes this more than a
one-machine run with extra steps: by default MPICH's UCX netmod sees one machine and moves
everything through shared memory, whatever namespaces the ranks are in, so the job selects
the OFI netmod with libfabric's tcp provider on rrnet (ranks in one namespace still share
memory, as on a real node).

Needs root and iproute2 (`ip`); skips, saying why, where namespaces cannot be made. It runs
its own MPI job, so it skips when pytest itself runs under mpiexec.

    python -m pytest tests/jobs/test_multihost.py -v
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from _jobs import ROOT, run_job

ADDRESSES = ("10.231.0.1", "10.231.0.2")
PREFIX = 24
IFACE = "rrnet"
SLOTS = 2
# The job takes about 10 s here; the limits are for a hang, which must fail the test and not
# stall the suite. Hydra's own MPIEXEC_TIMEOUT comes first, so that mpiexec ends a hang itself
# and cleans up its ranks. It is needed: a rank that dies without MPI_Abort (a crash, or a
# failed MPI_Init) in a job of more than one host was seen to leave Hydra 5.0.2 waiting for
# the others forever, while on one host it ends the job at once.
JOB_TIMEOUT_S = 120
MPIEXEC_TIMEOUT_S = 90
IP_TIMEOUT_S = 20
LINK_UP_TIMEOUT_S = 10


def _ip(*args, check=True):
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if check and done.returncode != 0:
        raise RuntimeError(f"'ip {' '.join(args)}' failed ({done.returncode}): "
                           f"{done.stderr.strip()}")
    return done


def _kill_namespace_processes(ns):
    # Anything still running in the namespace was started by this test (the namespace is
    # named after this process); kill it by pid before the namespace goes.
    done = _ip("netns", "pids", ns, check=False)
    for pid in done.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _wait_until_up(names):
    # A veth end reports NO-CARRIER until its peer is up too, for up to a second here. Ranks
    # started in that window find no usable address on the link: libfabric's tcp provider then
    # fails MPI_Init ("ep_enable failed ... Bad file descriptor"), which was most runs.
    deadline = time.monotonic() + LINK_UP_TIMEOUT_S
    for ns in names:
        while True:
            state = json.loads(_ip("-j", "-n", ns, "link", "show", IFACE).stdout)[0]["operstate"]
            if state == "UP":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{IFACE} in namespace {ns} is still {state} after "
                                   f"{LINK_UP_TIMEOUT_S} s; expected UP")
            time.sleep(0.05)


@pytest.fixture
def namespaces():
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    if shutil.which("ip") is None:
        pytest.skip("needs the 'ip' command (apt-get install iproute2)")
    if any(k in os.environ for k in ("PMI_RANK", "PMI_FD", "OMPI_COMM_WORLD_RANK")):
        pytest.skip("launches its own MPI job; run it under plain pytest, not mpiexec")
    # Named after this process, so that two test runs on one machine never share one.
    names = [f"rr-h{i}-{os.getpid()}" for i in range(len(ADDRESSES))]
    created = []
    try:
        for ns in names:
            done = _ip("netns", "add", ns, check=False)
            if done.returncode != 0:
                pytest.skip(f"cannot create network namespace {ns}: {done.stderr.strip()}")
            created.append(ns)
        # Both ends are created inside their namespaces, so nothing appears, even briefly,
        # in the machine's own network.
        done = _ip("link", "add", IFACE, "netns", names[0], "type", "veth",
                   "peer", "name", IFACE, "netns", names[1], check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot create a veth pair between namespaces: {done.stderr.strip()}")
        for ns, address in zip(names, ADDRESSES):
            # No IPv6 link-local address: while "tentative" it cannot be bound, and the job
            # needs none (libfabric is pointed at the IPv4 address's interface).
            _ip("-n", ns, "link", "set", IFACE, "addrgenmode", "none")
            _ip("-n", ns, "addr", "add", f"{address}/{PREFIX}", "dev", IFACE)
            _ip("-n", ns, "link", "set", IFACE, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        _wait_until_up(names)
        yield names
    finally:
        for ns in created:
            _kill_namespace_processes(ns)
            _ip("netns", "delete", ns, check=False)


FAKE_SSH = """\
#!/bin/sh
# Stands in for ssh between the namespaces. Hydra calls it as `fake-ssh [-x] HOST COMMAND...`,
# COMMAND being meant for a remote shell, so like ssh it hands COMMAND to sh, here inside
# HOST's namespace.
[ "$1" = "-x" ] && shift
echo "$1" >> {log}
case "$1" in
{cases}
  *) echo "fake-ssh: no namespace for host '$1'" >&2; exit 255 ;;
esac
shift
exec ip netns exec "$ns" sh -c "$*"
"""

JOB = """\
import json, os, socket, sys
import numpy as np
from mpi4py import MPI
import ringreduce as rr

addresses, iface = sys.argv[1].split(","), sys.argv[2]
comm = MPI.COMM_WORLD


def my_host():
    # Only the namespace holding an address can bind to it.
    for i, address in enumerate(addresses):
        with socket.socket() as s:
            try:
                s.bind((address, 0))
                return i
            except OSError:
                pass
    return -1


def rx_bytes():
    # /proc/net/dev lists the interfaces of the reader's own namespace.
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, counters = line.partition(":")
            if name.strip() == iface:
                return int(counters.split()[0])
    raise RuntimeError(f"rank {comm.rank}: no interface {iface} in /proc/net/dev")


def native(x):
    y = np.empty_like(x)
    comm.Allreduce(x, y)
    return y


report = {"hosts": comm.gather(my_host()),
          "node_sizes": comm.gather(comm.Split_type(MPI.COMM_TYPE_SHARED).size),
          "marker": comm.gather(os.environ.get("RINGREDUCE_MULTIHOST_MARK")),
          "calls": []}
p = comm.size
# Odd lengths; integer values, so every summation order gives the same exact result.
for n, dtype in ((100_003, np.float64), (100_003, np.int32), (999, np.float32)):
    x = ((np.arange(n) * (comm.rank + 1)) % 1000).astype(dtype)
    want = sum(((np.arange(n) * (r + 1)) % 1000).astype(np.float64) for r in range(p))
    for name in ("native",) + tuple(rr.ALGORITHM_NAMES):
        before = rx_bytes()
        comm.Barrier()  # nobody sends until every rank has read its counter
        y = native(x) if name == "native" else rr.allreduce(x, algorithm=name)
        comm.Barrier()  # every rank has all it needed before anyone reads again
        crossed = rx_bytes() - before
        ok = bool(np.array_equal(y.astype(np.float64), want))
        agree = comm.gather(y.tobytes() == native(x).tobytes())
        calls = comm.gather({"algorithm": name, "dtype": str(x.dtype), "n": n,
                             "nbytes": x.nbytes, "crossed": crossed, "correct": ok})
        if comm.rank == 0:
            for r, c in enumerate(calls):
                c["rank"], c["same_as_native"] = r, agree[r]
            report["calls"] += calls
if comm.rank == 0:
    print("MULTIHOST-RESULT " + json.dumps(report), flush=True)
"""


def test_allreduce_across_two_namespaces(namespaces, tmp_path):
    log = tmp_path / "fake-ssh.log"
    cases = "\n".join(f"  {address}) ns={ns} ;;" for address, ns in zip(ADDRESSES, namespaces))
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text(FAKE_SSH.format(log=log, cases=cases))
    fake_ssh.chmod(0o755)
    job = tmp_path / "job.py"
    job.write_text(JOB)
    # Open MPI's format on purpose: the launcher must rewrite it for Hydra.
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# two 'hosts': one network namespace each\n" + "".join(
        f"{address} slots={SLOTS}\n" for address in ADDRESSES))

    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGREDUCE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    env["RINGREDUCE_MULTIHOST_MARK"] = "forwarded"
    env["MPIEXEC_TIMEOUT"] = str(MPIEXEC_TIMEOUT_S)
    cmd = ["ip", "netns", "exec", namespaces[0],
           sys.executable, "-m", "ringreduce.launch.run", "--hostfile", str(hostfile),
           "--launcher-exec", str(fake_ssh),
           # Not UCX: it would find both namespaces on one machine and use shared memory.
           "--env", "MPIR_CVAR_CH4_NETMOD=ofi", "--env", "FI_PROVIDER=tcp",
           "--env", f"FI_TCP_IFACE={IFACE}",
           sys.executable, "-m", "mpi4py", str(job), ",".join(ADDRESSES), IFACE]
    started = time.monotonic()
    rc, out, err = run_job(cmd, env=env, cwd=ROOT, timeout=JOB_TIMEOUT_S)
    output = out + err
    elapsed = time.monotonic() - started
    assert rc == 0, f"the job failed ({rc}) after {elapsed:.1f} s:\n{output[-5000:]}"
    lines = [line for line in output.splitlines() if line.startswith("MULTIHOST-RESULT ")]
    assert len(lines) == 1, f"expected one result line from rank 0, got:\n{output[-5000:]}"
    report = json.loads(lines[0].split(" ", 1)[1])

    # The second namespace was reached through the stand-in for ssh, not forked locally.
    assert ADDRESSES[1] in log.read_text().split()
    # Hostfile order: ranks 0-1 in the first namespace, 2-3 in the second.
    assert report["hosts"] == [i for i in range(len(ADDRESSES)) for _ in range(SLOTS)]
    # MPI itself sees two nodes of two ranks.
    assert report["node_sizes"] == [SLOTS] * (SLOTS * len(ADDRESSES))
    assert report["marker"] == ["forwarded"] * (SLOTS * len(ADDRESSES))

    calls = report["calls"]
    assert {c["algorithm"] for c in calls} >= {"native", "ring", "auto"}
    wrong = [c for c in calls if not (c["correct"] and c["same_as_native"])]
    assert not wrong, f"wrong results: {wrong}"
    # Every namespace needs the other's whole contribution, so at least the array's size
    # must have come in over its veth during each call.
    short = [c for c in calls if c["crossed"] < c["nbytes"]]
    assert not short, f"too few bytes crossed the veth (shared memory used?): {short}"
