"""Memory backends: what differs between host arrays and CUDA device arrays.

A collective (``collectives/``) has one body; it asks its backend the few questions whose
answers depend on where the data lives (Horovod keeps one list of operation implementations,
mpi4jax registers a primitive once per platform, Gloo makes host staging a template
parameter; here the parameter is an object):

- ``view(x, what)``: the array to work on, without copying, or a TypeError;
- ``kernels(op, dtype)``: the local reduction and the avg scaling;
- ``algorithms``: which algorithms can run on this memory (``shm`` needs host memory);
- ``piggyback``: whether a small payload may ride in the header pass;
- ``empty``, ``flatten``, ``flat``, ``write_back``, ``overlap``, ``writeable``: buffers;
- ``fusion_buffer``, ``pack``, ``unpack``: the fusion buffer of grouped and async calls;
- ``transport(c)``: what the algorithms send through (the library's ``Comm`` itself, or the
  device transport that stages or hands device pointers to MPI);
- ``prepare()``, ``sync()``, ``device()``, ``on_device(d)``: device set-up and ordering.

:func:`backend_of` picks the backend of one array, :func:`backend_of_group` that of a list.
"""
import numpy as np

from ..gpu import is_device_array
from .device import DEVICE
from .host import HOST

BACKENDS = (HOST, DEVICE)


def backend_of(x):
    """The backend for array ``x``: device arrays by their CUDA interface, everything else
    the host's (which then checks that numpy can view it)."""
    return DEVICE if is_device_array(x) else HOST


def backend_of_group(arrays):
    """The one backend of a list of arrays; TypeError for anything but a list or tuple, or for
    host and device arrays in one call."""
    if isinstance(arrays, np.ndarray) or not isinstance(arrays, (list, tuple)):
        raise TypeError(f"grouped_allreduce takes a list or tuple of arrays, got "
                        f"{type(arrays).__name__}")
    kinds = [is_device_array(a) for a in arrays]
    if any(kinds) and not all(kinds):
        first = kinds.index(True)
        host = kinds.index(False)
        raise TypeError(f"grouped_allreduce takes host arrays or CUDA device arrays, not both: "
                        f"arrays[{first}] is a device array ({type(arrays[first]).__name__}) "
                        f"but arrays[{host}] is a {type(arrays[host]).__name__}")
    return DEVICE if any(kinds) else HOST
