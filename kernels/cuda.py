"""CUDA kernels in Numba-CUDA: local reductions, avg scaling, optimizer updates, fusion pack.

The same shapes as the CPU kernels: a reduction kernel is ``(dst, src) -> None``
(``dst op= src``), chosen once per allreduce call by :func:`reduce_kernel`; the scaling for
op="avg" is ``(dst, divisor)``; ``sgd_update`` and ``adam_update`` take the arguments of their
CPU twins in ``optim.py``. Every launcher also takes ``stream=0`` (0: the default stream).

Arrays are 1-D, C-contiguous device arrays: Numba device arrays or anything exposing
``__cuda_array_interface__`` (CuPy, PyTorch). The latter go through ``cuda.as_cuda_array``,
which synchronises the producer's stream as the interface asks; pass Numba device arrays
where that matters.

Every kernel is a grid-stride loop: one full wave of blocks (multiprocessor count times the
blocks of ``THREADS_PER_BLOCK`` threads that fit on one multiprocessor) walks the whole array,
so the launch size never depends on the array's length and no block waits in a second wave.
:func:`set_launch_config` overrides the grid, so tests can force a grid smaller than the
array and make the loop wrap.

This module imports without a GPU and without numba-cuda; :func:`cuda_available` says whether
the kernels can run (it is also true under the simulator, ``NUMBA_ENABLE_CUDASIM=1``).

Semantics match ``cpu.py``: min/max let a NaN in either operand win, like numpy's
``minimum``/``maximum``; integer sums and products wrap; avg on integers divides in float64
and truncates toward zero, exactly as the CPU kernel does. float16 arithmetic runs natively
on devices of compute capability 5.3 or newer (all ops; scaling divides in float32, which
rounds to the same float16 as an exact division would).
"""
import functools

import numpy as np

from .optim import adam_element, adam_scalars, sgd_element

try:
    from numba import cuda as _cuda
except ImportError:  # numba-cuda not installed: the module still imports, nothing launches
    _cuda = None

if _cuda is not None and not hasattr(np, "row_stack"):
    # numba-cuda 0.30.4 registers an overload for np.row_stack when it compiles its first
    # kernel; numpy 2.5 removed that name (an alias of vstack since numpy 1.x), so every
    # compile fails with AttributeError (NVIDIA/numba-cuda#907, which will not be fixed there;
    # seen on an H200 image with numpy 2.5.2). Restoring numpy's own alias is the whole fix.
    np.row_stack = np.vstack

