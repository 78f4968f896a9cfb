"""Atomic ``.npz`` checkpoints, read without unpickling anything. What a checkpoint must hold
to resume bit for bit: the ``ringreduce.training`` package docstring."""
import contextlib
import os
import tempfile
import zipfile
import zlib

import numpy as np

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint"]

_FORMAT = "ringreduce-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, or does not fit this run."""


def save_checkpoint(path, state):
    """Write ``state`` (``{name: array or number}``) to ``path`` atomically, as an ``.npz``.

    The data goes to a temporary file in the same directory, is flushed and fsync'ed, then
    renamed over ``path`` (``os.replace`` is atomic on POSIX), and the directory is fsync'ed so
    the rename itself survives a crash: a reader sees the old checkpoint or the new one, never
    half of one. Object arrays are refused, since :func:`load_checkpoint` never unpickles.
    """
    path = os.fspath(path)
    arrays = {}
    for name, value in state.items():
        if not isinstance(name, str) or not name or name.startswith("__"):
            raise ValueError(f"save_checkpoint: entry names must be non-empty strings not "
                             f"starting with '__', got {name!r}")
        a = np.asarray(value)
        if a.dtype.hasobject:
            raise ValueError(f"save_checkpoint: entry '{name}' is an object array "
                             f"({type(value).__name__}); only numeric/string arrays can be "
                             f"loaded without pickle")
        arrays[name] = a
    arrays["__format__"] = np.array(_FORMAT)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path, like=None, match=None):
    """Read a checkpoint written by :func:`save_checkpoint`; return ``{name: numpy array}``.

    Nothing is unpickled (``allow_pickle=False``) and every entry is read at once, so the zip
    CRC of every entry is checked here. ``like`` (``{name: array or None}``) demands exactly
    those names, with those shapes and dtypes (``None``: any shape, for a log that grows);
    ``match`` (``{name: value}``) demands those values (e.g. ``{"world_size": 2}``). Any
    failure is a :class:`CheckpointError` naming the file and what was expected and found.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a bare .npy loads as one array
            raise CheckpointError(f"checkpoint {path} is not an .npz archive")
        with z:
            arrays = {name: z[name] for name in z.files}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: "
                              f"{type(e).__name__}: {e}") from e
    fmt = arrays.pop("__format__", None)
    if fmt is None or fmt.shape != () or str(fmt) != _FORMAT:
        found = "no __format__ entry" if fmt is None else f"format {fmt!r}"
        raise CheckpointError(f"{path} is not a ringreduce checkpoint: expected format "
                              f"{_FORMAT!r}, found {found}")
    if like is not None:
        missing = sorted(set(like) - set(arrays))
        extra = sorted(set(arrays) - set(like))
        if missing or extra:
            raise CheckpointError(f"checkpoint {path} does not fit this run: missing entries "
                                  f"{missing}, unexpected entries {extra}")
        for name, ref in like.items():
            if ref is None:
                continue
            ref = np.asarray(ref)
            got = arrays[name]
            if got.shape != ref.shape or got.dtype != ref.dtype:
                raise CheckpointError(f"checkpoint {path}: entry '{name}' is "
                                      f"{got.dtype}{got.shape}, this run expects "
                                      f"{ref.dtype}{ref.shape}")
    for name, value in (match or {}).items():
        if name not in arrays:
            raise CheckpointError(f"checkpoint {path} has no entry '{name}' (expected {value})")
        got = arrays[name]
        if got.shape != np.shape(value) or not np.array_equal(got, value):
            raise CheckpointError(f"checkpoint {path} was written with {name}={got.tolist()}, "
                                  f"this run has {name}={np.asarray(value).tolist()}")
    return arrays
