"""FlashAttention's public function and its argument checks."""

from __future__ import annotations

import numbers

import torch

from .._checks import (
    check_attention_qkv,
    check_bool,
    check_scale,
    check_tensor,
    values_checkable,
)
from .op import flash_attention_fwd

HEAD_DIMS = range(1, 257)  # any head dim up to 256, for q/k and for v


def _check_window(window, causal):
    if (
        not isinstance(window, (tuple, list))
        or len(window) != 2
        or not all(
            isinstance(w, numbers.Integral) and not isinstance(w, bool)
            for w in window
        )
    ):
        raise TypeError(
            f"window must be a pair of ints (left, right), -1 for unbounded, got {window!r}"
        )
    left, right = (int(w) for w in window)
    if left < -1 or right < -1:
        raise ValueError(
            f"window sides must be >= 0, or -1 for unbounded, got {tuple(window)!r}"
        )
    if causal and right > 0:
        raise ValueError(
            f"causal=True sees no key after the diagonal, so window's right side must be 0 or -1, "
            f"got window={tuple(window)!r}"
        )
    return left, 0 if causal else right


def _check_softcap(softcap):
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
        raise TypeError(
            f"softcap must be a number (0 for no cap), got {type(softcap).__name__} {softcap!r}"
        )
    if not (0 <= softcap < float("inf")):
        raise ValueError(
            f"softcap must be a finite number >= 0 (0 for no cap), got {softcap!r}"
        )
    return float(softcap)


def _check_cu_seqlens(name, cu, q, total):
    check_tensor(name, cu, 1, "[N + 1]")
    if cu.dtype != torch.int32:
        raise TypeError(
            f"{name} must be int32 (as flash-attn's cu_seqlens), got {cu.dtype}"
        )
    if cu.device != q.device:
        raise ValueError(
            f"{name} must be on the device of q ({q.device}), got {cu.device}"
        )
    if cu.shape[0] < 2:
        raise ValueError(
            f"{name} must hold N + 1 >= 2 offsets (N sequences), got shape {tuple(cu.shape)}"
        )
    if (
        values_checkable(cu) and not torch.compiler.is_compiling()
    ):  # reads values: CPU, or KERNELS_CHECK_VALUES=1
        c = cu.cpu()
        if c[0] != 0 or (c[1:] < c[:-1]).any() or c[-1] > total:
            raise ValueError(
                f"{name} must rise from 0 to at most the packed length {total}, got {c.tolist()}"
            )
        return int((c[1:] - c[:-1]).max())
    return None


def _check_max_seqlen(name, value, longest, total):
    if value is None:
        return total  # an upper bound that reads nothing: programs past a sequence's end return at once
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < 1
    ):
        raise ValueError(
            f"{name} must be a positive int (the longest packed sequence), got {value!r}"
        )
    if longest is not None and value < longest:
        raise ValueError(
            f"{name}={value} is shorter than the longest packed sequence, {longest}"
        )
    return int(value)