OPS = ("sum", "min", "max", "prod")
DTYPES = tuple(np.dtype(name) for name in (
    "float16", "float32", "float64",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"))
OPTIM_DTYPES = (np.dtype("float32"), np.dtype("float64"))

# 256 threads is a multiple of the warp size that divides every multiprocessor's thread limit
# (1536 or 2048 on recent parts), so whole blocks fill each multiprocessor; a grid-stride loop
# needs no particular block shape beyond that.
THREADS_PER_BLOCK = 256

# Elements each thread of the reduction and scaling kernels handles per loop trip (written out
# by hand in those kernels, hence fixed). On an H200, 256 MiB float32, against the copy's
# bandwidth: one element a trip gave sum 86% and scale 67%, four gave 89% and 90%
# (benchmarks/gpu.py rows "reduce sum", "scale (avg)"; the one-element variants were timed
# the same way beside it). The optimizer kernels already load 3-4 arrays a trip and reach
# 86-93% without unrolling. A grid of four waves instead of one moved no kernel consistently.
UNROLL = 4

_forced = {"blocks": None, "threads": None}


def cuda_available():
    """True when kernels can launch: numba-cuda is installed and sees a GPU or the simulator."""
    return _cuda is not None and _cuda.is_available()


def unavailable_reason():
    if _cuda is None:
        return "numba-cuda is not installed (pip install numba-cuda)"
    if not _cuda.is_available():
        return "no CUDA GPU or driver is visible to numba-cuda"
    return "CUDA is available"


def _require_cuda():
    if not cuda_available():
        raise RuntimeError("ringreduce.kernels.cuda: " + unavailable_reason())


def set_launch_config(blocks=None, threads=None):
    """Force the grid (None: derive it from the device). Returns the previous setting."""
    previous = dict(_forced)
    _forced["blocks"] = blocks
    _forced["threads"] = threads
    return previous


@functools.lru_cache(maxsize=None)
def _wave_blocks(device_id, threads):
    device = _cuda.get_current_device()
    # The simulator's device has no attributes; any small grid will do there.
    sms = getattr(device, "MULTIPROCESSOR_COUNT", 1)
    per_sm = getattr(device, "MAX_THREADS_PER_MULTIPROCESSOR", threads) // threads
    return sms * max(per_sm, 1)


def launch_config(n):
    """(blocks, threads) for an array of ``n`` elements; ``n`` must be positive."""
    threads = _forced["threads"] or THREADS_PER_BLOCK
    blocks = _forced["blocks"]
    if blocks is None:
        device = _cuda.get_current_device()
        blocks = _wave_blocks(getattr(device, "id", 0), threads)
    # No more blocks than elements need: tiny arrays launch tiny grids.
    return min(blocks, -(-n // threads)), threads


def _as_device(x, name):
    if not _cuda.devicearray.is_cuda_ndarray(x):
        if not hasattr(x, "__cuda_array_interface__"):
            raise TypeError(f"{name}: expected a CUDA device array, got {type(x).__name__}")
        x = _cuda.as_cuda_array(x)
    return x


def _as_vector(x, name, dtype=None, size=None):
    x = _as_device(x, name)
    if x.ndim != 1 or not x.is_c_contiguous():
        raise ValueError(f"{name}: expected a 1-D contiguous array, got shape {x.shape} "
                         f"with strides {x.strides}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {x.dtype}")
    if size is not None and x.size != size:
        raise ValueError(f"{name}: expected {size} elements, got {x.size}")
    return x


def _vector_type(dtype):
    from numba import from_dtype

    return from_dtype(dtype)[::1]


# ---------------------------------------------------------------------------------------
# Reductions. The combine functions are plain Python so that the simulator runs the same
# source; each becomes a device function inlined into its kernel.

def _sum(a, b):
    return a + b


def _prod(a, b):
    return a * b


def _min(a, b):
    # "b != b" is true only for NaN: a NaN in src wins, and one in dst stays (b < NaN is
    # false). The store is unconditional so that every element is written, as counted.
    return b if (b < a or b != b) else a


def _max(a, b):
    return b if (b > a or b != b) else a


_COMBINE = {"sum": _sum, "prod": _prod, "min": _min, "max": _max}


def _check_dtype(dtype, allowed, what):
    dtype = np.dtype(dtype)
    if dtype not in allowed:
        raise TypeError(f"{what}: unsupported dtype {dtype}; expected one of "
                        f"{', '.join(str(d) for d in allowed)}")
    return dtype


@functools.lru_cache(maxsize=None)
def _reduce_compiled(op, dtype):
    from numba import void

    combine = _cuda.jit(device=True)(_COMBINE[op])
    vec = _vector_type(dtype)

    @_cuda.jit(void(vec, vec))
    def kernel(dst, src):
        n = dst.size
        stride = _cuda.gridsize(1)
        i = _cuda.grid(1)
        # UNROLL elements a trip, every load before any store. The compiler may not move a
        # load above a store to another, possibly aliased, array, so a one-element loop keeps
        # only two loads per thread in flight, too few to cover the memory latency.
        while i + (UNROLL - 1) * stride < n:
            i1 = i + stride
            i2 = i1 + stride
            i3 = i2 + stride
            a0 = dst[i]
            a1 = dst[i1]
            a2 = dst[i2]
            a3 = dst[i3]
            b0 = src[i]
            b1 = src[i1]
            b2 = src[i2]
            b3 = src[i3]
            dst[i] = combine(a0, b0)
            dst[i1] = combine(a1, b1)
            dst[i2] = combine(a2, b2)
            dst[i3] = combine(a3, b3)
            i = i3 + stride
        while i < n:
            dst[i] = combine(dst[i], src[i])
            i += stride

    return kernel


def reduce_kernel(op, dtype):
    """The ``(dst, src, stream=0)`` kernel computing ``dst op= src`` for ``op`` on ``dtype``.

    Compiles on the first request for an (op, dtype) pair; later requests reuse it.
    """
    if op not in _COMBINE:
        raise ValueError(f"unknown reduction op {op!r}; expected one of {', '.join(OPS)}")
    dtype = _check_dtype(dtype, DTYPES, "reduce_kernel")
    _require_cuda()
    kernel = _reduce_compiled(op, dtype)

    def reduce(dst, src, stream=0):
        dst = _as_vector(dst, "dst", dtype)
        src = _as_vector(src, "src", dtype, dst.size)
        if dst.size:
            blocks, threads = launch_config(dst.size)
            kernel[blocks, threads, stream](dst, src)

    reduce.__name__ = f"cuda_{op}_{dtype}"
    return reduce


@functools.lru_cache(maxsize=None)
def _scale_compiled(dtype):
    from numba import float32, float64, void

    # float16/float32 divide in float32 (both rounding steps together give the correctly
    # rounded result); float64 and the integers divide in float64 like the CPU kernel,
    # whose store then truncates integers toward zero.
    divisor_type = float32 if dtype.itemsize <= 4 and dtype.kind == "f" else float64

    @_cuda.jit(void(_vector_type(dtype), divisor_type))
    def kernel(dst, divisor):
        n = dst.size
        stride = _cuda.gridsize(1)
        i = _cuda.grid(1)
        # Unrolled like the reduction: with one load per trip the loop would be latency-bound.
        while i + (UNROLL - 1) * stride < n:
            i1 = i + stride
            i2 = i1 + stride
            i3 = i2 + stride
            a0 = dst[i]
            a1 = dst[i1]
            a2 = dst[i2]
            a3 = dst[i3]
            dst[i] = a0 / divisor
            dst[i1] = a1 / divisor
            dst[i2] = a2 / divisor
            dst[i3] = a3 / divisor
            i = i3 + stride
        while i < n:
            dst[i] = dst[i] / divisor
            i += stride

    return kernel, divisor_type


def scale_kernel(dtype):
    """The ``(dst, divisor, stream=0)`` kernel behind op="avg": ``dst /= divisor``."""
    dtype = _check_dtype(dtype, DTYPES, "scale_kernel")
    _require_cuda()
    kernel, divisor_type = _scale_compiled(dtype)
    cast = np.float32 if divisor_type.bitwidth == 32 else np.float64

    def scale(dst, divisor, stream=0):
        dst = _as_vector(dst, "dst", dtype)
        if dst.size:
            blocks, threads = launch_config(dst.size)
            kernel[blocks, threads, stream](dst, cast(divisor))

    scale.__name__ = f"cuda_scale_{dtype}"
    return scale


# ---------------------------------------------------------------------------------------
# Optimizer twins; the element functions come from optim.py, shared with the CPU kernels.

@functools.lru_cache(maxsize=None)
def _sgd_compiled(dtype):
    from numba import boolean, from_dtype, void

    element = _cuda.jit(device=True)(sgd_element)
    vec = _vector_type(dtype)
    s = from_dtype(dtype)

    @_cuda.jit(void(vec, vec, vec, s, s, s, boolean, s))
    def kernel(param, grad, buf, lr, momentum, weight_decay, nesterov, grad_scale):
        start = _cuda.grid(1)
        stride = _cuda.gridsize(1)
        if momentum != 0:
            for i in range(start, param.size, stride):
                p, b = element(param[i], grad[i], buf[i], lr, momentum, weight_decay,
                               nesterov, grad_scale)
                param[i] = p
                buf[i] = b
        else:
            for i in range(start, param.size, stride):
                # momentum is zero here: it stands in for the unused buffer value.
                p, _ = element(param[i], grad[i], momentum, lr, momentum, weight_decay,
                               nesterov, grad_scale)
                param[i] = p

    return kernel


def sgd_update(param, grad, momentum_buf, lr, momentum, weight_decay, nesterov, grad_scale,
               stream=0):
    """CUDA twin of ``optim.sgd_update`` (same arguments, same semantics)."""
    _require_cuda()
    param = _as_vector(param, "param")
    dtype = _check_dtype(param.dtype, OPTIM_DTYPES, "sgd_update")
    grad = _as_vector(grad, "grad", dtype, param.size)
    if nesterov and momentum == 0:
        raise ValueError("sgd_update: nesterov needs momentum != 0")
    if momentum != 0:
        momentum_buf = _as_vector(momentum_buf, "momentum_buf", dtype, param.size)
    else:
        # Never read or written without momentum; param fills the slot so any buffer,
        # even an empty one, is accepted, as on the CPU.
        momentum_buf = param
    if not param.size:
        return
    t = dtype.type
    blocks, threads = launch_config(param.size)
    _sgd_compiled(dtype)[blocks, threads, stream](
        param, grad, momentum_buf, t(lr), t(momentum), t(weight_decay), bool(nesterov),
        t(grad_scale))


@functools.lru_cache(maxsize=None)
def _adam_compiled(dtype):
    from numba import from_dtype, void

    element = _cuda.jit(device=True)(adam_element)
    vec = _vector_type(dtype)
    s = from_dtype(dtype)

    @_cuda.jit(void(vec, vec, vec, vec, s, s, s, s, s, s, s, s))
    def kernel(param, grad, m, v, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay,
               grad_scale, step_size, bias_correction2_sqrt):
        for i in range(_cuda.grid(1), param.size, _cuda.gridsize(1)):
            p, mi, vi = element(param[i], grad[i], m[i], v[i], one_minus_beta1, beta2,
                                one_minus_beta2, eps, weight_decay, grad_scale, step_size,
                                bias_correction2_sqrt)
            param[i] = p
            m[i] = mi
            v[i] = vi

    return kernel


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, grad_scale,
                stream=0):
    """CUDA twin of ``optim.adam_update`` (same arguments, same semantics)."""
    _require_cuda()
    param = _as_vector(param, "param")
    dtype = _check_dtype(param.dtype, OPTIM_DTYPES, "adam_update")
    grad = _as_vector(grad, "grad", dtype, param.size)
    m = _as_vector(m, "m", dtype, param.size)
    v = _as_vector(v, "v", dtype, param.size)
    # Host-side float64 scalars, rounded to dtype once, exactly as the CPU twin does.
    step_size, bias_correction2_sqrt = adam_scalars(lr, beta1, beta2, step)
    if not param.size:
        return
    t = dtype.type
    blocks, threads = launch_config(param.size)
    _adam_compiled(dtype)[blocks, threads, stream](
        param, grad, m, v, t(1.0 - float(beta1)), t(beta2), t(1.0 - float(beta2)), t(eps),
        t(weight_decay), t(grad_scale), t(step_size), t(bias_correction2_sqrt))


# ---------------------------------------------------------------------------------------
# Fusion buffer. One asynchronous device-to-device memcpy per tensor on the given stream, no
# kernel: the bytes move at copy bandwidth, and a single fused launch would need a table of
# raw device pointers, which Numba-CUDA kernels cannot dereference without hand-written LLVM
# intrinsics. The copies go straight to the driver (cuMemcpyDtoDAsync through numba-cuda's
# own wrapper, which checks the result). Measured on an H200 (benchmarks/gpu.py, row "pack 64
# tensors", 64 x 4 MiB): through Numba's ``copy_to_device`` on slices it took 9.3 ms, as that
# call costs about 160 us of host time and each slice 34 us; with the raw call (8 us) it takes
# 0.61 ms, 21% of the copy's bandwidth. The host's ~9 us per tensor, checks included, is what
# remains, so few large tensors per bucket pack fastest.

_SIMULATOR = False
if _cuda is not None:
    from numba import config as _config

    _SIMULATOR = bool(_config.ENABLE_CUDASIM)
    if not _SIMULATOR:
        from numba.cuda.cudadrv import driver as _driver


def _copy_elements(dst, dst_offset, src, src_offset, count, stream):
    """``count`` elements from ``src[src_offset:]`` to ``dst[dst_offset:]``, same dtype."""
    if _SIMULATOR:  # the simulator's arrays have no device pointers
        dst = dst.reshape(dst.size)[dst_offset:dst_offset + count]
        dst.copy_to_device(src.reshape(src.size)[src_offset:src_offset + count], stream=stream)
        return
    item = dst.dtype.itemsize
    _driver.driver.cuMemcpyDtoDAsync(
        dst.device_ctypes_pointer.value + dst_offset * item,
        src.device_ctypes_pointer.value + src_offset * item,
        count * item, _driver._stream_handle(stream))


def _fusion_layout(tensors, fusion_buf, offsets):
    """Validated (device tensor, offset) pairs of the non-empty tensors, and the buffer."""
    fusion_buf = _as_vector(fusion_buf, "fusion_buf")
    tensors = list(tensors)
    offsets = list(offsets)
    if len(tensors) != len(offsets):
        raise ValueError(f"{len(tensors)} tensors but {len(offsets)} offsets")
    pairs = []
    for k, (tensor, offset) in enumerate(zip(tensors, offsets)):
        tensor = _as_device(tensor, f"tensor {k}")
        if not tensor.is_c_contiguous():
            raise ValueError(f"tensor {k}: expected a contiguous array, got strides "
                             f"{tensor.strides}")
        if tensor.dtype != fusion_buf.dtype:
            raise TypeError(f"tensor {k}: dtype {tensor.dtype} differs from the fusion "
                            f"buffer's {fusion_buf.dtype}")
        offset = int(offset)
        if offset < 0 or offset + tensor.size > fusion_buf.size:
            raise ValueError(f"tensor {k}: elements [{offset}, {offset + tensor.size}) lie "
                             f"outside the fusion buffer of {fusion_buf.size}")
        if tensor.size:
            pairs.append((tensor, offset))
    return pairs, fusion_buf


def pack(buffers, fusion_buf, offsets, stream=0):
    """Copy each contiguous device tensor (any shape) into ``fusion_buf`` at its element
    offset, asynchronously on ``stream``."""
    _require_cuda()
    pairs, fusion_buf = _fusion_layout(buffers, fusion_buf, offsets)
    for tensor, offset in pairs:
        _copy_elements(fusion_buf, offset, tensor, 0, tensor.size, stream)


def unpack(fusion_buf, buffers, offsets, stream=0):
    """Copy each tensor's window of ``fusion_buf`` back into the tensor, on ``stream``."""
    _require_cuda()
    pairs, fusion_buf = _fusion_layout(buffers, fusion_buf, offsets)
    for tensor, offset in pairs:
        _copy_elements(tensor, 0, fusion_buf, offset, tensor.size, stream)
