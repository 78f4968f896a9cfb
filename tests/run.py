"""Run the whole test suite: once at 1 rank, then the collective tests under mpiexec.

    python tests/run.py              # 1 rank, then 2, 3, 4 and 5 ranks
    python tests/run.py --ranks 2 4  # choose the rank counts for the mpiexec runs

The 1-rank run is the whole suite with plain pytest: tests/unit (pure tests), tests/collective
(tests every rank runs together) and tests/jobs (tests that start their own mpiexec jobs or
processes, skipped under mpiexec). The collective tests also run under ``mpiexec -n N`` for
each N, over every kind of memory: tests/conftest.py switches on Numba's CUDA simulator in
every process unless NUMBA_ENABLE_CUDASIM is set (``NUMBA_ENABLE_CUDASIM=0`` for a real GPU).
Each run has a wall-clock limit, so a hang fails the suite instead of stalling it. Extra
arguments after ``--`` go to every pytest run (for example ``-- -x -k ring``).
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="*", default=[2, 3, 4, 5],
                        help="rank counts for the mpiexec runs (default: 2 3 4 5)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds allowed for each run (default 1800)")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)

    mpiexec = shutil.which("mpiexec")
    if args.ranks and mpiexec is None:
        print("tests/run.py: no mpiexec on PATH; install the MPI extra "
              "(pip install -e \".[mpich,test]\") or a system MPI", file=sys.stderr)
        return 2
    env = dict(os.environ)
    # One BLAS thread per rank: ranks share 2 cores here, and oversubscribed BLAS threads
    # make the multi-rank runs crawl.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    pytest = [sys.executable, "-m", "pytest", "-q", "--with-mpi", "-p", "no:cacheprovider"]
    runs = [("1 rank", pytest + ["tests"] + args.pytest_args)]
    for n in args.ranks:
        # Hydra's -n; Open MPI's mpiexec takes the same flag. --oversubscribe is Open MPI's
        # and unknown to Hydra, which never refuses more ranks than cores.
        runs.append((f"{n} ranks", [mpiexec, "-n", str(n)] + pytest + ["tests/collective"]
                     + args.pytest_args))
    failed = []
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    for label, cmd in runs:
        print(f"\n=== {label}: {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        rc, counts = run_streaming(cmd, env, args.timeout)
        print(f"=== {label}: exit {rc} in {time.perf_counter() - start:.0f} s", flush=True)
        if rc != 0:
            failed.append(label)
            counts["failed"] = max(counts["failed"], 1)
        for k in totals:
            totals[k] += counts[k]
    if failed:
        print(f"\nfailed runs: {', '.join(failed)}")
    print(f"\ntests: {totals['passed']} passed, {totals['failed']} failed, "
          f"{totals['skipped']} skipped")
    return 1 if failed else 0


SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?)\b")
# pytest's closing line, e.g. "2 failed, 895 passed, 20 skipped in 520.60s (0:08:40)"
FINAL = re.compile(r"^((?:\d+ [a-z]+(?:, )?)+) in [\d.]+s")


def run_streaming(cmd, env, timeout):
    """Run ``cmd``, echo its output, and read pytest's summary lines (one per rank; the counts
    of the run are the largest any rank reports). A run past ``timeout`` is killed whole."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    counts = {"passed": 0, "failed": 0, "skipped": 0}

    def kill(*_):
        os.killpg(proc.pid, signal.SIGKILL)
    signal.signal(signal.SIGALRM, kill)
    signal.alarm(int(timeout))
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            summary = FINAL.match(line.strip().strip("=").strip())
            if summary:
                found = {}
                for num, word in SUMMARY.findall(summary.group(1)):
                    word = "failed" if word.startswith("error") else word
                    found[word] = found.get(word, 0) + int(num)
                for k, v in found.items():
                    if k in counts:
                        counts[k] = max(counts[k], v)
        rc = proc.wait()
    finally:
        signal.alarm(0)
    if time.monotonic() >= deadline:
        print(f"TIMED OUT after {timeout:.0f} s: killed", flush=True)
        rc = rc or 1
    return rc, counts


if __name__ == "__main__":
    sys.exit(main())
