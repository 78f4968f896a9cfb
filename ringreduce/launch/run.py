"""ringreduce-run: start an MPI job on the hosts of a hostfile, with whichever MPI is installed.

    ringreduce-run -np 4 python examples/train.py                  # this machine only
    ringreduce-run --hostfile hostfiles/example-mpich python train.py --epochs 3
    ringreduce-run -H node1:2,node2:2 --env RINGREDUCE_ALGORITHM=ring python train.py
    ringreduce-run --dry-run -H node1:2,node2:2 python train.py    # print, run nothing
    ringreduce-run --max-restarts 3 --min-np 6 --hostfile hosts python train.py --resume auto
    python -m ringreduce.run ...                                   # the same

It finds out whether `mpiexec` is MPICH's Hydra or Open MPI's mpirun, rewrites the hosts into
a temporary hostfile in that launcher's own format, and runs it with that launcher's options:

    Hydra:    mpiexec -n N -f HOSTFILE [-launcher ssh -launcher-exec CMD] -genv NAME VALUE ... PROG
    Open MPI: mpirun -np N --hostfile HOSTFILE [--oversubscribe] [--mca plm_rsh_agent CMD]
                     -x NAME=VALUE ... PROG     (plm_ssh_agent from Open MPI 5 on)

Every RINGREDUCE_* variable of the caller's environment is forwarded to all ranks, plus each
--env NAME=VALUE. The command is an argv list run without a shell, and host names were checked
by ringreduce.hostfile (no shell syntax, no leading '-') before they get here, because mpiexec
passes them on to ssh, which does go through a remote shell.

Without -H or --hostfile, a Slurm, PBS or LSF allocation gives the hosts (launch.schedulers);
--max-restarts starts a failed job again on the hosts still reachable (launch.restart).
"""
import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile

from .commands import (HYDRA, OPENMPI, LaunchError, btl_chosen,  # noqa: F401 - re-exported
                       build_command, forwarded_env)
from .hostfile import HostfileError, format_hostfile, parse_host_list, parse_hostfile
from .restart import RestartError, check_command, check_restart_options, run_with_restarts
from .schedulers import allocation_hosts

_FLAVOUR_NAMES = {HYDRA: "MPICH (Hydra)", OPENMPI: "Open MPI"}

# `mpiexec --version` answers at once; a launcher that has not answered in this long is stuck
# (say, waiting on a dead network file system), and waiting longer would only hide that.
VERSION_TIMEOUT_S = 30

def detect_flavour(version_output, library_version=""):
    """"hydra", "openmpi" or None, from `mpiexec --version` output or else from the MPI
    library's version string (mpi4py.MPI.Get_library_version())."""
    if "HYDRA build details" in version_output:
        return HYDRA
    if "(Open MPI)" in version_output or "OpenRTE" in version_output:
        return OPENMPI
    if "MPICH" in library_version:
        return HYDRA
    if "Open MPI" in library_version:
        return OPENMPI
    return None


def _run_quietly(argv):
    """stdout + stderr of `argv`, or a LaunchError if it cannot run or does not finish."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=VERSION_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"'{shlex.join(argv)}' did not finish in {VERSION_TIMEOUT_S} s") \
            from None
    except OSError as e:
        raise LaunchError(f"cannot run '{shlex.join(argv)}': {e}") from None
    return done.stdout + done.stderr


def openmpi_major(version_output):
    """Open MPI's major version from `mpirun --version` output, or None."""
    m = re.search(r"\(Open MPI\) (\d+)\.", version_output)
    return int(m.group(1)) if m else None


def query_flavour(mpiexec):
    """(flavour, how it was found, the --version output): ask `mpiexec --version` which MPI it is; if that is
    unclear, ask the MPI library that mpi4py loads. Raises LaunchError if neither says MPICH
    or Open MPI."""
    output = _run_quietly([mpiexec, "--version"])
    flavour = detect_flavour(output)
    if flavour is not None:
        return flavour, f"{mpiexec} --version", output
    # A subprocess, so that loading the MPI library leaves this process untouched;
    # Get_library_version may be called before MPI_Init, which this never calls.
    probe = ("import mpi4py; mpi4py.rc.initialize = mpi4py.rc.finalize = False; "
             "from mpi4py import MPI; print(MPI.Get_library_version())")
    library = _run_quietly([sys.executable, "-c", probe])
    flavour = detect_flavour("", library)
    if flavour is not None:
        return flavour, "the MPI library mpi4py loads", output
    first = output.strip().splitlines()[0] if output.strip() else "(no output)"
    lib_first = library.strip().splitlines()[0] if library.strip() else "(no output)"
    raise LaunchError(f"cannot tell which MPI {mpiexec} belongs to: expected '{mpiexec} "
                      f"--version' to print 'HYDRA build details' (MPICH) or "
                      f"'(Open MPI)', got {first!r}; mpi4py's library says {lib_first!r}")


