"""Torch tensors as the arrays ringreduce moves, and torch's reduce ops as its op names.

A CPU tensor becomes a numpy view of its own memory (``t.detach().numpy()``: no copy, any
strides), so a collective reads and writes the tensor itself; the host memory backend takes
it from there. A CUDA tensor is passed as it is: its ``__cuda_array_interface__`` sends it
down the device path (``memory/device.py``). Everything else is a ``TypeError`` that says
what was expected and what was given, raised before any message is sent.

bfloat16. numpy has no bfloat16 of its own and torch's ``.numpy()`` refuses one, so a CPU
bfloat16 tensor is viewed through its bits: ``t.view(torch.int16).numpy()`` viewed as
ml_dtypes' bfloat16 (still no copy). A CUDA one describes itself to
``__cuda_array_interface__`` as raw two-byte voids (``"<V2"``), which says nothing of the
format, so it becomes a Numba device array over the same bits, typed bfloat16, when the CUDA
kernels reduce bfloat16. ml_dtypes is imported only once a bfloat16 tensor arrives
(``core.tables.bfloat16``).
"""
import numpy as np
import torch
import torch.distributed as dist

from ..core.tables import bfloat16, is_bfloat16

# torch.distributed.ReduceOp -> ringreduce's op names (core.tables.OPS)
_OPS = {
    dist.ReduceOp.RedOpType.SUM: "sum",
    dist.ReduceOp.RedOpType.AVG: "avg",
    dist.ReduceOp.RedOpType.MIN: "min",
    dist.ReduceOp.RedOpType.MAX: "max",
    dist.ReduceOp.RedOpType.PRODUCT: "prod",
}
SUPPORTED_OPS = "SUM, AVG, MIN, MAX, PRODUCT"

# What the kernels reduce (core.tables.DTYPES): every torch dtype that numpy can view, and
# bfloat16 through its bits.
DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.float16,
           torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)
DTYPE_NAMES = ("int8, uint8, int16, int32, int64, float16, bfloat16, float32, float64, "
               "complex64, complex128")


def op_name(op):
    """ringreduce's name for a ``torch.distributed.ReduceOp`` (or its ``RedOpType``);
    ``ValueError`` naming the supported ones for BAND, BOR, BXOR, PREMUL_SUM and the like."""
    kind = getattr(op, "op", op)
    name = _OPS.get(kind)
    if name is None:
        shown = getattr(kind, "name", None) or repr(op)
        raise ValueError(f"the ringreduce backend reduces with ReduceOp {SUPPORTED_OPS}, got "
                         f"ReduceOp.{shown}")
    return name


def check_tensor(t, what="tensor"):
    """``TypeError`` unless ``t`` is a dense CPU or CUDA tensor of a dtype ringreduce
    reduces."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{what} must be a dense (strided) tensor, got layout {t.layout}; "
                        "convert it with .to_dense() first")
    if t.dtype not in DTYPES:
        raise TypeError(f"{what} has dtype {t.dtype}; ringreduce takes {DTYPE_NAMES}")
    if t.device.type not in ("cpu", "cuda"):
        raise TypeError(f"{what} must be on the CPU or a CUDA device, got device {t.device}")
    if t.is_conj():
        raise TypeError(f"{what} is a lazily conjugated view; call .resolve_conj() first")


def view(t, what="tensor"):
    """The array ringreduce works on for tensor ``t``, sharing its memory: a numpy view for a
    CPU tensor, the (detached) tensor itself for a CUDA one."""
    check_tensor(t, what)
    t = t.detach()
    if t.dtype == torch.bfloat16:
        if t.device.type == "cpu":
            return t.view(torch.int16).numpy().view(bfloat16())
        return _cuda_bfloat16(t, what)
    return t.numpy() if t.device.type == "cpu" else t


def _cuda_bfloat16(t, what):
    """A Numba device array of dtype bfloat16 over CUDA tensor ``t``'s memory (module
    docstring); ``TypeError`` naming what the CUDA kernels take where bfloat16 is not one."""
    from ..gpu import require_cuda
    cu = require_cuda()
    if cu.sim:
        return t  # the device backend says what the simulator takes (its own arrays only)
    if bfloat16() not in cu.ck.DTYPES:
        raise TypeError(f"{what} is a CUDA bfloat16 tensor, but the CUDA kernels here take "
                        f"{', '.join(str(d) for d in cu.ck.DTYPES)}; reduce it on the CPU "
                        "or as float32")
    return cu.cuda.as_cuda_array(t.view(torch.int16)).view(bfloat16())


def to_tensor(a):
    """A CPU tensor over the memory of numpy array ``a`` (the inverse of :func:`view`,
    bfloat16 included)."""
    if is_bfloat16(a.dtype):
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.as_tensor(a)


def flat_view(t, what="tensor"):
    """:func:`view` of a contiguous tensor as one dimension."""
    if not t.is_contiguous():
        raise TypeError(f"{what} must be contiguous, got a tensor of shape {tuple(t.shape)} "
                        f"with strides {t.stride()}")
    return view(t.reshape(-1), what)
