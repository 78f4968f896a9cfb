"""A stand-in mpiexec for the launcher's tests (tests/unit/test_launcher.py builds and
dry-runs commands against it, tests/jobs/test_launcher_jobs.py runs it): a small script that
answers --version like the real one and otherwise records the argv and the hostfile it was
given."""
import os
import shlex
import sys

import pytest

from ringreduce.launch.run import main

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
    # The caller's RINGREDUCE_* variables would otherwise show up in every built command, and
    # an OMPI_MCA_btl of theirs would take the launcher's own btl choice out of it.
    for name in list(os.environ):
        if name.startswith("RINGREDUCE_") or name == "OMPI_MCA_btl":
            monkeypatch.delenv(name)


def dry_run(capsys, argv):
    assert main(["--dry-run"] + argv) == 0
    lines = capsys.readouterr().out.splitlines()
    # Comment lines first, then the command, which spans lines only if an argument holds a
    # newline (quoted, so still one shell word).
    n = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    return shlex.split("\n".join(lines[n:])), lines[:n]
