"""Plain PyTorch references for scaled dot-product attention.

Two references that compute the same function as `kernels.flash_attention`:

* `attention_ref` materialises the full ``[Tq, Tk]`` score matrix and applies
  ``torch.softmax``. It is the definition.
* `attention_blockwise` follows the Triton kernel's loop step by step: it walks
  over tiles of queries and, for each tile, streams tiles of keys and values through
  an *online softmax* (running maximum ``m``, running sum ``l``, rescaled accumulator).
  It never holds more than one ``[BLOCK_M, BLOCK_N]`` tile of scores.

Both compute in float32 (float64 stays float64) and return the input dtype.
Causal masks are aligned to the bottom right: query ``i`` sees keys ``j <= i + Tk - Tq``.
A query that sees no key at all (``causal=True`` with ``Tq > Tk``) gets output 0 and
log-sum-exp ``-inf``.
"""
from __future__ import annotations

import torch


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _expand_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Repeat each key/value head for the ``H // Hkv`` query heads that share it (GQA)."""
    group = q.shape[1] // k.shape[1]
    return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # [B, H, Tk, D]


def causal_mask(tq: int, tk: int, device=None) -> torch.Tensor:
    """Boolean ``[Tq, Tk]`` mask, True where query ``i`` may see key ``j`` (``j <= i + Tk - Tq``)."""
    i = torch.arange(tq, device=device)[:, None]
    j = torch.arange(tk, device=device)[None, :]
    return j <= i + (tk - tq)


def attention_ref(q, k, v, causal: bool = False, scale: float | None = None, return_lse: bool = False):
    """Softmax attention with the full score matrix in memory.

    Args:
        q (torch.Tensor): queries ``[B, H, Tq, D]``.
        k (torch.Tensor): keys ``[B, Hkv, Tk, D]``, ``H`` a multiple of ``Hkv``.
        v (torch.Tensor): values ``[B, Hkv, Tk, D]``.
        causal (bool): bottom-right aligned causal mask.
        scale (float): score scale, default ``D ** -0.5``.
        return_lse (bool): also return the log-sum-exp of the scaled scores ``[B, H, Tq]`` (float32/64).

    Returns:
        ``o [B, H, Tq, D]`` in the dtype of ``q``, and ``lse`` when asked.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k, v = _expand_kv(q, k, v)
    s = torch.matmul(_upcast(q), _upcast(k).transpose(-1, -2)) * scale  # [B, H, Tq, Tk]
    if causal:
        s = s.masked_fill(~causal_mask(q.shape[2], k.shape[2], q.device), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # [B, H, Tq]; -inf for a row with no visible key
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)  # masked-out rows: exp(-inf - -inf) = nan -> 0
    o = torch.matmul(p, _upcast(v)).to(q.dtype)
    return (o, lse) if return_lse else o


def attention_blockwise(q, k, v, causal: bool = False, scale: float | None = None,
                        block_m: int = 64, block_n: int = 64, return_lse: bool = False):
    """The kernel's algorithm in PyTorch: tiles of Q, streamed tiles of K/V, online softmax.

    Same arguments and result as `attention_ref`, plus the tile sizes. For each
    query tile it keeps, per row, the running maximum ``m`` of the scores seen so far,
    the running sum ``l`` of ``exp(s - m)`` and the accumulator ``acc = sum exp(s - m) v``.
    When a new key tile raises the maximum from ``m`` to ``m_new``, the old sum and
    accumulator are rescaled by ``alpha = exp(m - m_new)``. At the end ``o = acc / l``
    and ``lse = m + log(l)``. Key tiles that lie entirely above the causal diagonal are
    skipped, as in the kernel.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = q.dtype
    k, v = _expand_kv(q, k, v)
    q, k, v = _upcast(q), _upcast(k), _upcast(v)
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    offset = Tk - Tq  # causal: query i sees keys j <= i + offset
    o = torch.zeros_like(q)
    lse = torch.full((B, H, Tq), float("-inf"), dtype=q.dtype, device=q.device)
    for start_m in range(0, Tq, block_m):
        qi = q[:, :, start_m:start_m + block_m]  # [B, H, BM, D]
        rows = torch.arange(start_m, start_m + qi.shape[2], device=q.device)
        m = torch.full(qi.shape[:3], float("-inf"), dtype=q.dtype, device=q.device)  # [B, H, BM]
        l = torch.zeros_like(m)
        acc = torch.zeros_like(qi)
        # causal: the last row of this tile sees keys up to start_m + BM - 1 + offset
        end_n = min(Tk, start_m + qi.shape[2] + offset) if causal else Tk
        for start_n in range(0, max(end_n, 0), block_n):
            kj = k[:, :, start_n:start_n + block_n]  # [B, H, BN, D]
            vj = v[:, :, start_n:start_n + block_n]
            s = qi @ kj.transpose(-1, -2) * scale  # [B, H, BM, BN]
            if causal:
                cols = torch.arange(start_n, start_n + kj.shape[2], device=q.device)
                s = s.masked_fill(cols[None, :] > rows[:, None] + offset, float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1))
            m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0)  # rows that saw no key yet
            p = torch.exp(s - m_safe[..., None])  # [B, H, BM, BN]
            alpha = torch.exp(m - m_safe)  # rescales what was accumulated under the old maximum
            l = l * alpha + p.sum(dim=-1)
            acc = acc * alpha[..., None] + p @ vj
            m = m_new
        seen = l > 0
        o[:, :, start_m:start_m + block_m] = torch.where(seen[..., None], acc / l.clamp_min(1e-30)[..., None], 0.0)
        lse[:, :, start_m:start_m + block_m] = torch.where(seen, m + torch.log(l.clamp_min(1e-30)), float("-inf"))
    o = o.to(dtype)
    return (o, lse) if return_lse else o
