"""The optimizer kernels for a device: the CPU ones or their CUDA twins, one signature.

A training loop asks :func:`get_optimizer_kernels` once for "cpu" or "cuda" and then calls
``sgd_update`` / ``adam_update`` with the same arguments on either device. The kernels live
in ``cpu_optim.py`` and ``cuda_optim.py``; the choice lives here, above both, because the
CUDA kernels compile the CPU module's element functions: a choice kept in the CPU module
would import the CUDA one that imports it.

``sgd_update`` and ``adam_update`` here are the CPU kernels, the default device's.
"""
from typing import Callable, NamedTuple

from .cpu_optim import adam_update, sgd_update

__all__ = ["DEVICES", "OptimizerKernels", "adam_update", "get_optimizer_kernels", "sgd_update"]


class OptimizerKernels(NamedTuple):
    sgd_update: Callable
    adam_update: Callable


DEVICES = ("cpu", "cuda")


def get_optimizer_kernels(device):
    """The optimizer kernels for ``device`` ("cpu" or "cuda"), with identical signatures.

    The CUDA ones also take ``stream=0``.
    """
    if device == "cpu":
        return OptimizerKernels(sgd_update, adam_update)
    if device == "cuda":
        from . import cuda

        if not cuda.cuda_available():
            raise RuntimeError("get_optimizer_kernels('cuda'): " + cuda.unavailable_reason())
        return OptimizerKernels(cuda.sgd_update, cuda.adam_update)
    raise ValueError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