def _whole(text, minimum):
    if not re.fullmatch(r"[0-9]+", text, re.ASCII) or int(text) < minimum:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least {minimum}, got "
                                         f"{text!r}")
    return int(text)


def _positive_int(text):
    return _whole(text, 1)


def _count(text):
    return _whole(text, 0)


def _parser():
    p = argparse.ArgumentParser(
        prog="ringreduce-run", allow_abbrev=False,
        description="Start an MPI job with MPICH's mpiexec (Hydra) or Open MPI's mpirun, "
                    "from a hostfile in either format, forwarding every RINGREDUCE_* "
                    "environment variable to all ranks.",
        epilog="Hostfile lines are 'host:slots' or 'host slots=N'; see hostfiles/ and "
               "docs/cluster.md.")
    p.add_argument("-np", "-n", dest="np", type=_positive_int, metavar="N",
                   help="number of processes (default: the total slots of the hosts)")
    hosts = p.add_mutually_exclusive_group()
    hosts.add_argument("-H", "--hosts", dest="host_list", metavar="HOST:SLOTS,...",
                       help="hosts and their slots, e.g. node1:2,node2:2")
    hosts.add_argument("--hostfile", metavar="FILE", help="a hostfile in either format")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="set NAME=VALUE on every rank (repeatable)")
    p.add_argument("--oversubscribe", action="store_true",
                   help="allow more processes than slots")
    p.add_argument("--mpiexec", metavar="PATH",
                   help="the launcher to use (default: mpiexec, else mpirun, on PATH)")
    p.add_argument("--launcher-exec", metavar="CMD",
                   help="run CMD instead of ssh to start processes on other hosts; it is "
                        "called as ssh would be (Hydra: -launcher-exec, Open MPI: "
                        "plm_rsh_agent or plm_ssh_agent)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the command and the hostfile it would use, run nothing")
    r = p.add_argument_group("restarts (docs/cluster.md, 'When a rank dies')")
    r.add_argument("--max-restarts", type=_count, metavar="K",
                   help="start a failed job again, up to K times (each start gets "
                        "RINGREDUCE_RESTART_COUNT=0, 1, ...)")
    r.add_argument("--min-np", type=_positive_int, metavar="N",
                   help="restart on fewer ranks, down to N, when hosts fail the check "
                        "(default: the first start's rank count)")
    r.add_argument("--host-check", metavar="CMD",
                   help="before a restart, a host is left out unless 'CMD HOST true' succeeds "
                        "(default: --launcher-exec, else srun inside Slurm, else ssh)")
    p.add_argument("program", nargs=argparse.REMAINDER,
                   help="the program and its arguments")
    return p


def _find_executable(name, what):
    found = shutil.which(name)
    if found is None:
        raise LaunchError(f"{what} {name!r} is not an executable file nor found on PATH")
    # Absolute, since mpiexec may run it from another directory.
    return os.path.abspath(found)


def _run(cmd):
    """Run the launcher `cmd`, passing on signals meant for the job; return its exit status
    and whether a signal was passed on (a job stopped on purpose is not restarted).

    Ctrl-C reaches mpiexec directly (it is in our process group); SIGTERM or SIGHUP sent to
    this process alone would otherwise leave mpiexec and its ranks running with no one
    waiting for them, so they are forwarded. Passing on SIGINT too costs nothing: both
    launchers treat a repeat as "abort harder". The handlers are in place before mpiexec
    starts, and a signal that comes while it starts is passed on once it has.
    """
    procs, signalled = [], []

    def forward(signum, _frame):
        signalled.append(signum)
        for proc in procs:
            proc.send_signal(signum)
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, forward) for s in handled}
    try:
        procs.append(subprocess.Popen(cmd))
        for signum in list(signalled):
            procs[0].send_signal(signum)
        status = procs[0].wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    # Killed by signal N: report it the way a shell does.
    return (128 - status if status < 0 else status), bool(signalled)


