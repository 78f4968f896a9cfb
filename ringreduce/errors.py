"""Every exception ringreduce raises of its own, at the bottom of the package: any layer may
import this module, and it imports nothing of the package."""


class RingReduceError(RuntimeError):
    """A collective failed on some rank; raised on every rank."""


class MismatchError(RingReduceError, ValueError):
    """Ranks passed different counts, shapes, dtypes, ops or algorithms to one collective."""


class StallError(RingReduceError):
    """Some ranks waited longer than RINGREDUCE_STALL_SHUTDOWN_SECONDS for others."""


class RankFailedError(RingReduceError):
    """A rank of the communicator died, as MPI's fault-tolerance extension (ULFM) reported
    it; raised on every surviving rank by the collective that met the failure.
    ``failed``: the failed ranks, numbered in the communicator of the call (empty when the
    library could not learn them yet). ``ringreduce.elastic.run`` recovers from it."""

    def __init__(self, message, failed=()):
        super().__init__(message)
        self.failed = tuple(failed)

    def __reduce__(self):  # keep ``failed`` through pickling (an allgather, a Queue)
        return type(self), (str(self), self.failed)


def agree(mpi_comm, value, local_error, what):
    """Collective over an mpi4py communicator: every rank's ``value`` once every rank's local
    checks passed. Otherwise the same failure everywhere, in the same call: the rank that
    failed raises its own ``local_error``, every other rank an error of that type (ValueError
    when ranks failed differently) saying that ``what`` was rejected on another rank, by whom
    and why. No rank is left waiting for one that gave up."""
    verdict = None if local_error is None else (type(local_error).__name__, str(local_error))
    everyone = mpi_comm.allgather((value, verdict))
    if local_error is not None:
        raise local_error
    failed = [(r, v) for r, (_, v) in enumerate(everyone) if v is not None]
    if failed:
        kinds = {name for _, (name, _) in failed}
        text = "; ".join(f"rank {r}: {name}: {msg}" for r, (name, msg) in failed)
        exc = TypeError if kinds == {"TypeError"} else ValueError
        raise exc(f"{what} rejected the input on another rank ({text})")
    return [v for v, _ in everyone]
