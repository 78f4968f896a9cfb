"""Torch tensors as the arrays ringreduce moves, and torch's reduce ops as its op names.

A CPU tensor becomes a numpy view of its own memory (``t.detach().numpy()``: no copy, any
strides), so a collective reads and writes the tensor itself; the host memory backend takes
it from there. A CUDA tensor is passed as it is: its ``__cuda_array_interface__`` sends it
down the device path (``memory/device.py``). Everything else is a ``TypeError`` that says
what was expected and what was given, raised before any message is sent.
"""
import torch
import torch.distributed as dist

# torch.distributed.ReduceOp -> ringreduce's op names (core.tables.OPS)
_OPS = {
    dist.ReduceOp.RedOpType.SUM: "sum",
    dist.ReduceOp.RedOpType.AVG: "avg",
    dist.ReduceOp.RedOpType.MIN: "min",
    dist.ReduceOp.RedOpType.MAX: "max",
    dist.ReduceOp.RedOpType.PRODUCT: "prod",
}
SUPPORTED_OPS = "SUM, AVG, MIN, MAX, PRODUCT"

# What the kernels reduce (core.tables.DTYPES): every torch dtype that numpy can view.
_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.float16,
           torch.float32, torch.float64, torch.complex64, torch.complex128)
DTYPE_NAMES = "int8, uint8, int16, int32, int64, float16, float32, float64, complex64, complex128"


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
    if t.dtype not in _DTYPES:
        later = " (bfloat16 comes with issue 14)" if t.dtype == torch.bfloat16 else ""
        raise TypeError(f"{what} has dtype {t.dtype}; ringreduce takes {DTYPE_NAMES}{later}")
    if t.device.type not in ("cpu", "cuda"):
        raise TypeError(f"{what} must be on the CPU or a CUDA device, got device {t.device}")
    if t.is_conj():
        raise TypeError(f"{what} is a lazily conjugated view; call .resolve_conj() first")


def view(t, what="tensor"):
    """The array ringreduce works on for tensor ``t``, sharing its memory: a numpy view for a
    CPU tensor, the (detached) tensor itself for a CUDA one."""
    check_tensor(t, what)
    t = t.detach()
    return t.numpy() if t.device.type == "cpu" else t


def flat_view(t, what="tensor"):
    """:func:`view` of a contiguous tensor as one dimension."""
    if not t.is_contiguous():
        raise TypeError(f"{what} must be contiguous, got a tensor of shape {tuple(t.shape)} "
                        f"with strides {t.stride()}")
    return view(t.reshape(-1), what)
