"""The transport layer: the library's private communicators and the bytes they move.

``comm.py``: :class:`Comm` (a duplicate of a user communicator with the point-to-point calls
the algorithms make) and its declared per-communicator state; ``device.py``: the same calls
on device buffers; ``topology.py``: the split into nodes and where a process sits;
``tags.py``: every message tag the library uses.
"""
