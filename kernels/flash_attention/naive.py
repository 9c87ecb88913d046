"""Plain PyTorch references for scaled dot-product attention.

Two references that compute the same function as `kernels.flash_attention`:

* `attention_ref` materialises the full ``[Tq, Tk]`` score matrix and applies
  ``torch.softmax``. It is the definition.
* `attention_blockwise` follows the Triton kernel's loop step by step: it walks
  over tiles of queries and, for each tile, streams tiles of keys and values
  through an *online softmax* (running maximum ``m``, running sum ``l``,
  rescaled accumulator). It never holds more than one ``[BLOCK_M, BLOCK_N]``
  tile of scores.

Both compute in float32 (float64 stays float64) and return the input dtype.
Causal masks are aligned to the bottom right: query ``i`` sees keys
``j <= i + Tk - Tq``. A query that sees no key at all (``causal=True`` with
``Tq > Tk``) gets output 0 and log-sum-exp ``-inf``.
"""

from __future__ import annotations

import torch


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _expand_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Repeat each key/value head for the ``H // Hkv`` query heads that share it
    (GQA)."""
    group = q.shape[1] // k.shape[1]
    # [B, H, Tk, D]
    return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)


def causal_mask(tq: int, tk: int, device=None) -> torch.Tensor:
    """Boolean ``[Tq, Tk]`` mask, True where query ``i`` may see key ``j``
    (``j <= i + Tk - Tq``)."""
    return attention_mask(tq, tk, causal=True, device=device)


def attention_mask(
    tq: int, tk: int, causal: bool = False, window=(-1, -1), device=None
) -> torch.Tensor:
    """Boolean ``[Tq, Tk]`` mask, True where query ``i`` may see key ``j``.

    Aligned to the bottom right, as flash-attn's ``window_size``: with
    ``off = Tk - Tq``, query ``i`` sees key ``j`` when
    ``i + off - left <= j <= i + off + right`` (a side of ``-1`` is unbounded).
    ``causal=True`` is the window's right side 0.
    """
    left, right = window
    if causal:
        right = 0
    i = torch.arange(tq, device=device)[:, None] + (tk - tq)
    j = torch.arange(tk, device=device)[None, :]
    mask = torch.ones(tq, tk, dtype=torch.bool, device=device)
    if right >= 0:
        mask &= j <= i + right
    if left >= 0:
        mask &= j >= i - left
    return mask


def attention_ref(
    q,
    k,
    v,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
    window=(-1, -1),
    softcap: float = 0.0,
    cu_seqlens_q=None,
    cu_seqlens_k=None,
):
    """Softmax attention with the full score matrix in memory.

    Args:
        q (torch.Tensor): queries ``[B, H, Tq, D]``.
        k (torch.Tensor): keys ``[B, Hkv, Tk, D]``, ``H`` a multiple of ``Hkv``.
        v (torch.Tensor): values ``[B, Hkv, Tk, Dv]``.
        causal (bool): bottom-right aligned causal mask.
        scale (float): score scale, default ``D ** -0.5``.
        return_lse (bool): also return the log-sum-exp of the scaled scores
            ``[B, H, Tq]`` (float32/64).
        window (tuple[int, int]): ``(left, right)`` keys seen before and after
            the query's diagonal, ``-1`` for unbounded (see `attention_mask`).
        softcap (float): when positive, scores become
            ``softcap * tanh(s / softcap)`` (Gemma 2).
        cu_seqlens_q (torch.Tensor): ``[N + 1]`` int32 offsets of ``N`` packed
            sequences along the ``Tq`` axis of a batch of one; the attention
            runs per sequence. ``None``: one sequence per batch element.
        cu_seqlens_k (torch.Tensor): ``[N + 1]`` offsets along ``Tk``; default
            ``cu_seqlens_q``.

    Returns:
        ``o [B, H, Tq, Dv]`` in the dtype of ``q``, and ``lse`` when asked.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    # packed sequences: one dense call per sequence
    if cu_seqlens_q is not None:
        cu_seqlens_k = cu_seqlens_q if cu_seqlens_k is None else cu_seqlens_k
        cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        o = q.new_zeros(*q.shape[:3], v.shape[-1])
        lse = torch.full(
            q.shape[:3], float("-inf"), dtype=_upcast(q).dtype, device=q.device
        )
        outs, lses = [], []
        for n in range(len(cq) - 1):
            qs, ks = slice(cq[n], cq[n + 1]), slice(ck[n], ck[n + 1])
            if qs.stop == qs.start:
                continue
            if ks.stop == ks.start:  # no key at all: output 0, lse -inf
                outs.append(
                    (
                        qs,
                        q.new_zeros(
                            *q.shape[:2], qs.stop - qs.start, v.shape[-1]
                        ),
                        None,
                    )
                )
                continue
            on, ln = attention_ref(
                q[:, :, qs],
                k[:, :, ks],
                v[:, :, ks],
                causal,
                scale,
                True,
                window,
                softcap,
            )
            outs.append((qs, on, ln))
        # assembled without in-place writes so that autograd flows through every
        # piece
        pieces_o, pieces_l, at = [], [], 0
        for qs, on, ln in outs:
            if qs.start > at:
                (
                    pieces_o.append(o[:, :, at : qs.start]),
                    pieces_l.append(lse[:, :, at : qs.start]),
                )
            (
                pieces_o.append(on),
                pieces_l.append(lse[:, :, qs] if ln is None else ln),
            )
            at = qs.stop
        if at < q.shape[2]:
            pieces_o.append(o[:, :, at:]), pieces_l.append(lse[:, :, at:])
        o, lse = torch.cat(pieces_o, dim=2), torch.cat(pieces_l, dim=2)
        return (o, lse) if return_lse else o
    k, v = _expand_kv(q, k, v)
    # [B, H, Tq, Tk]
    s = torch.matmul(_upcast(q), _upcast(k).transpose(-1, -2)) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    # decided from the arguments: reads no value
    if causal or window[0] >= 0 or window[1] >= 0:
        s = s.masked_fill(
            ~attention_mask(q.shape[2], k.shape[2], causal, window, q.device),
            float("-inf"),
        )
    # [B, H, Tq]; -inf for a row with no visible key
    lse = torch.logsumexp(s, dim=-1)
    # masked-out rows: exp(-inf - -inf) = nan -> 0
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    o = torch.matmul(p, _upcast(v)).to(q.dtype)
    return (o, lse) if return_lse else o


