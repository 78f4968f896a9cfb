"""Chrome-trace timeline (``RINGREDUCE_TIMELINE=trace.json``), written by rank 0.

One row per tensor, one complete event ("ph": "X") per phase: WAIT_FOR_DATA (first rank's
submission to the last rank's, as the coordinator saw them), NEGOTIATE (last submission to
the coordinator's response), QUEUE (response to start of work), PACK, ALLREDUCE (args name
the algorithm and the bucket), UNPACK. Open it in chrome://tracing or https://ui.perfetto.dev.

The file is valid JSON at every moment: it always ends in ``]}``, and new events are written
over that ending in one ``write`` per engine cycle (``...,{event},{event}]}``). A rank killed
by ``MPI_Abort`` from another rank, which runs no exit handler, still leaves a readable trace
of everything up to its last cycle.
"""
import json
import os
import threading
import time


class Timeline:
    def __init__(self, path):
        self.path = path
        self.pending = []
        self.count = 0
        self.lock = threading.Lock()
        self.t0 = time.perf_counter()
        self.tids = {}
        self.file = open(path, "w")
        self.file.write('{"displayTimeUnit": "ms", "traceEvents": []}')
        self.file.flush()

    def _tid(self, name):
        tid = self.tids.get(name)
        if tid is None:
            tid = self.tids[name] = len(self.tids) + 1
            self.pending.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": tid,
                                 "args": {"name": name}})
        return tid

    def phase(self, tensor, phase, start, end, **args):
        """Record one phase of one tensor (perf_counter times); written at the next flush."""
        with self.lock:
            self.pending.append({"name": phase, "ph": "X", "pid": 0, "tid": self._tid(tensor),
                                 "ts": round((start - self.t0) * 1e6, 3),
                                 "dur": round(max(0.0, end - start) * 1e6, 3), "args": args})

    def flush(self):
        with self.lock:
            if not self.pending or self.file.closed:
                return
            body = ",".join(json.dumps(e) for e in self.pending)
            self.pending = []
            self.file.seek(0, os.SEEK_END)
            self.file.seek(self.file.tell() - 2)
            self.file.write(("," if self.count else "") + body + "]}")
            self.file.flush()
            self.count += 1

    def close(self):
        self.flush()
        with self.lock:
            self.file.close()
