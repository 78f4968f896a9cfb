"""The background engine behind ``allreduce_async``.

``handle.py``: what the caller holds; ``coordinator.py``: the pure negotiation rules (who
submitted what, mismatches, stalls), fed with messages and a clock; ``channel.py``: one user
communicator's traffic to and from the coordinator; ``execute.py``: running a response
(fusion and reduction, through ``collectives.grouped.reduce_bucket``); ``engine.py``: the
thread; ``api.py``: ``allreduce_async`` and ``init``; ``timeline.py``; ``abort.py``.
"""
