"""Argument validation shared by every op: one place, one message style.

Every check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError``
(wrong shape or value) with a message that names the argument, says what was
expected and what was given. Ops validate in their public function, never inside
a kernel.
"""

from __future__ import annotations

import math
import numbers
import os

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIMS = range(
    8, 257, 8
)  # head dims the attention kernels take: multiples of 8 up to 256
# Value checks that read a tensor's data (``cu_seqlens`` sorted, say) wait for the GPU when the
# tensor lives there, so they run on CPU tensors only, unless this switch is set (for debugging).
CHECK_VALUES = os.environ.get("KERNELS_CHECK_VALUES", "0") == "1"


def _dtype_names(dtypes) -> str:
    names = [str(d).replace("torch.", "") for d in dtypes]
    return (
        ", ".join(names[:-1]) + " or " + names[-1]
        if len(names) > 1
        else names[0]
    )


def check_tensor(name: str, x, ndim: int, layout: str) -> None:
    """``x`` must be a tensor with ``ndim`` dimensions; ``layout`` names them, e.g. ``"[B, H, T, D]"``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}"
        )
    if x.dim() != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions {layout}, got shape {tuple(x.shape)}"
        )


def check_float_dtypes(names: dict, allowed=FLOAT_DTYPES) -> torch.dtype:
    """All tensors in ``names`` (name -> tensor) share one floating dtype from ``allowed``; returns it."""
    for name, x in names.items():
        if x.dtype not in allowed:
            raise TypeError(
                f"{name} must be {_dtype_names(allowed)}, got {x.dtype}"
            )
    dtypes = {x.dtype for x in names.values()}
    if len(dtypes) > 1:
        given = ", ".join(f"{n} {x.dtype}" for n, x in names.items())
        raise TypeError(
            f"{', '.join(names)} must have the same dtype, got {given}"
        )
    return dtypes.pop()


def check_same_device(names: dict) -> torch.device:
    """All tensors in ``names`` (name -> tensor) live on one device; returns it."""
    devices = {x.device for x in names.values()}
    if len(devices) > 1:
        given = ", ".join(f"{n} on {x.device}" for n, x in names.items())
        raise ValueError(
            f"{', '.join(names)} must be on the same device, got {given}"
        )
    return devices.pop()


def check_dim(
    name: str, x: torch.Tensor, dim: int, what: str, expected: int
) -> None:
    """Size ``dim`` of ``x`` (described as ``what``) must equal ``expected``."""
    if x.shape[dim] != expected:
        raise ValueError(
            f"{name} must have {what} {expected}, got {x.shape[dim]} (shape {tuple(x.shape)})"
        )


def check_shape(name: str, x: torch.Tensor, expected, layout: str) -> None:
    """``x`` (laid out as ``layout``, e.g. ``"[b, d, L]"``) must have exactly the shape ``expected``."""
    if tuple(x.shape) != tuple(expected):
        raise ValueError(
            f"{name} must have shape {layout} = {tuple(expected)}, got {tuple(x.shape)}"
        )


def check_float32(name: str, x, layout: str) -> None:
    """``x`` must be a real float32 tensor: a parameter kept in full precision."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}"
        )
    if x.is_complex():
        raise TypeError(
            f"{name} must be a real float32 tensor (complex state matrices are not supported), "
            f"got {x.dtype}"
        )
    if x.dtype != torch.float32:
        raise TypeError(
            f"{name} must be float32 (it is a parameter, kept in full precision), got {x.dtype}"
        )


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def check_scale(name: str, value) -> None:
    """``value`` must be ``None`` or a positive finite real number."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a positive finite number or None, got {type(value).__name__} {value!r}"
        )
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"{name} must be a positive finite number or None, got {value!r}"
        )


def values_checkable(x: torch.Tensor) -> bool:
    """Whether a check may read ``x``'s values: on the CPU always, elsewhere under ``CHECK_VALUES``."""
    return x.device.type == "cpu" or (CHECK_VALUES and x.device.type != "meta")


def check_attention_qkv(
    q, k, v, head_dims=HEAD_DIMS, same_v_dim: bool = True
) -> None:
    """``q [B, H, Tq, D]``, ``k [B, Hkv, Tk, D]``, ``v [B, Hkv, Tk, Dv]`` for attention: one float
    dtype and device, head dims in ``head_dims`` (default: a multiple of 8 up to 256), ``Dv == D``
    when ``same_v_dim``, ``H`` a multiple of ``Hkv`` (grouped-query attention), no empty dimension.
    Reads shapes, dtypes and devices only, never values."""
    check_tensor("q", q, 4, "[B, H, Tq, D]")
    check_tensor("k", k, 4, "[B, Hkv, Tk, D]")
    check_tensor("v", v, 4, "[B, Hkv, Tk, D]")
    check_float_dtypes({"q": q, "k": k, "v": v})
    check_same_device({"q": q, "k": k, "v": v})
    B, H, Tq, D = q.shape
    if k.shape[:3] != v.shape[:3] or (same_v_dim and k.shape != v.shape):
        raise ValueError(
            f"k and v must have the same shape [B, Hkv, Tk, {'D' if same_v_dim else '*'}], "
            f"got k {tuple(k.shape)} and v {tuple(v.shape)}"
        )
    check_dim("k", k, 0, "batch size (that of q)", B)
    check_dim("k", k, 3, "head dim (that of q)", D)
    what = (
        "a multiple of 8 between 8 and 256"
        if head_dims == HEAD_DIMS
        else f"between {head_dims[0]} and {head_dims[-1]}"
    )
    if D not in head_dims:
        raise ValueError(
            f"head dim D must be {what}, got {D} (q shape {tuple(q.shape)})"
        )
    if v.shape[3] not in head_dims:
        raise ValueError(
            f"head dim Dv of v must be {what}, got {v.shape[3]} (v shape {tuple(v.shape)})"
        )
    Hkv = k.shape[1]
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(
            f"the number of query heads H={H} must be a multiple of the number of "
            f"key/value heads Hkv={Hkv}"
        )
    if B == 0 or H == 0:
        raise ValueError(
            f"q must have at least one batch element and one head, got shape {tuple(q.shape)}"
        )
    if Tq == 0:
        raise ValueError(
            f"q must hold at least one query (Tq >= 1), got shape {tuple(q.shape)}"
        )
    if k.shape[2] == 0:
        raise ValueError(
            f"k and v must hold at least one key (Tk >= 1), got shape {tuple(k.shape)}"
        )


def check_decay(decay, H: int, device, check_values: bool = True) -> None:
    """``decay`` must be a finite floating tensor ``[H]`` of log-decays <= 0 on ``device``.

    Checking the values reads them back from the device, which waits for the GPU; the decoding
    step skips that part (``check_values=False``) so that a token costs no synchronisation.
    """
    check_tensor("decay", decay, 1, "[H]")
    if not decay.is_floating_point():
        raise TypeError(
            f"decay must be a floating-point tensor of log-decays, got {decay.dtype}"
        )
    if decay.shape[0] != H:
        raise ValueError(
            f"decay must have one log-decay per head, shape [{H}], got {tuple(decay.shape)}"
        )
    if decay.device != device:
        raise ValueError(
            f"decay must be on the device of q ({device}), got {decay.device}"
        )
    if decay.requires_grad:
        raise ValueError(
            "decay must not require grad: gradients with respect to the decay are not implemented"
        )
    if check_values and (not torch.isfinite(decay).all() or (decay > 0).any()):
        raise ValueError(
            f"decay must hold finite log-decays <= 0 (gamma = exp(decay) in (0, 1]), "
            f"got {decay.tolist()}"
        )
