"""The ``memory`` fixture: every collective test that takes it runs once per kind of memory
(tests/_memory.py), host always, device under the CUDA simulator or on a GPU, with one test
body. Tests that choose their cases per kind parametrise ``memory`` themselves, indirectly,
with ``_memory.cases``. Where no device is available the device cases skip, saying why.
"""
import pytest

from _memory import KINDS, device_unavailable, memory_named


def _memory(name):
    if name == "device":
        reason = device_unavailable()
        if reason:
            pytest.skip(reason)
    return memory_named(name)


@pytest.fixture(params=tuple(KINDS))
def memory(request):
    return _memory(request.param)


@pytest.fixture
def device():
    """Device memory, for the tests of what only device arrays do."""
    return _memory("device")


@pytest.fixture
def cuda_aware(monkeypatch):
    """RINGREDUCE_CUDA_AWARE=1 for one test: the device transport hands device memory to MPI
    instead of staging it (the simulator's "device" memory is host memory, so MPI takes it).
    ``transport.device.device_comm`` reads the variable at every call."""
    monkeypatch.setenv("RINGREDUCE_CUDA_AWARE", "1")
