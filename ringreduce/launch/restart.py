"""Restarting a failed job (`ringreduce-run --max-restarts K`), for MPIs without ULFM.

MPICH's default device cannot shrink a communicator, so when a rank dies the job ends (the
library makes sure of that rather than letting the others hang) and the answer is torchrun's: start
the whole job again and let the program go on from its latest checkpoint
(`examples/train_mlp.py --resume auto`). Each start gets RINGREDUCE_RESTART_COUNT (0, 1, ...)
in its environment, like torchrun's TORCHELASTIC_RESTART_COUNT, so a program can tell.

Before a restart, the hosts are looked at again, so that a host that went down does not fail
every later attempt too:

1. the host list is read again: a --hostfile is re-read, so an operator or a health-check
   script may take a host out (or put one back) while the job waits; -H and a scheduler's
   allocation are fixed;
2. every host but this one is checked: `CHECK HOST true` must succeed within
   PROBE_TIMEOUT_S, CHECK being --host-check if given, else --launcher-exec (what mpiexec
   itself starts processes with), else `srun --nodes=1 --ntasks=1 --nodelist` inside a
   Slurm allocation (where mpiexec starts its helpers with srun), else ssh in batch mode.
   A host that fails is left out of this attempt, and checked again at the next one.

The restart then runs on the slots left: -np if they hold it (or with --oversubscribe),
otherwise as many ranks as there are slots, but never fewer than --min-np (default: the first
start's rank count, so without --min-np a job never shrinks). No MPI here.
"""
import concurrent.futures
import os
import shlex
import signal
import socket
import subprocess
import time

__all__ = ["PROBE_TIMEOUT_S", "RestartError", "is_local", "check_restart_options",
           "check_command", "probe_hosts", "relaunch_size", "run_with_restarts"]

# ssh to a live host on a LAN answers in well under a second; a host that is down usually does
# not answer at all, so this is how long a restart may wait to find that out.
PROBE_TIMEOUT_S = 15


class RestartError(Exception):
    """A restart that cannot go ahead (too few slots left, a hostfile that no longer reads)."""


def is_local(name):
    """Whether `name` is the machine the launcher runs on, which is never probed: 'localhost',
    the loopback addresses 127.0.0.1 and ::1, or this host's name (short or full). Decided
    from the name alone, with no DNS lookup that could hang."""
    here = socket.gethostname().lower()
    return name.lower() in {"localhost", "127.0.0.1", "::1", here, here.split(".")[0],
                            socket.getfqdn().lower()}


def check_restart_options(max_restarts, min_np, host_check, np, have_hosts):
    """The --min-np to use (default: `np`, the first start's rank count); RestartError for
    restart options that make no sense together."""
    if (min_np is not None or host_check is not None) and not max_restarts:
        raise RestartError("--min-np and --host-check apply to restarts; expected "
                           "--max-restarts K (K >= 1) with them")
    if min_np is not None and min_np > np:
        raise RestartError(f"--min-np {min_np} is more than the {np} rank(s) the job starts "
                           "with")
    if min_np is not None and not have_hosts:
        raise RestartError("--min-np needs hosts that can drop out (-H, --hostfile or a "
                           "scheduler's allocation); this job runs on this machine only")
    return np if min_np is None else min_np


def check_command(host_check=None, launcher_exec=None, slurm=False):
    """The argv prefix that checks a host (the host name and 'true' follow it)."""
    if host_check is not None:
        argv = shlex.split(host_check)
        if not argv:
            raise RestartError("--host-check expects a command such as 'ssh -o "
                               "BatchMode=yes', got an empty string")
        return argv
    if launcher_exec is not None:
        return [launcher_exec]
    if slurm:
        return ["srun", "--nodes=1", "--ntasks=1", "--nodelist"]
    # BatchMode: a probe must fail, not wait for a password nobody will type.
    return ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={PROBE_TIMEOUT_S}"]


