"""The argv that starts a job with each MPI's launcher (MPICH's Hydra, Open MPI's mpirun),
and the variables every rank gets: what ``ringreduce-run`` (``run.py``) runs once it knows
which launcher it has."""
import os
import re

HYDRA = "hydra"
OPENMPI = "openmpi"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


class LaunchError(Exception):
    """A launch that cannot go ahead; the message says what was expected and what was given."""


def forwarded_env(environ, extra):
    """The variables every rank gets: RINGREDUCE_* from `environ`, then the NAME=VALUE strings
    of `extra` (--env), which win over the environment's. Returns a dict in that order."""
    env = {k: v for k, v in sorted(environ.items()) if k.startswith("RINGREDUCE_")}
    for item in extra:
        name, eq, value = item.partition("=")
        if not eq or not _ENV_NAME.fullmatch(name):
            raise LaunchError(f"--env expects NAME=VALUE with NAME made of letters, digits and "
                              f"'_' (not starting with a digit), got {item!r}")
        env.pop(name, None)
        env[name] = value
    return env


def btl_chosen(environ, mpiexec):
    """Whether Open MPI's byte-transfer layers were chosen already: ``OMPI_MCA_btl`` in the
    environment, or a ``btl`` line in the user's or the installation's MCA parameter file
    (``~/.openmpi/mca-params.conf``, ``PREFIX/etc/openmpi-mca-params.conf`` beside
    ``PREFIX/bin/mpirun``), which a ``--mca btl`` on the command line would override."""
    if "OMPI_MCA_btl" in environ:
        return True
    where = os.path.dirname(os.path.dirname(os.path.realpath(mpiexec)))
    for path in (os.path.join(environ.get("HOME", ""), ".openmpi", "mca-params.conf"),
                 os.path.join(where, "etc", "openmpi-mca-params.conf")):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                if any(re.match(r"\s*btl\s*=", line) for line in f):
                    return True
        except OSError:
            continue
    return False


def build_command(flavour, mpiexec, np, program, hostfile=None, env=None, oversubscribe=False,
                  launcher_exec=None, openmpi_version=4, btl_given=False):
    """The mpiexec argv for `flavour`. `hostfile` is the path of a file already in that
    launcher's format, or None to run on this machine only. `openmpi_version` (the major
    version) matters only for the name of the ssh replacement's parameter. `btl_given`: the
    user chose Open MPI's byte-transfer layers (OMPI_MCA_btl) themselves."""
    env = env or {}
    if flavour == HYDRA:
        cmd = [mpiexec, "-n", str(np)]
        if hostfile is not None:
            cmd += ["-f", hostfile]
        # Hydra needs no oversubscribe flag: past the last slot it starts again at the first
        # host.
        if launcher_exec is not None:
            # Hydra runs `CMD [-x] HOST COMMAND...` where ssh would go, COMMAND being meant
            # for a remote shell, exactly as ssh's.
            cmd += ["-launcher", "ssh", "-launcher-exec", launcher_exec]
        for name, value in env.items():
            cmd += ["-genv", name, value]
    elif flavour == OPENMPI:
        cmd = [mpiexec, "-np", str(np)]
        if hostfile is not None:
            cmd += ["--hostfile", hostfile]
        if oversubscribe:
            cmd.append("--oversubscribe")
        if hostfile is None and not (btl_given or "OMPI_MCA_btl" in env):
            # On this machine only, shared memory and self carry every message, and Open
            # MPI's libfabric layer ("ofi") costs a second of MPI_Init probing for a fabric
            # (1.08-1.15 s against 0.08 s without it, pip's Open MPI 5.0.11 on the
            # development VM: docs/benchmarks.md, "Start-up"). As horovodrun sets btl for
            # Open MPI, it is left out here unless the user chose the layers.
            cmd += ["--mca", "btl", "^ofi"]
        if launcher_exec is not None:
            # Open MPI 5 moved launching to PRRTE, whose parameter is plm_ssh_agent;
            # `--mca` reaches PRRTE's parameters too.
            agent = "plm_ssh_agent" if openmpi_version >= 5 else "plm_rsh_agent"
            cmd += ["--mca", agent, launcher_exec]
        # Open MPI does not pass the environment to remote ranks unless told, name by name.
        for name, value in env.items():
            cmd += ["-x", f"{name}={value}"]
    else:
        raise ValueError(f"unknown MPI flavour {flavour!r}; expected {HYDRA!r} or {OPENMPI!r}")
    return cmd + list(program)
