"""The names every layer agrees on: ops, dtypes, algorithms, and the call signature.

A *signature* is one 63-bit integer that every rank computes from what shapes a collective's
messages (counts, dtypes, op, algorithm, sizes); the header pass compares it across ranks
(``collectives/header.py``). ``hash()`` of a tuple of ints, strs excluded, is the same in
every process (no hash randomisation for ints), so the tuples hold codes, not names.
"""
import numpy as np

OPS = ("sum", "avg", "min", "max", "prod")

# "auto" and every algorithm of algorithms/ (``algorithms.ALGORITHMS`` holds the same names,
# checked by tests/unit/test_tables.py); kept here so that the configuration can validate
# RINGREDUCE_ALGORITHM without importing the algorithms and MPI.
ALGORITHM_NAMES = ("auto", "ring", "tree", "rhd", "doubling", "shm", "hierarchical", "direct")

# Every numeric numpy dtype; the index is the dtype's code in the header. bfloat16 (numpy's
# through ml_dtypes, whose ``kind`` is "V": test for it by name, not by kind) gets the next
# code when it is first met: importing ml_dtypes costs more than the rest of ringreduce, so it
# is imported only once a bfloat16 array (whose owner imported it) or a bf16 compression
# arrives.
DTYPES = tuple(np.dtype(c) for c in (
    "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float16", "float32", "float64", "complex64", "complex128"))
DTYPE_CODE = {dt: i for i, dt in enumerate(DTYPES)}
BFLOAT16_CODE = len(DTYPES)

# Gradient compression: the name of the 16-bit type float32 data travels as. A compression's
# own name ("bf16", "fp16") is its format in the kernel tables (kernels/half.py).
COMPRESSIONS = {None: None, "bf16": "bfloat16", "fp16": "float16"}


def bfloat16():
    """numpy's bfloat16 dtype (ml_dtypes), registered in :data:`DTYPE_CODE`."""
    import ml_dtypes
    dt = np.dtype(ml_dtypes.bfloat16)
    DTYPE_CODE.setdefault(dt, BFLOAT16_CODE)
    return dt


def is_bfloat16(dtype):
    return dtype.kind == "V" and dtype.name == "bfloat16"


# Every collective; its index leads the signature, so ranks in different collectives never
# agree whatever their arguments.
CALLS = ("allreduce", "grouped_allreduce", "broadcast", "allgather", "reduce_scatter",
         "barrier", "DistributedOptimizer")

_MASK = 0x7FFFFFFFFFFFFFFF


def check_dtype(dtype):
    """TypeError unless ``dtype`` is one of :data:`DTYPES` or bfloat16."""
    if dtype not in DTYPE_CODE:
        if is_bfloat16(dtype):
            bfloat16()
            return
        raise TypeError(f"unsupported dtype {dtype}; expected one of "
                        f"{', '.join(str(d) for d in DTYPES)}, bfloat16")


def check_op_dtype(op, dtype):
    """TypeError for an op the dtype has no meaning for (the same rule on every backend)."""
    check_dtype(dtype)
    if op == "avg" and dtype.kind in "iu":
        raise TypeError(f"op='avg' needs a floating or complex dtype, got {dtype}; "
                        "use op='sum' and divide, or cast first")
    if op in ("min", "max") and dtype.kind == "c":
        raise TypeError(f"op={op!r} is not defined for complex dtype {dtype}; "
                        "complex supports 'sum', 'avg' and 'prod'")


def is_floating(dtype):
    """float16/32/64 and bfloat16."""
    return dtype.kind == "f" or is_bfloat16(dtype)


def check_compression(compression, dtype, op):
    """The wire format of ``compression`` ("bf16", "fp16") for ``dtype`` data (None for
    none); TypeError or ValueError for what cannot be compressed."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; expected None, 'bf16' or "
                         "'fp16'")
    if compression is None:
        return None
    if dtype != np.float32:
        raise TypeError(f"compression={compression!r} takes float32 data, got {dtype}")
    if op not in ("sum", "avg"):
        raise ValueError(f"compression={compression!r} serves op 'sum' and 'avg', got op={op!r}")
    return compression


def compression_code(compression):
    return tuple(COMPRESSIONS).index(compression)


def check_op(op):
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")


def check_algorithm(algorithm):
    if algorithm not in ALGORITHM_NAMES:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of "
                         f"{', '.join(ALGORITHM_NAMES)}")


def signature(call, *fields):
    """The 63-bit signature of collective ``call`` (a name of :data:`CALLS`) with ``fields``,
    ints and tuples of ints."""
    return hash((CALLS.index(call),) + fields) & _MASK


def op_code(op):
    return OPS.index(op)


def algorithm_code(algorithm):
    return ALGORITHM_NAMES.index(algorithm)