def _probe(argv, timeout):
    """None if `argv` succeeded within `timeout` s, else why not."""
    try:
        # A session of its own, so that a check that hangs is ended with everything it
        # started (a wrapper script's ssh would otherwise keep the pipes open).
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace",
                                start_new_session=True)
    except OSError as e:
        return f"cannot run '{shlex.join(argv)}': {e.strerror}"
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"'{shlex.join(argv)}' did not answer in {timeout} s"
    if proc.returncode == 0:
        return None
    said = (err.strip() or out.strip()).splitlines()
    return (f"'{shlex.join(argv)}' exited with status {proc.returncode}"
            + (f": {said[-1]}" if said else ""))


def probe_hosts(hosts, check, timeout=None):
    """(hosts that answered, [(host, why not), ...]) for `check` + [HOST, 'true'], all hosts
    at once, each within `timeout` s (default PROBE_TIMEOUT_S); local hosts (is_local) answer
    without being asked. Order is kept."""
    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    remote = [h for h in hosts if not is_local(h.name)]
    verdicts = {}
    if remote:
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(remote))) as pool:
            futures = {h.name: pool.submit(_probe, [*check, h.name, "true"], timeout)
                       for h in remote}
            verdicts = {name: f.result() for name, f in futures.items()}
    alive = [h for h in hosts if verdicts.get(h.name) is None]
    gone = [(h, verdicts[h.name]) for h in hosts if verdicts.get(h.name) is not None]
    return alive, gone


def relaunch_size(hosts, np, min_np, oversubscribe):
    """The rank count of a restart on `hosts`: `np` (None: every slot) if the slots hold it
    or `oversubscribe`, else the slots there are; RestartError below `min_np`."""
    if not hosts:
        raise RestartError("no host is left to restart on")
    slots = sum(h.slots for h in hosts)
    size = slots if np is None else (np if oversubscribe else min(np, slots))
    if size < min_np:
        listing = ", ".join(f"{h.name}:{h.slots}" for h in hosts)
        raise RestartError(f"only {slots} slot(s) are left ({listing}), and the job needs at "
                           f"least {min_np} rank(s) (--min-np {min_np})")
    return size


def run_with_restarts(start, hosts, np, *, max_restarts, min_np, np_given, oversubscribe,
                      reload_hosts, check, log):
    """Run the job with `start(hosts, np, restart_count) -> (status, signalled)` until it
    succeeds, is stopped by a signal, or has failed `max_restarts` + 1 times; return the last
    exit status. `hosts` None means this machine only (nothing to check). `reload_hosts()`
    gives the host list afresh; `np_given` is the user's -np or None; `log` prints a line."""
    attempt = 0
    while True:
        began = time.monotonic()
        status, signalled = start(hosts, np, attempt)
        took = time.monotonic() - began
        if status == 0 or signalled:
            return status
        if attempt == max_restarts:
            if max_restarts:
                log(f"the job failed (exit status {status}) after {took:.1f} s; no restarts "
                    f"left (--max-restarts {max_restarts}), so ringreduce-run exits with "
                    f"status {status}")
            return status
        attempt += 1
        log(f"the job failed (exit status {status}) after {took:.1f} s; restart {attempt} of "
            f"{max_restarts}")
        if hosts is not None:
            try:
                hosts, np = _replan(hosts, np_given, min_np, oversubscribe, reload_hosts,
                                    check, log)
            except RestartError as e:
                log(f"cannot restart: {e}; ringreduce-run exits with status {status}")
                return status
            where = ", ".join(f"{h.name}:{h.slots}" for h in hosts)
            log(f"restart {attempt}: {np} rank(s) on {where}")
        else:
            log(f"restart {attempt}: {np} rank(s) on this machine")


def _replan(hosts, np_given, min_np, oversubscribe, reload_hosts, check, log):
    """(hosts, np) for the next start: the host list read again, the hosts that fail the
    check left out, the rank count that fits."""
    before = {h.name for h in hosts}
    hosts = reload_hosts()
    for name in sorted(before - {h.name for h in hosts}):
        log(f"host {name} is no longer in the host list")
    hosts, gone = probe_hosts(hosts, check)
    for host, why in gone:
        log(f"leaving out host {host.name} ({host.slots} slot(s)) this time: {why}")
    return hosts, relaunch_size(hosts, np_given, min_np, oversubscribe)
