"""How a collective of the torch integration runs and how its caller waits for it.

:class:`Executor`: every collective of one process group runs in the order it was called, one
at a time, on one communicator, as a synchronous ringreduce collective with its header
agreement. torch requires every rank to call a group's collectives in the same order, so this
order is the same everywhere; whether a call was ``async_op`` is a local matter, as it is for
gloo, and does not change which messages are sent. A synchronous call with nothing queued
runs in the caller's thread (no hand-off); anything else is queued for the group's thread,
which is what lets DDP's bucket allreduces run while backward computes the next gradients.

:class:`Completer`: one thread that turns the background engine's handles
(``rr.allreduce_async``) into completed ``torch.futures.Future`` objects, for the DDP
communication hook. Callbacks chained with ``then`` run on that thread, never on the
engine's.

:class:`Work`: the ``torch.distributed`` work object over a future: ``wait()`` returns once
the collective is done or raises the error every rank got; ``get_future()`` is what DDP
waits on.
"""
import collections
import contextlib
import threading

import torch
import torch.distributed as dist


def device_context(tensors):
    """The Numba context of the tensors' GPU for the thread that runs the collective (the
    current device is per thread), or nothing for CPU tensors."""
    t = next((t for t in tensors if isinstance(t, torch.Tensor) and t.is_cuda), None)
    if t is None:
        return contextlib.nullcontext()
    from ..memory.cuda import require_cuda
    # Work the caller queued on its stream must be done before the collective reads.
    torch.cuda.current_stream(t.device).synchronize()
    return require_cuda().cuda.gpus[t.device.index or 0]


class Work(dist._Work):
    """A collective in flight (or done): ``wait``, ``get_future``, ``is_completed``."""

    def __init__(self, future):
        super().__init__()
        self._future = future

    def wait(self, timeout=None):
        self._future.wait()  # raises the collective's error
        return True

    def get_future(self):
        return self._future

    def is_completed(self):
        return self._future.done()

    def is_success(self):
        if not self._future.done():
            return False
        try:
            self._future.value()
        except Exception:  # noqa: BLE001 - the question is only whether it failed
            return False
        return True

    def exception(self):
        if not self._future.done():
            return None
        try:
            self._future.value()
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            return exc
        return None

    def result(self):
        return self._future.value()


def _settle(future, fn):
    """Run ``fn`` and complete ``future`` with its result or its error."""
    try:
        value = fn()
    except BaseException as exc:  # noqa: BLE001 - delivered through the future
        future.set_exception(exc)
    else:
        future.set_result(value)


class Executor:
    """One process group's collectives, one at a time, in call order (module docstring)."""

    def __init__(self, name):
        self.name = name
        self._cv = threading.Condition()
        self._queue = collections.deque()
        self._busy = False
        self._thread = None
        self._closed = False

    def run(self, fn, async_op):
        """Run ``fn()`` (a synchronous collective) in this group's order; return a
        :class:`Work` whose future holds its result."""
        future = torch.futures.Future()
        with self._cv:
            if self._closed:
                raise RuntimeError(f"process group {self.name} was destroyed; create a new one")
            inline = not async_op and not self._busy and not self._queue
            if inline:
                self._busy = True
            else:
                self._queue.append((fn, future))
                self._start()
                self._cv.notify_all()
        if inline:
            try:
                _settle(future, fn)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
        return Work(future)

    def _start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"ringreduce-{self.name}",
                                            daemon=True)
            self._thread.start()

    def _loop(self):
        while True:
            with self._cv:
                while not self._closed and (self._busy or not self._queue):
                    self._cv.wait()
                if self._closed and not self._queue:
                    return
                fn, future = self._queue.popleft()
                self._busy = True
            try:
                _settle(future, fn)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def close(self):
        """Finish what is queued, then stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)


class Completer:
    """Completes futures from engine handles, in submission order, on one thread."""

    def __init__(self):
        self._cv = threading.Condition()
        self._queue = collections.deque()
        self._thread = None

    def watch(self, handle, future, finish):
        """Once ``handle`` is done, complete ``future`` with ``finish()`` (or the handle's
        error)."""
        with self._cv:
            self._queue.append((handle, future, finish))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name="ringreduce-torch-futures")
                self._thread.start()
            self._cv.notify()

    def _loop(self):
        while True:
            with self._cv:
                while not self._queue:
                    self._cv.wait()
                handle, future, finish = self._queue.popleft()

            def done(handle=handle, finish=finish):
                handle.wait()
                return finish()
            _settle(future, done)


COMPLETER = Completer()


_warming = []


def warm_up():
    """Load the CPU reduction kernels (numba, ml_dtypes and the compiled kernels' cache: 1.5
    to 3 s on the development machine) on a background thread, once per process, from
    ``import ringreduce.torch`` on, while the script builds its model: the first allreduce
    would otherwise pay for it inside the first training step (docs/benchmarks.md,
    "PyTorch")."""
    if _warming:
        return

    def load():
        import numpy as np

        from ..memory.host import HOST
        for dtype in (np.float32, np.float64):
            reduce, scale = HOST.kernels("avg", np.dtype(dtype))
            a = np.ones(4, dtype)
            reduce(a, a)
            scale(a, 2)
    t = threading.Thread(target=load, name="ringreduce-warm-up", daemon=True)
    _warming.append(t)
    t.start()
