"""``import ringreduce.torch`` without torch says what to install; ringreduce itself never
needs torch."""
import importlib
import sys

import pytest


def test_import_without_torch_says_what_to_install(monkeypatch):
    # Hide torch (and forget ringreduce.torch if another test loaded it); monkeypatch puts
    # every module back afterwards.
    for name in list(sys.modules):
        if name == "torch" or name.startswith(("torch.", "ringreduce.torch")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r'pip install "ringreduce\[torch\]"'):
        importlib.import_module("ringreduce.torch")
    import ringreduce as rr
    assert callable(rr.allreduce)
