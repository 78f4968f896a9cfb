"""The collectives: one body each, over any memory backend.

``header.py``: the agreement every call starts with; ``calls.py``: the checks and the
signature every call shares; ``run.py``: running an agreed algorithm; ``allreduce.py`` and
``grouped.py``: the two synchronous collectives (the background engine reuses the grouped
bucket reduction).
"""