def attention_ref_backward(
    do,
    q,
    k,
    v,
    causal: bool = False,
    scale: float | None = None,
    window=(-1, -1),
    softcap: float = 0.0,
    cu_seqlens_q=None,
    cu_seqlens_k=None,
):
    """The gradients of `attention_ref`, written out (no autograd), as the
    kernels compute them.

    With ``p = softmax(s)`` and ``o = p v``: ``dv = p^T do``, ``dp = do v^T``,
    ``ds = p * (dp - rowsum(do * o))``, times ``1 - tanh^2`` under a soft cap,
    then ``dq = scale * ds k`` and ``dk = scale * ds^T q``; under grouped-query
    attention ``dk`` and ``dv`` sum over the query heads that share a key head.

    Args:
        do (torch.Tensor): gradient of the output ``[B, H, Tq, Dv]``.
        q (torch.Tensor): queries ``[B, H, Tq, D]``, as for `attention_ref`.
        k (torch.Tensor): keys ``[B, Hkv, Tk, D]``, as for `attention_ref`.
        v (torch.Tensor): values ``[B, Hkv, Tk, Dv]``, as for `attention_ref`.
        causal (bool): as for `attention_ref`.
        scale (float | None): as for `attention_ref`.
        window (tuple[int, int]): as for `attention_ref`.
        softcap (float): as for `attention_ref`.
        cu_seqlens_q (torch.Tensor | None): as for `attention_ref`.
        cu_seqlens_k (torch.Tensor | None): as for `attention_ref`.

    Returns:
        ``dq [B, H, Tq, D]``, ``dk [B, Hkv, Tk, D]``, ``dv [B, Hkv, Tk, Dv]`` in
        the dtypes of the inputs.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    # packed sequences: each on its own, written into its rows
    if cu_seqlens_q is not None:
        cu_seqlens_k = cu_seqlens_q if cu_seqlens_k is None else cu_seqlens_k
        dq, dk, dv = (
            torch.zeros_like(q),
            torch.zeros_like(k),
            torch.zeros_like(v),
        )
        cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        for n in range(len(cq) - 1):
            qs, ks = slice(cq[n], cq[n + 1]), slice(ck[n], ck[n + 1])
            if qs.stop > qs.start and ks.stop > ks.start:
                dq[:, :, qs], dk[:, :, ks], dv[:, :, ks] = (
                    attention_ref_backward(
                        do[:, :, qs],
                        q[:, :, qs],
                        k[:, :, ks],
                        v[:, :, ks],
                        causal,
                        scale,
                        window,
                        softcap,
                    )
                )
        return dq, dk, dv
    B, H, Tq, _ = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    ke, ve = _expand_kv(q, k, v)  # [B, H, Tk, *]
    q_, k_, v_, do_ = _upcast(q), _upcast(ke), _upcast(ve), _upcast(do)
    s = q_ @ k_.transpose(-1, -2) * scale  # [B, H, Tq, Tk]
    t = None
    if softcap > 0:
        t = torch.tanh(s / softcap)
        s = softcap * t
    if causal or window[0] >= 0 or window[1] >= 0:
        s = s.masked_fill(
            ~attention_mask(Tq, Tk, causal, window, q.device), float("-inf")
        )
    # rows with no key: 0
    p = torch.exp(s - torch.logsumexp(s, dim=-1, keepdim=True)).nan_to_num(0.0)
    o = p @ v_
    dv = p.transpose(-1, -2) @ do_  # [B, H, Tk, Dv]
    ds = p * (do_ @ v_.transpose(-1, -2) - (do_ * o).sum(-1, keepdim=True))
    if t is not None:
        ds = ds * (1 - t * t)
    dq = ds @ k_ * scale
    dk = ds.transpose(-1, -2) @ q_ * scale  # [B, H, Tk, D]
    dk = dk.view(B, Hkv, H // Hkv, Tk, -1).sum(2)
    dv = dv.view(B, Hkv, H // Hkv, Tk, -1).sum(2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def attention_blockwise(
    q,
    k,
    v,
    causal: bool = False,
    scale: float | None = None,
    block_m: int = 64,
    block_n: int = 64,
    return_lse: bool = False,
    window=(-1, -1),
    softcap: float = 0.0,
):
    """The kernel's algorithm in PyTorch: tiles of Q, streamed tiles of K/V,
    online softmax.

    Same arguments and result as `attention_ref`, plus the tile sizes. For each
    query tile it keeps, per row, the running maximum ``m`` of the scores seen
    so far, the running sum ``l`` of ``exp(s - m)`` and the accumulator
    ``acc = sum exp(s - m) v``. When a new key tile raises the maximum from
    ``m`` to ``m_new``, the old sum and accumulator are rescaled by
    ``alpha = exp(m - m_new)``. At the end ``o = acc / l`` and
    ``lse = m + log(l)``. Key tiles that lie wholly outside the mask (above the
    causal diagonal, or outside a sliding window) are skipped, as in the kernel,
    so a window of ``w`` keys costs ``O(Tq w)`` scores, not ``O(Tq Tk)``.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = q.dtype
    k, v = _expand_kv(q, k, v)
    q, k, v = _upcast(q), _upcast(k), _upcast(v)
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    # query i sees keys i + offset - left ... i + offset + right
    offset = Tk - Tq
    left, right = window
    right = 0 if causal else right
    mask = attention_mask(Tq, Tk, causal, window, q.device)  # [Tq, Tk]
    o = torch.zeros(B, H, Tq, v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.full((B, H, Tq), float("-inf"), dtype=q.dtype, device=q.device)
    for start_m in range(0, Tq, block_m):
        qi = q[:, :, start_m : start_m + block_m]  # [B, H, BM, D]
        last = start_m + qi.shape[2] - 1  # the tile's last row
        # [B, H, BM]
        m = torch.full(
            qi.shape[:3], float("-inf"), dtype=q.dtype, device=q.device
        )
        l = torch.zeros_like(m)
        acc = qi.new_zeros(*qi.shape[:3], v.shape[-1])
        # the keys some row of the tile sees:
        # [start_m + offset - left, last + offset + right]
        lo = (
            max(0, start_m + offset - left) // block_n * block_n
            if left >= 0
            else 0
        )
        hi = min(Tk, last + offset + right + 1) if right >= 0 else Tk
        for start_n in range(lo, max(hi, 0), block_n):
            kj = k[:, :, start_n : start_n + block_n]  # [B, H, BN, D]
            vj = v[:, :, start_n : start_n + block_n]
            s = qi @ kj.transpose(-1, -2) * scale  # [B, H, BM, BN]
            if softcap > 0:
                s = softcap * torch.tanh(s / softcap)
            s = s.masked_fill(
                ~mask[start_m : last + 1, start_n : start_n + kj.shape[2]],
                float("-inf"),
            )
            m_new = torch.maximum(m, s.amax(dim=-1))
            # rows that saw no key yet
            m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0)
            p = torch.exp(s - m_safe[..., None])  # [B, H, BM, BN]
            # rescales what was accumulated under the old maximum
            alpha = torch.exp(m - m_safe)
            l = l * alpha + p.sum(dim=-1)
            acc = acc * alpha[..., None] + p @ vj
            m = m_new
        seen = l > 0
        o[:, :, start_m : start_m + block_m] = torch.where(
            seen[..., None], acc / l.clamp_min(1e-30)[..., None], 0.0
        )
        lse[:, :, start_m : start_m + block_m] = torch.where(
            seen, m + torch.log(l.clamp_min(1e-30)), float("-inf")
        )
    o = o.to(dtype)
    return (o, lse) if return_lse else o
