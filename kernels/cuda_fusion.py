"""Fusion buffer copies on the device: :func:`pack` tensors into one buffer, :func:`unpack`
them back, both asynchronous on a stream, and no kernel.

One device-to-device memcpy per tensor moves the bytes at copy bandwidth; a single fused
launch would need a table of raw device pointers, which Numba-CUDA kernels cannot dereference
without hand-written LLVM intrinsics. The copies go straight to the driver (cuMemcpyDtoDAsync
through numba-cuda's own wrapper, which checks the result). Measured on an H200
(benchmarks/gpu.py, row "pack 64 tensors", 64 x 4 MiB): through Numba's ``copy_to_device`` on
slices it took 9.3 ms, as that call costs about 160 us of host time and each slice 34 us; with
the raw call (8 us) it takes 0.61 ms, 21% of the copy's bandwidth. The host's ~9 us per
tensor, checks included, is what remains, so few large tensors per bucket pack fastest.
"""
import numpy as np

from .cuda_launch import as_device, as_vector, numba_cuda, require_cuda

_SIMULATOR = False
if numba_cuda is not None:
    from numba import config as _config

    _SIMULATOR = bool(_config.ENABLE_CUDASIM)
    if not _SIMULATOR:
        from numba.cuda.cudadrv import driver as _driver


def _copy_elements(dst, dst_offset, src, src_offset, count, stream):
    """``count`` elements from ``src[src_offset:]`` to ``dst[dst_offset:]``, same dtype."""
    if _SIMULATOR:  # the simulator's arrays have no device pointers, but numpy arrays
        dst = dst.reshape(dst.size)[dst_offset:dst_offset + count]._ary
        src = src.reshape(src.size)[src_offset:src_offset + count]._ary
        # As bytes: the simulator's own copy casts, and numpy has no cast from the "V2" its
        # slices of a bfloat16 array report back to bfloat16.
        dst.view(np.uint8)[...] = src.view(np.uint8)
        return
    item = dst.dtype.itemsize
    _driver.driver.cuMemcpyDtoDAsync(
        dst.device_ctypes_pointer.value + dst_offset * item,
        src.device_ctypes_pointer.value + src_offset * item,
        count * item, _driver._stream_handle(stream))


def _fusion_layout(tensors, fusion_buf, offsets):
    """Validated (device tensor, offset) pairs of the non-empty tensors, and the buffer."""
    fusion_buf = as_vector(fusion_buf, "fusion_buf")
    tensors = list(tensors)
    offsets = list(offsets)
    if len(tensors) != len(offsets):
        raise ValueError(f"{len(tensors)} tensors but {len(offsets)} offsets")
    pairs = []
    for k, (tensor, offset) in enumerate(zip(tensors, offsets)):
        tensor = as_device(tensor, f"tensor {k}")
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
    require_cuda()
    pairs, fusion_buf = _fusion_layout(buffers, fusion_buf, offsets)
    for tensor, offset in pairs:
        _copy_elements(fusion_buf, offset, tensor, 0, tensor.size, stream)


def unpack(fusion_buf, buffers, offsets, stream=0):
    """Copy each tensor's window of ``fusion_buf`` back into the tensor, on ``stream``."""
    require_cuda()
    pairs, fusion_buf = _fusion_layout(buffers, fusion_buf, offsets)
    for tensor, offset in pairs:
        _copy_elements(tensor, 0, fusion_buf, offset, tensor.size, stream)