def _check_inputs(
    q,
    k,
    v,
    causal,
    scale,
    return_lse,
    window,
    softcap,
    cu_seqlens,
    max_seqlen,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
):
    """Every check of `flash_attention`. Shapes, dtypes and devices always; values only of CPU
    tensors (or under ``KERNELS_CHECK_VALUES=1``), so a CUDA call never waits for the GPU."""
    check_attention_qkv(q, k, v, head_dims=HEAD_DIMS, same_v_dim=False)
    check_bool("causal", causal)
    check_bool("return_lse", return_lse)
    check_scale("scale", scale)
    window = _check_window(window, causal)
    softcap = _check_softcap(softcap)
    if cu_seqlens is not None and (
        cu_seqlens_q is not None or cu_seqlens_k is not None
    ):
        raise ValueError(
            "give either cu_seqlens (shared by q and k) or cu_seqlens_q and cu_seqlens_k, not both"
        )
    if cu_seqlens is None and (cu_seqlens_q is None) != (cu_seqlens_k is None):
        raise ValueError(
            "cu_seqlens_q and cu_seqlens_k go together: give both or neither"
        )
    if max_seqlen is not None and (
        max_seqlen_q is not None or max_seqlen_k is not None
    ):
        raise ValueError(
            "give either max_seqlen or max_seqlen_q and max_seqlen_k, not both"
        )
    if cu_seqlens is not None:
        cu_seqlens_q = cu_seqlens_k = cu_seqlens
        max_seqlen_q = max_seqlen_k = max_seqlen
    if cu_seqlens_q is None:
        if (
            max_seqlen is not None
            or max_seqlen_q is not None
            or max_seqlen_k is not None
        ):
            raise ValueError(
                "max_seqlen only applies to packed sequences (with cu_seqlens)"
            )
        return window, softcap, None, None, 0, 0
    if q.shape[0] != 1:
        raise ValueError(
            f"packed sequences (cu_seqlens) lie along T of a batch of one, [1, H, total, D]; "
            f"got q of shape {tuple(q.shape)}"
        )
    Tq, Tk = q.shape[2], k.shape[2]
    longest_q = _check_cu_seqlens(
        "cu_seqlens_q" if cu_seqlens is None else "cu_seqlens",
        cu_seqlens_q,
        q,
        Tq,
    )
    longest_k = _check_cu_seqlens(
        "cu_seqlens_k" if cu_seqlens is None else "cu_seqlens",
        cu_seqlens_k,
        q,
        Tk,
    )
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(
            f"cu_seqlens_q and cu_seqlens_k must describe the same number of sequences, got "
            f"shapes {tuple(cu_seqlens_q.shape)} and {tuple(cu_seqlens_k.shape)}"
        )
    max_seqlen_q = _check_max_seqlen(
        "max_seqlen_q" if cu_seqlens is None else "max_seqlen",
        max_seqlen_q,
        longest_q,
        Tq,
    )
    max_seqlen_k = _check_max_seqlen(
        "max_seqlen_k" if cu_seqlens is None else "max_seqlen",
        max_seqlen_k,
        longest_k,
        Tk,
    )
    return (
        window,
        softcap,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
    )


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
    *,
    window=(-1, -1),
    softcap: float = 0.0,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
):
    """Exact scaled dot-product attention, computed tile by tile with an online softmax.

    ``o = softmax(scale * q @ k^T + mask) @ v`` for every batch element and head, without
    writing the ``[Tq, Tk]`` score matrix to memory. Forward and backward are Triton kernels
    in the FlashAttention-2 style; the backward recomputes the scores from the saved
    log-sum-exp.

    Args:
        q (torch.Tensor): queries of shape ``[B, H, Tq, D]``.
        k (torch.Tensor): keys of shape ``[B, Hkv, Tk, D]``. ``H`` must be a multiple of ``Hkv``
            (grouped-query attention: query head ``h`` uses key head ``h // (H // Hkv)``).
        v (torch.Tensor): values of shape ``[B, Hkv, Tk, Dv]``; ``Dv`` may differ from ``D``.
        causal (bool): mask aligned to the bottom right: query ``i`` sees keys ``j <= i + Tk - Tq``,
            so one query against a cache of ``Tk`` keys sees them all. A query that sees no key
            (only possible when ``Tq > Tk``, or with a window) gets output 0 and log-sum-exp ``-inf``.
            The same as ``window=(-1, 0)``. Default False.
        scale (float, optional): positive factor applied to ``q @ k^T``. Default ``D ** -0.5``.
        return_lse (bool): also return the log-sum-exp of the scaled, capped, masked scores, shape
            ``[B, H, Tq]``, float32. Gradients do not flow through it. Default False.
        window (tuple[int, int]): local attention as flash-attn's ``window_size``: query ``i`` sees
            keys ``i + Tk - Tq - left`` to ``i + Tk - Tq + right`` (aligned to the bottom right like
            the causal mask), ``-1`` for an unbounded side. ``(w - 1, 0)`` is Mistral's and Gemma's
            causal window of ``w`` keys. Key tiles wholly outside the window are skipped, so the
            cost grows with ``Tq * (left + right + 1)``, not ``Tq * Tk``. With ``causal=True`` the
            right side must be 0 or -1. Default ``(-1, -1)``.
        softcap (float): when positive, the scaled scores ``s`` become ``softcap * tanh(s / softcap)``
            before the mask and the softmax (Gemma 2), with the gradient through the tanh.
            Default 0 (no cap).
        cu_seqlens (torch.Tensor, optional): ``[N + 1]`` int32 cumulative lengths of ``N``
            sequences packed along T (as flash-attn's ``flash_attn_varlen_func``): ``q``, ``k``
            and ``v`` are ``[1, H, total, D]`` and sequence ``n`` is rows
            ``cu_seqlens[n]:cu_seqlens[n + 1]``. Attention stays inside each sequence, with the
            causal mask and the window aligned per sequence; rows past ``cu_seqlens[-1]`` get
            output 0. Kernels launch no work past a sequence's end.
        max_seqlen (int, optional): the longest packed sequence. It sizes the launch; without it
            the packed length is used (correct, with idle programs). Passing it avoids reading
            ``cu_seqlens`` on the GPU.
        cu_seqlens_q (torch.Tensor, optional): ``[N + 1]`` int32 offsets of the queries, with
            ``cu_seqlens_k`` in place of ``cu_seqlens``, when queries and keys are packed with
            different lengths (a chunk of new queries against each sequence's cache, say).
        cu_seqlens_k (torch.Tensor, optional): ``[N + 1]`` int32 offsets of the keys and values.
        max_seqlen_q (int, optional): the longest query sequence (default: the packed length).
        max_seqlen_k (int, optional): the longest key sequence (default: the packed length).

    ``q``, ``k`` and ``v`` share one dtype (float16, bfloat16 or float32) and one device. ``D``
    and ``Dv`` are any sizes from 1 to 256 (padded to a power of two inside the kernels with masked
    loads); lengths are arbitrary (>= 1). The output has the dtype of the inputs; scores, softmax
    statistics and accumulators are float32.

    Layout: the kernels read strides, so ``[B, T, H, D]`` tensors (flash-attn's and fla's layout)
    are taken without a copy as ``q.transpose(1, 2)``, and the output ``o.transpose(1, 2)`` is
    ``[B, T, H, Dv]``. No input is copied or made contiguous.

    No host synchronisation: shapes, dtypes and devices are always checked; checks that read
    values (``cu_seqlens`` rising from 0, ``max_seqlen`` long enough) run on CPU tensors only, or
    on any device when the environment variable ``KERNELS_CHECK_VALUES=1`` is set.

    ``torch.compile``: the function is registered as the custom op ``kernels::flash_attention_fwd``
    (with ``kernels::flash_attention_bwd`` as its gradient and fake functions for tracing), so
    ``torch.compile(model, fullgraph=True)`` traces a model that calls it without graph breaks.

    Where it runs: on CUDA tensors the Triton kernels run. On CPU tensors the Triton kernels
    run in Triton's interpreter when the environment variable ``TRITON_INTERPRET=1`` was set
    before ``kernels`` was imported (slow; this is how the kernels are tested without a GPU),
    except for bfloat16, which the interpreter's matrix product does not support; otherwise,
    and on any other device, the plain PyTorch reference `attention_ref` runs.

    Returns:
        ``o`` of shape ``[B, H, Tq, Dv]``, or ``(o, lse)`` when ``return_lse=True``.

    Raises:
        TypeError: an argument is not a tensor, a dtype is unsupported or the dtypes differ,
            ``causal``/``return_lse`` is not a bool, ``scale``/``softcap`` is not a number,
            ``window`` is not a pair of ints, ``cu_seqlens`` is not int32.
        ValueError: wrong number of dimensions, mismatched shapes, heads not divisible, a head
            dim outside 1 to 256, an empty length, tensors on different devices, a scale that is
            not positive and finite, a negative softcap, a window side below -1, packed
            sequences with a batch other than 1, or (on the CPU) offsets that do not rise from 0.

    Examples:
        >>> q = torch.randn(1, 4, 100, 64)
        >>> k, v = torch.randn(1, 2, 100, 64), torch.randn(1, 2, 100, 64)
        >>> flash_attention(q, k, v, causal=True).shape
        torch.Size([1, 4, 100, 64])
        >>> flash_attention(q, k, v, window=(31, 0), softcap=30.0).shape  # Gemma 2's local layers
        torch.Size([1, 4, 100, 64])
        >>> cu = torch.tensor([0, 30, 100], dtype=torch.int32)  # two sequences packed in T = 100
        >>> flash_attention(q, k, v, causal=True, cu_seqlens=cu, max_seqlen=70).shape
        torch.Size([1, 4, 100, 64])
    """
    window, softcap, cu_q, cu_k, max_q, max_k = _check_inputs(
        q,
        k,
        v,
        causal,
        scale,
        return_lse,
        window,
        softcap,
        cu_seqlens,
        max_seqlen,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
    )
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o, lse = flash_attention_fwd(
        q, k, v, scale, *window, softcap, cu_q, cu_k, max_q, max_k
    )
    return (o, lse) if return_lse else o
