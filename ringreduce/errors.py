"""Every exception ringreduce raises of its own, at the bottom of the package: any layer may
import this module, and it imports nothing of the package."""


class RingReduceError(RuntimeError):
    """A collective failed on some rank; raised on every rank."""


class MismatchError(RingReduceError, ValueError):
    """Ranks passed different counts, shapes, dtypes, ops or algorithms to one collective."""


class StallError(RingReduceError):
    """Some ranks waited longer than RINGREDUCE_STALL_SHUTDOWN_SECONDS for others."""
