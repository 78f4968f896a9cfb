"""horovod.torch's gradient compression (``horovod/torch/compression.py``), and where
ringreduce does better than casting.

A compressor is a class with two static methods: ``compress(tensor) -> (tensor, ctx)`` before
the allreduce and ``decompress(tensor, ctx)`` after it. ``Compression.fp16`` and
``Compression.bf16`` cast floating-point tensors to 16 bits and back, as Horovod's do, and
users may call them so.

Passed to ``allreduce``, ``allreduce_async`` or ``DistributedOptimizer`` for a float32 tensor
reduced by Average or Sum, they do not cast: the tensor goes to ringreduce's wire compression
(``compression="fp16"``/``"bf16"`` of the core calls, ``collectives/compress.py``), which
rounds each rank's values once to 16 bits, adds every pair in float32 and rounds once per
step, and scales fp16 by a power of two the ranks agree on so that no partial sum overflows.
Horovod's cast instead reduces float16 values in float16 (where a sum of large gradients
becomes inf) and allocates a 16-bit copy on each side. Any other tensor (float64, Min or
Max, integers, which both compressors leave alone) takes the compressor's own methods.
"""
import torch


class Compressor:
    """``compress(tensor) -> (tensor, ctx)`` before the allreduce, ``decompress`` after."""

    @staticmethod
    def compress(tensor):
        return tensor, None

    @staticmethod
    def decompress(tensor, ctx):
        return tensor


class NoneCompressor(Compressor):
    pass


def _cast(tensor, dtype):
    if tensor.dtype.is_floating_point and tensor.dtype != dtype:
        return tensor.to(dtype), tensor.dtype
    return tensor, None


class _CastCompressor(Compressor):
    """Floating-point tensors travel as ``wire`` (half the bytes), and come back in their
    own dtype."""
    wire = None

    @classmethod
    def compress(cls, tensor):
        return _cast(tensor, cls.wire)

    @staticmethod
    def decompress(tensor, ctx):
        return tensor if ctx is None else tensor.to(ctx)


class FP16Compressor(_CastCompressor):
    """Floating-point tensors travel as float16 (half the bytes), and come back in their
    own dtype."""
    wire = torch.float16


class BF16Compressor(_CastCompressor):
    """Floating-point tensors travel as bfloat16 (half the bytes; float32's exponent range,
    8 bits of precision), and come back in their own dtype."""
    wire = torch.bfloat16


class Compression:
    none = NoneCompressor
    fp16 = FP16Compressor
    bf16 = BF16Compressor


# The compressors whose float32 tensors ride the core's wire compression instead.
_WIRE = {FP16Compressor: "fp16", BF16Compressor: "bf16"}


def split(compression, tensor, op):
    """``(wire, compressor)`` for reducing ``tensor`` by ringreduce op ``op`` under Horovod's
    ``compression``: the core's ``compression=`` ("fp16", "bf16" or None) and the compressor
    whose ``compress``/``decompress`` still run around the call (module docstring)."""
    if not (hasattr(compression, "compress") and hasattr(compression, "decompress")):
        raise TypeError(f"compression must be a compressor such as hvd.Compression.bf16 (with "
                        f"compress and decompress), got {compression!r}")
    wire = _WIRE.get(compression) if tensor.dtype == torch.float32 and op in (
        "sum", "avg") else None
    return wire, (NoneCompressor if wire else compression)
