"""Where the two one-node algorithms trade places from one job to the next, "auto" times both
in the job itself and keeps the faster: a race per size class, dtype and communicator.

Why. On one node, from 1 MiB to 32 MiB, the shared-memory algorithm and the ring each win
by 20-50% depending on how the machine places the ranks' cores, which changes from job to
job and sometimes within one (docs/benchmarks.md: "MPICH and Open MPI" for the race's table,
"Shared-memory allreduce" for why the placement matters). On the shared 2-core VM the tables
come from, at 1 MiB under Open MPI, the ring took 0.63-0.69x native in the jobs where native
was slow and 1.16-1.23x where it was fast, shm 1.03-1.06x and 0.79-0.94x. A fixed threshold
is right in half the jobs; one measured in the job is right in both. (Horovod tunes its
fusion settings online the same way; MPI libraries keep fixed tables.)

How. The calls of one size class (sizes with the same bit length) and dtype on one
communicator run the candidates in turn: ``WARMUP`` untimed calls of each (a window growing,
first-touch page faults), then ``SAMPLES`` timed calls of each, alternating so that drift
hits both alike. Each rank keeps the median time per byte of each candidate; the ranks sum
their medians with one small allreduce (:class:`Race` says when) and all take the candidate
with the smaller sum, the first on a tie, so every rank keeps the same one.

Three things keep the choice honest on a machine whose timings jump by half from one call
to the next (docs/benchmarks.md, "MPICH and Open MPI", for the jobs behind each):

- A close race goes on: where the two smallest sums are within ``CLOSE`` of each other,
  ``SAMPLES`` more calls of each, pooled with the ones before, up to ``ROUNDS`` rounds in
  all. Six samples each had kept shm on sums 0.72 against 0.79 ns per byte, and shm then
  took 0.86x native where the ring took 0.62x. Another round is cheap where the two are
  close.
- The winner is watched: every ``WATCH_CALLS`` of its calls the ranks sum its median time
  per byte over them, and where that is above ``DRIFT`` times what it won with, the race
  runs again at once. The machine changes mode under a job, and a size class spans a factor
  of two (shm won at 16 MiB and took 2.2x as long per byte at 24 MiB, in one MPICH job). A
  watch every 64 calls came too late for a size's 40 calls; every 16 costs a few
  microseconds per 16 calls of at least 1 MiB.
- In the race a watch starts, the candidate it caught counts at no less than the watch's
  time: calls back to back can run faster than among other calls, and such races kept
  picking shm at 16 MiB, 2.5x slower per byte among other calls, watch after watch.

After ``RETRY_CALLS`` calls on the winner the race runs again anyway, since the machine may
change under a long job in ways the winner's own time does not show. A race costs its
loser's extra time on at most ``WARMUP + SAMPLES * ROUNDS`` calls, about 1-2% of the calls
when repeated every 1,000; a watch, one small allreduce per ``WATCH_CALLS`` calls.

Every rank makes the same calls on a communicator in the same order, with sizes agreed in
the header, so every rank counts the same calls in every race and the choice needs no other
message than the sum. ``RINGREDUCE_ADAPT=0`` turns racing off ("auto" then follows the fixed
rule of ``core/choose.py`` alone, or a tuning file, which also turns it off).
"""
import statistics

# Sizes raced on one node (bytes, exclusive at the top), between the candidates below. From
# 32 MiB the single-copy algorithm runs where it can (core/choose.py, AUTO_DIRECT_BYTES).
# The top was 8 MiB, until three jobs per MPI at 2 ranks (`-n 40`, race to 32 MiB) showed
# the same split from 8 to 24 MiB: shm 0.47-0.69x native in some jobs and 1.01-1.45x in
# others, the ring 0.53-0.79x; "auto" within 0.05 of the faster in every row, and below the
# ring alone by 0.11-0.17 at 16 MiB in four of the six (docs/benchmarks.md, "MPICH and Open
# MPI").
RACE_MIN_BYTES = 1 << 20
RACE_MAX_BYTES = 32 << 20
CANDIDATES = ("shm", "ring")
# Untimed calls of each candidate, then timed calls of each, per race.
WARMUP = 1
SAMPLES = 6
# A race whose two smallest sums differ by less than CLOSE (relative) takes another round of
# SAMPLES calls of each, up to ROUNDS rounds in all.
CLOSE = 0.15
ROUNDS = 3
# Every WATCH_CALLS calls on the winner the ranks compare its time with what it won with;
# DRIFT times that runs the race again.
WATCH_CALLS = 16
DRIFT = 1.5
# Calls on the winner before the race is run again in any case.
RETRY_CALLS = 1000