def _launch(args, out):
    program = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not program:
        raise LaunchError("no program given; expected e.g. 'ringreduce-run -np 2 python "
                          "train.py'")
    if program[0].startswith("-"):
        raise LaunchError(f"unknown option {program[0]!r} (options go before the program); "
                          "see ringreduce-run --help")

    hosts, source, reload_hosts, scheduler = _hosts(args)
    if hosts is None:
        if args.np is None:
            raise LaunchError("expected -np N, or hosts (-H, --hostfile, or a Slurm, PBS or "
                              "LSF allocation) whose slots give it")
        np = args.np
    else:
        slots = sum(h.slots for h in hosts)
        np = slots if args.np is None else args.np
        if np > slots and not args.oversubscribe:
            listing = ", ".join(f"{h.name}:{h.slots}" for h in hosts)
            raise LaunchError(f"-np {np} is more than the {slots} slots in {source} "
                              f"({listing}); lower -np, add slots, or pass --oversubscribe")
    restarts = args.max_restarts or 0
    mpiexec = args.mpiexec
    if mpiexec is None:
        mpiexec = shutil.which("mpiexec") or shutil.which("mpirun")
        if mpiexec is None:
            raise LaunchError("no mpiexec or mpirun on PATH; install an MPI (pip install "
                              "mpich, or the system's MPICH or Open MPI) or pass --mpiexec PATH")
    else:
        mpiexec = _find_executable(mpiexec, "--mpiexec")
    launcher_exec = None
    if args.launcher_exec is not None:
        launcher_exec = _find_executable(args.launcher_exec, "--launcher-exec")
    try:
        min_np = check_restart_options(restarts, args.min_np, args.host_check, np,
                                       hosts is not None)
        check = check_command(args.host_check, launcher_exec, scheduler == "Slurm")
    except RestartError as e:
        raise LaunchError(str(e)) from None

    flavour, evidence, version_output = query_flavour(mpiexec)
    env = forwarded_env(os.environ, args.env)
    btl_given = flavour == OPENMPI and btl_chosen(os.environ, mpiexec)  # once, not per start

    def start(hosts, np, restart_count, dry_run=False):
        try:
            hostfile_text = None if hosts is None else format_hostfile(hosts, flavour)
        except ValueError as e:  # a host this launcher cannot take (IPv6 with Hydra)
            raise LaunchError(str(e)) from None
        job_env = env if args.max_restarts is None else \
            {**env, "RINGREDUCE_RESTART_COUNT": str(restart_count)}
        tmpdir = None
        try:
            hostfile = None
            if hostfile_text is not None:
                # Written afresh in the launcher's own format even when the user's file
                # already is: what mpiexec reads is then exactly what was checked.
                tmpdir = tempfile.mkdtemp(prefix="ringreduce-run-")
                hostfile = os.path.join(tmpdir, "hostfile")
                with open(hostfile, "w", encoding="ascii") as f:
                    f.write(hostfile_text)
            cmd = build_command(flavour, mpiexec, np, program, hostfile, job_env,
                                args.oversubscribe, launcher_exec,
                                openmpi_major(version_output) or 4,
                                btl_given=btl_given)
            if dry_run:
                _print_dry_run(out, flavour, evidence, hostfile, source, hostfile_text, cmd,
                               restarts, check, min_np)
                return 0, False
            out.flush()
            return _run(cmd)
        finally:
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)

    if args.dry_run:
        return start(hosts, np, 0, dry_run=True)[0]

    def log(line):
        print(f"ringreduce-run: {line}", file=sys.stderr, flush=True)
    return run_with_restarts(start, hosts, np, max_restarts=restarts, min_np=min_np,
                             np_given=args.np, oversubscribe=args.oversubscribe,
                             reload_hosts=reload_hosts, check=check, log=log)


def _hosts(args):
    """(hosts, where they came from, a function that reads them again, the scheduler or None)
    from -H, --hostfile or a scheduler's allocation; hosts None for this machine only."""
    if args.host_list is not None:
        hosts = parse_host_list(args.host_list)
        return hosts, "-H", lambda: hosts, None
    if args.hostfile is not None:
        def read():
            try:
                return parse_hostfile(args.hostfile)
            except OSError as e:
                raise LaunchError(f"cannot read hostfile {args.hostfile!r}: {e.strerror}") \
                    from None

        def read_again():
            try:
                return read()
            except (LaunchError, HostfileError) as e:
                raise RestartError(f"the hostfile, read again: {e}") from None
        return read(), f"hostfile {args.hostfile}", read_again, None
    try:
        scheduler, hosts, source = allocation_hosts(os.environ) or (None, None, None)
    except OSError as e:
        raise LaunchError(f"cannot read PBS_NODEFILE {e.filename!r}: {e.strerror}") from None
    return hosts, source, lambda: hosts, scheduler


def _print_dry_run(out, flavour, evidence, hostfile, source, hostfile_text, cmd, restarts,
                   check, min_np):
    print(f"# MPI: {_FLAVOUR_NAMES[flavour]}, as told by {evidence}", file=out)
    if hostfile is not None:
        print(f"# hostfile {hostfile} (written from {source}; removed after the job):",
              file=out)
        for line in hostfile_text.splitlines():
            print(f"#   {line}", file=out)
    if restarts:
        how = "" if hostfile is None else (f", on the hosts that pass '{shlex.join(check)} "
                                           f"HOST true', at least {min_np} rank(s)")
        print(f"# on failure: up to {restarts} restart(s){how}", file=out)
    print(shlex.join(cmd), file=out)
    out.flush()


def main(argv=None):
    """Entry point of ringreduce-run; returns the job's exit status (2 for a usage error)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _launch(args, sys.stdout)
    except (LaunchError, HostfileError) as e:
        print(f"ringreduce-run: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
