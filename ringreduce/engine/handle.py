"""The pending result of ``allreduce_async``."""
import threading
import time


class Handle:
    """The pending result of ``allreduce_async``: ``done()`` never blocks, ``wait()`` returns
    the result or raises the error every rank got. The engine completes it."""

    def __init__(self, name, out):
        self.name = name
        self._out = out
        self._event = threading.Event()
        self._error = None

    def done(self):
        """True once the result (or an error) is in; never blocks."""
        return self._event.is_set()

    def wait(self, timeout=None):
        """Block until the reduction finished; return the result or raise its error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # Wait in slices so Ctrl-C reaches the main thread.
        while not self._event.wait(0.1):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"allreduce {self.name!r} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._out

    def complete(self, error=None):
        """Deliver the result (already in place) or ``error``; called by the engine once."""
        self._error = error
        self._event.set()

    def __repr__(self):
        return f"<Handle {self.name!r} {'done' if self.done() else 'pending'}>"