def races(nbytes, p, one_node, host):
    """Whether "auto" races the candidates for ``nbytes`` on ``p`` ranks: host memory (shm
    needs it), every rank on one node, more than one rank, a size in the raced range."""
    return host and one_node and p > 1 and RACE_MIN_BYTES <= nbytes < RACE_MAX_BYTES


def most_calls(candidates=CANDIDATES):
    """The most calls one race can take, from its first call to its winner."""
    return (WARMUP + SAMPLES * ROUNDS) * len(candidates)


def size_class(nbytes):
    """The race a call of ``nbytes`` belongs to: sizes within a factor of two share one."""
    return nbytes.bit_length()


class Race:
    """One size class's race on one communicator: which candidate each call runs, what it
    took, and when the ranks must agree (pure bookkeeping; the caller times and agrees)."""

    def __init__(self, candidates=CANDIDATES):
        self.candidates = tuple(candidates)
        self.winner = None  # index into candidates once agreed
        self.won = None  # the winner's sum over the ranks when it won
        self.watched = []  # seconds per byte of the winner's calls since the last watch
        self.caught = None  # (candidate, its watch's sum) that restarted this race, if any
        self._restart()

    def _restart(self):
        self.winner = None
        self.rounds = 1
        self.calls = 0
        self.since = 0
        self.samples = [[] for _ in self.candidates]

    def next(self):
        """The index of the candidate the next call runs."""
        if self.winner is not None:
            return self.winner
        return self.calls % len(self.candidates)

    def record(self, index, seconds, nbytes):
        """The call that ran candidate ``index`` took ``seconds`` for ``nbytes``. True when
        this was the last call of a round, or of a watch of the winner: the caller sums
        :meth:`medians` over the ranks and hands the sums to :meth:`decide` before the next
        call."""
        if self.winner is not None:
            self.since += 1
            if self.since >= RETRY_CALLS:
                self._restart()
                return False
            self.watched.append(seconds / max(nbytes, 1))
            return len(self.watched) == WATCH_CALLS
        k = len(self.candidates)
        if self.calls >= WARMUP * k:
            self.samples[index].append(seconds / max(nbytes, 1))
        self.calls += 1
        return self.calls == (WARMUP + SAMPLES * self.rounds) * k

    def medians(self):
        """Per candidate, this rank's median seconds per byte over the race's timed calls;
        once there is a winner, one: its median over the watch's calls."""
        if self.winner is not None:
            return [statistics.median(self.watched)]
        return [statistics.median(s) for s in self.samples]

    def decide(self, sums):
        """Every rank's :meth:`medians` summed, per candidate (the same on every rank, so
        every rank decides alike): the smallest wins, the first on a tie; or, where the two
        smallest are within ``CLOSE`` and rounds are left, none yet and the race goes on.
        Once there is a winner, ``sums`` is its watch's one sum: above ``DRIFT`` times
        what it won with, the race starts again, and in it that candidate's sum is at least
        the watch's. Returns the winner's name, or None while the race goes on."""
        if self.winner is not None:
            self.watched = []
            if sums[0] > DRIFT * self.won:
                self.caught = (self.winner, sums[0])
                self._restart()
                return None
            return self.candidates[self.winner]
        if self.caught is not None:  # judged by what it did, not only by what it raced
            sums = list(sums)
            i, seen = self.caught
            sums[i] = max(sums[i], seen)
        order = sorted(range(len(sums)), key=lambda i: (sums[i], i))
        if (self.rounds < ROUNDS and len(order) > 1
                and sums[order[1]] - sums[order[0]] < CLOSE * sums[order[0]]):
            self.rounds += 1
            return None
        self.winner = order[0]
        self.won = sums[order[0]]
        self.caught = None
        self.since = 0
        self.watched = []
        return self.candidates[self.winner]
