"""Chrome-trace timeline (``RINGREDUCE_TIMELINE=trace.json``), written by rank 0.

One row per tensor, one complete event ("ph": "X") per phase: WAIT_FOR_DATA (first rank's
submission to the last rank's), NEGOTIATE (last submission to the coordinator's response),
QUEUE (response to start of work), PACK, ALLREDUCE (args name the algorithm and bucket),
UNPACK. Open it in chrome://tracing or https://ui.perfetto.dev.

The file is always valid JSON: events are kept in memory and the whole file is rewritten
atomically (temporary file, rename) at most once a second and at exit, so a job that dies
leaves the last complete trace rather than a truncated one.
"""
import json
import os
import threading
import time


class Timeline:
    def __init__(self, path, flush_seconds=1.0):
        self.path = path
        self.events = []
        self.lock = threading.Lock()
        self.flush_seconds = flush_seconds
        self.last_flush = 0.0
        self.t0 = time.perf_counter()
        self.tids = {}
        self.flush(force=True)

    def us(self, t):
        return (t - self.t0) * 1e6

    def _tid(self, name):
        tid = self.tids.get(name)
        if tid is None:
            tid = self.tids[name] = len(self.tids) + 1
            self.events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": tid,
                                "args": {"name": name}})
        return tid

    def phase(self, tensor, phase, start, end, **args):
        with self.lock:
            self.events.append({"name": phase, "ph": "X", "pid": 0, "tid": self._tid(tensor),
                                "ts": round(self.us(start), 3),
                                "dur": round(max(0.0, end - start) * 1e6, 3), "args": args})
        if time.perf_counter() - self.last_flush > self.flush_seconds:
            self.flush()

    def flush(self, force=False):
        with self.lock:
            data = json.dumps({"traceEvents": self.events, "displayTimeUnit": "ms"})
            self.last_flush = time.perf_counter()
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(data)
        os.replace(tmp, self.path)
