"""The coordinator's rules, as a pure object: fed with what each rank submitted and the time,
it says which tensors are ready, which were submitted with different metadata, and which
have stalled. No MPI, no threads, no clock of its own (Horovod's controller computes its
response list the same way, from requests and nothing else), so every rule is unit-tested
with a fake clock (tests/unit/test_coordinator.py); ``channel.py`` moves the messages.

A tensor is known by name. Each rank submits ``(name, meta)`` once; ``meta`` is a tuple of
what shapes its messages (:data:`META_FIELDS`). A name every rank submitted with the same
meta is *ready*; one submitted with different metas is an *error* naming the first field that
differs; one that some ranks submitted and others have not, for longer than the stall check,
draws a *warning* naming the missing ranks (repeated every stall-check period), and after the
stall shutdown, if set, an error for every waiting rank and the end of the job.

A response ``(ready, errors)`` goes out at most once per cycle: ``ready`` as
``(name, first, last)`` (submission times, for the timeline) sorted by name, so every rank
runs the same collectives in the same order whatever order its tensors came in; ``errors``
as ``(name, message)`` or ``(name, message, "stall")``.
"""
import collections

from ..collectives.header import mismatch_message

META_FIELDS = ("shape", "dtype", "op", "algorithm", "segment_bytes", "memory", "compression")


class Coordinator:
    def __init__(self, size, *, cycle_time_s, stall_check_s, stall_shutdown_s, now):
        self.size = size
        self.cycle_time_s = cycle_time_s
        self.stall_check_s = stall_check_s
        self.stall_shutdown_s = stall_shutdown_s
        self.table = {}        # name -> {rank: (meta, time)}: submitted by some ranks so far
        self.ready = []
        self.errors = []
        self.warned = {}       # name -> when its last stall warning went out
        self.last_response = now

    def has_work(self):
        """Whether a response is due once the cycle allows it."""
        return bool(self.ready or self.errors)

    def note(self, rank, items, now):
        """``rank`` submitted ``items``, ``[(name, meta), ...]``, at ``now``."""
        for name, meta in items:
            seen = self.table.setdefault(name, {})
            seen[rank] = (meta, now)
            if len(seen) == self.size:
                del self.table[name]
                metas = {m for m, _ in seen.values()}
                times = [t for _, t in seen.values()]
                if len(metas) == 1:
                    self.ready.append((name, min(times), max(times)))
                else:
                    self.errors.append((name, self.explain(name, seen)))
                self.warned.pop(name, None)

    @staticmethod
    def explain(name, seen):
        ranks = sorted(seen)
        first = seen[ranks[0]][0]
        for r in ranks[1:]:
            other = seen[r][0]
            for i, field in enumerate(META_FIELDS):
                if other[i] != first[i]:
                    return (f"{mismatch_message('allreduce', field, ranks[0], first[i], r, other[i])}"
                            f" (tensor {name!r})")
        return f"Mismatched allreduce metadata for tensor {name!r}"

    def inspect(self, now):
        """The stall rules at ``now``: ``(warning text or None, shutdown text or None)``.
        A shutdown turns every stalled tensor into an error of the next response, which is
        due at once; the caller ends the job a little later."""
        if not self.table or (self.stall_check_s <= 0 and self.stall_shutdown_s <= 0):
            return None, None
        stalled = {}
        for name, seen in self.table.items():
            waited = now - min(t for _, t in seen.values())
            missing = tuple(r for r in range(self.size) if r not in seen)
            stalled[name] = (waited, missing)
        shutdown = warning = None
        if self.stall_shutdown_s > 0:
            dead = {n: v for n, v in stalled.items() if v[0] > self.stall_shutdown_s}
            if dead:
                text = stall_text(dead)
                shutdown = (f"ringreduce: stall shutdown after {self.stall_shutdown_s:g} s: "
                            f"{text}")
                for name in dead:
                    del self.table[name]
                    del stalled[name]
                    self.errors.append((name, f"stalled: {text}; shutting down after "
                                        f"RINGREDUCE_STALL_SHUTDOWN_SECONDS="
                                        f"{self.stall_shutdown_s:g}", "stall"))
                self.last_response = float("-inf")  # respond now
        if self.stall_check_s > 0:
            late = {n: v for n, v in stalled.items() if v[0] > self.stall_check_s
                    and now - self.warned.get(n, float("-inf")) > self.stall_check_s}
            if late:
                for n in late:
                    self.warned[n] = now
                warning = (f"ringreduce: stall warning: some ranks have waited more than "
                           f"{self.stall_check_s:g} s (RINGREDUCE_STALL_CHECK_SECONDS) for "
                           f"others: {stall_text(late)}")
        return warning, shutdown

    def respond(self, now):
        """The response due at ``now``, or None (nothing ready, or within the cycle)."""
        if not self.has_work() or now - self.last_response < self.cycle_time_s:
            return None
        response = (sorted(self.ready), self.errors)
        self.ready, self.errors = [], []
        self.last_response = now
        return response


def stall_text(stalled):
    """``{name: (waited, missing ranks)}`` as one line, grouped by who is missing."""
    by_missing = collections.defaultdict(list)
    for name, (_, missing) in stalled.items():
        by_missing[missing].append(name)
    parts = []
    for missing, names in sorted(by_missing.items()):
        shown = ", ".join(repr(n) for n in sorted(names)[:10])
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        parts.append(f"ranks {list(missing)} have not submitted {shown}{more}")
    return "; ".join(parts)
