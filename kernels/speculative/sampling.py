"""Sampling and the accept/reject rules of speculative decoding, as small pure
functions.

* `logits_to_probs` and `sample`: the next-token distribution and one draw from
  it.
* `verify_draft`: speculative sampling's accept/reject step (Leviathan et al.
  2023; Chen et al. 2023). The tokens it emits are distributed exactly as if the
  target had sampled them one at a time, whatever the draft.
* `typical_accept`: Medusa's typical acceptance (Cai et al. 2024), which accepts
  a draft token when the target finds it plausible enough. Not exact, but greedy
  at temperature 0.

Notation: ``V`` is the vocabulary size, ``k`` the number of draft tokens; in
formulas ``p`` is the target's distribution and ``q`` the draft's
(Leviathan et al.'s letters, used on every page).
"""

from __future__ import annotations

import math
import numbers

import torch

from .._checks import check_tensor

__all__ = [
    "logits_to_probs",
    "sample",
    "verify_draft",
    "accept_reject",
    "typical_accept",
    "typical_mask",
    "residual_probs",
]


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            "generator must be a torch.Generator or None, got "
            f"{type(generator).__name__}"
        )


def _check_temperature(temperature) -> None:
    if isinstance(temperature, bool) or not isinstance(
        temperature, numbers.Real
    ):
        raise TypeError(
            "temperature must be a number >= 0, got "
            f"{type(temperature).__name__} {temperature!r}"
        )
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(
            "temperature must be a finite number >= 0 (0 means greedy), got "
            f"{temperature!r}"
        )


def logits_to_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None
) -> torch.Tensor:
    """Next-token distributions from logits: ``softmax(logits / temperature)``,
    optionally top-k.

    Args:
        logits (torch.Tensor): floating tensor of shape ``[..., V]``.
        temperature (float): ``>= 0``. ``0`` gives the one-hot distribution of
            the argmax (greedy decoding), which makes every sampler below
            deterministic. Default 1.
        top_k (int, optional): keep only the ``top_k`` largest logits of each
            row (ties at the threshold are kept). Default None (all).

    Returns:
        probs of shape ``[..., V]``: float32 for half-precision logits, else the
        dtype of ``logits``.

    Raises:
        TypeError: ``logits`` is not a floating tensor,
            ``temperature``/``top_k`` of the wrong type.
        ValueError: ``logits`` has no vocabulary dimension, a negative or
            non-finite temperature, ``top_k`` outside ``1..V``.

    Examples:
        >>> logits_to_probs(torch.tensor([1.0, 3.0, 2.0]), temperature=0)
        tensor([0., 1., 0.])
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        got = (
            logits.dtype
            if isinstance(logits, torch.Tensor)
            else type(logits).__name__
        )
        raise TypeError(
            f"logits must be a floating-point torch.Tensor [..., V], got {got}"
        )
    if logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError(
            "logits must have a non-empty last (vocabulary) dimension, got "
            f"shape {tuple(logits.shape)}"
        )
    _check_temperature(temperature)
    V = logits.shape[-1]
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
            raise TypeError(
                f"top_k must be an int or None, got {type(top_k).__name__}"
            )
        if not 1 <= top_k <= V:
            raise ValueError(
                f"top_k must be between 1 and the vocabulary size {V}, got "
                f"{top_k}"
            )
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if temperature == 0:  # greedy: all the mass on the argmax
        return torch.nn.functional.one_hot(logits.argmax(-1), V).to(
            logits.dtype
        )
    logits = logits / temperature
    if top_k is not None:
        # [..., 1]
        threshold = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    return torch.softmax(logits, dim=-1)


def sample(
    probs: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One token from each distribution.

    Args:
        probs (torch.Tensor): non-negative weights of shape ``[..., V]`` (each
            row is normalised by `torch.multinomial`; a row must have a positive
            sum).
        generator (torch.Generator, optional): random source on the device of
            ``probs``.

    Returns:
        tokens (torch.Tensor): int64 of shape ``[...]``. A one-hot row always
        gives its hot index.

    Examples:
        >>> sample(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        tensor([1, 0])
    """
    if (
        not isinstance(probs, torch.Tensor)
        or not probs.is_floating_point()
        or probs.dim() == 0
    ):
        raise TypeError("probs must be a floating-point torch.Tensor [..., V]")
    _check_generator(generator)
    flat = probs.reshape(-1, probs.shape[-1])  # [N, V]
    return torch.multinomial(flat, 1, generator=generator).view(
        probs.shape[:-1]
    )


def residual_probs(
    target_row: torch.Tensor, draft_row: torch.Tensor
) -> torch.Tensor:
    """``norm(max(0, target - draft))``: where a token goes after the draft's
    token was rejected.

    Args:
        target_row (torch.Tensor): the target's distribution ``[V]``.
        draft_row (torch.Tensor): the draft's distribution ``[V]``.

    Returns:
        A distribution of shape ``[V]``. When the difference has no positive
        mass (the two rows are equal up to rounding, so a rejection was a
        rounding accident) it is ``target_row``.
    """
    residual = (target_row - draft_row).clamp_min(0)
    total = residual.sum()
    return residual / total if total > 0 else target_row


# ----------------------------------------------------------------- validation
def _check_integer_tokens(name: str, tokens, layout: str) -> None:
    check_tensor(name, tokens, 1, layout)
    if (
        tokens.is_floating_point()
        or tokens.is_complex()
        or tokens.dtype == torch.bool
    ):
        raise TypeError(
            f"{name} must hold integer token ids, got dtype {tokens.dtype}"
        )


def _check_distributions(name: str, probs: torch.Tensor) -> None:
    """Every row of ``probs`` is finite, non-negative and sums to 1 (to a
    dtype-dependent tolerance)."""
    if not probs.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor of probabilities, got "
            f"{probs.dtype}"
        )
    if probs.numel() == 0:
        return
    if not torch.isfinite(probs).all() or (probs < 0).any():
        raise ValueError(f"{name} must hold finite, non-negative probabilities")
    tol = 1e-2 if probs.dtype in (torch.float16, torch.bfloat16) else 1e-4
    sums = probs.double().sum(-1)
    bad = ((sums - 1).abs() > tol).nonzero()
    if len(bad):
        i = bad[0].item()
        raise ValueError(
            f"each row of {name} must sum to 1, got row {i} summing to "
            f"{sums[i].item():.6g}"
        )


def _check_verify_inputs(
    draft_tokens, draft_probs, target_probs, generator
) -> None:
    """Shared by `verify_draft` and `typical_accept` (which passes
    ``draft_probs=None``)."""
    _check_integer_tokens("draft_tokens", draft_tokens, "[k]")
    if draft_probs is not None:
        check_tensor("draft_probs", draft_probs, 2, "[k, V]")
    check_tensor("target_probs", target_probs, 2, "[k+1, V]")
    _check_generator(generator)
    for name, x in (
        ("draft_probs", draft_probs),
        ("target_probs", target_probs),
    ):
        if x is not None and x.device != draft_tokens.device:
            raise ValueError(
                "draft_tokens, draft_probs and target_probs must be on the "
                f"same device, got draft_tokens on {draft_tokens.device} and "
                f"{name} on {x.device}"
            )
    k = draft_tokens.shape[0]
    if draft_probs is not None and draft_probs.shape[0] != k:
        raise ValueError(
            f"draft_probs must have one row per draft token, k={k} rows, got "
            f"shape {tuple(draft_probs.shape)}"
        )
    if target_probs.shape[0] != k + 1:
        raise ValueError(
            f"target_probs must have k+1={k + 1} rows (one per draft token "
            f"plus one), got shape {tuple(target_probs.shape)}"
        )
    V = target_probs.shape[1]
    if V == 0:
        raise ValueError(
            "target_probs must have a vocabulary of at least one token, got V=0"
        )
    if draft_probs is not None and draft_probs.shape[1] != V:
        raise ValueError(
            "draft_probs and target_probs must have the same vocabulary size, "
            f"got {draft_probs.shape[1]} and {V}"
        )
    if k and (draft_tokens.min() < 0 or draft_tokens.max() >= V):
        raise ValueError(
            f"draft_tokens must lie in [0, V) = [0, {V}), got "
            f"{draft_tokens.tolist()}"
        )
    _check_distributions("target_probs", target_probs)
    if draft_probs is None:
        return
    _check_distributions("draft_probs", draft_probs)
    if (
        k
        and (
            draft_probs[
                torch.arange(k, device=draft_probs.device), draft_tokens.long()
            ]
            <= 0
        ).any()
    ):
        raise ValueError(
            "each draft token must have a positive probability under its "
            "draft_probs row (it was sampled from it)"
        )


# ------------------------------------------------------------------ the rules
def verify_draft(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Speculative sampling's accept/reject step for one sequence.

    The draft proposed ``x_1..x_k``, each ``x_i`` sampled from
    ``draft_probs[i-1]``; one target forward gave ``target_probs``, the target's
    distributions at the same positions plus one. Draft token ``x_i`` is
    accepted with probability ``min(1, target(x_i) / draft(x_i))``, in order. At
    the first rejection one token is drawn from the residual
    ``norm(max(0, target - draft))`` of that position and the rest is dropped;
    when all ``k`` are accepted, one more token is drawn from
    ``target_probs[k]``. The emitted tokens are distributed exactly as ``k+1``
    (or fewer) tokens sampled from the target; the first draft token is accepted
    with probability ``sum_x min(target(x), draft(x))``. One-hot rows
    (temperature 0) reproduce greedy decoding with the target exactly.

    Args:
        draft_tokens (torch.Tensor): integer tensor ``[k]`` (``k >= 0``), ids in
            ``[0, V)``.
        draft_probs (torch.Tensor): ``[k, V]``, the distributions the draft
            tokens were sampled from.
        target_probs (torch.Tensor): ``[k+1, V]``, the target's distributions at
            those positions and the next one.
        generator (torch.Generator, optional): random source on the device of
            the tensors.

    Returns:
        tokens (torch.Tensor): int64 ``[n+1]`` with ``0 <= n <= k``: the ``n``
        accepted draft tokens, then the token drawn at the first rejection or
        after the last draft token.

    Raises:
        TypeError: an argument is not a tensor, ``draft_tokens`` is not integer,
            probabilities are not floating-point, ``generator`` is not a
            ``torch.Generator``.
        ValueError: wrong shapes (``target_probs`` without ``k+1`` rows,
            vocabulary sizes that differ), tokens outside ``[0, V)``, rows that
            are not distributions, a draft token with zero draft probability,
            tensors on different devices. (Checking the values reads them back
            from the device.)

    Examples:
        >>> greedy = torch.eye(4)  # row i: all mass on token i
        >>> drafts = torch.tensor([1, 2])
        >>> verify_draft(drafts, greedy[[1, 2]], greedy[[1, 3, 0]])
        tensor([1, 3])
    """
    _check_verify_inputs(draft_tokens, draft_probs, target_probs, generator)
    return accept_reject(draft_tokens, draft_probs, target_probs, generator)


def accept_reject(
    draft_tokens, draft_probs, target_probs, generator=None
) -> torch.Tensor:
    """`verify_draft` without the validation (which reads the tensors back from
    the device): for the decoding loops, whose inputs are well formed by
    construction."""
    k = draft_tokens.shape[0]
    draft_tokens = draft_tokens.long()
    rows = torch.arange(k, device=draft_tokens.device)
    p_target = target_probs[rows, draft_tokens]  # [k]
    p_draft = draft_probs[rows, draft_tokens]  # [k]
    u = torch.rand(
        k, generator=generator, device=draft_tokens.device, dtype=p_target.dtype
    )
    # accept x_i <=> u_i < target(x_i) / draft(x_i), written without a division
    # (draft(x_i) > 0)
    accepted = u * p_draft < p_target  # [k]
    rejected = (~accepted).nonzero()
    # length of the accepted prefix
    n = rejected[0].item() if len(rejected) else k
    # first rejection at position n: draw from norm(max(0, target - draft))
    if n < k:
        last = residual_probs(target_probs[n], draft_probs[n])
    else:  # all accepted: one more token from the target, for free
        last = target_probs[k]
    return torch.cat([draft_tokens[:n], sample(last, generator).view(1)])


def typical_mask(
    draft_tokens: torch.Tensor,
    target_probs: torch.Tensor,
    epsilon: float = 0.09,
    delta: float = 0.3,
) -> torch.Tensor:
    """Medusa's typical-acceptance test, position by position (no prefix logic).

    Token ``x_i`` passes when
    ``target_i(x_i) > min(epsilon, delta * exp(-H(target_i)))``, with ``H`` the
    entropy (natural log) of the target's row: a peaked target (low entropy)
    asks for a probability close to ``epsilon``, a flat one (high entropy)
    accepts less likely tokens.

    Args:
        draft_tokens (torch.Tensor): integer ``[..., k]``.
        target_probs (torch.Tensor): ``[..., k, V]`` (at least ``k`` rows; extra
            rows are ignored).

    Returns:
        bool tensor ``[..., k]``.
    """
    k = draft_tokens.shape[-1]
    probs = target_probs[..., :k, :]
    # [..., k], 0 log 0 = 0
    entropy = -torch.special.xlogy(probs, probs).sum(-1)
    threshold = torch.clamp(delta * torch.exp(-entropy), max=epsilon)
    p = probs.gather(-1, draft_tokens.long()[..., None]).squeeze(-1)  # [..., k]
    return p > threshold


def _check_threshold(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a number in [0, 1], got {type(value).__name__} "
            f"{value!r}"
        )
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def typical_accept(
    draft_tokens: torch.Tensor,
    target_probs: torch.Tensor,
    epsilon: float = 0.09,
    delta: float = 0.3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Medusa's typical acceptance for one sequence: same contract as
    `verify_draft`.

    The longest prefix of draft tokens that each pass the typical test (see
    `typical_mask`: ``target(x_i) > min(epsilon, delta * exp(-H(target_i)))``)
    is accepted; then one token is drawn from the target's distribution after
    the last accepted token. The draft's own probabilities are not needed. The
    output is *not* distributed exactly as the target's samples (it favours
    plausible draft tokens), but with one-hot rows (temperature 0) it is greedy
    decoding exactly. Medusa's defaults: ``epsilon = 0.09`` (hard threshold),
    ``delta = 0.3`` (entropy-scaled threshold, about ``sqrt(epsilon)``).

    Args:
        draft_tokens (torch.Tensor): integer ``[k]``, ids in ``[0, V)``.
        target_probs (torch.Tensor): ``[k+1, V]``, the target's distributions.
        epsilon (float): hard threshold in ``[0, 1]``. Default 0.09.
        delta (float): entropy-scaled threshold in ``[0, 1]``. Default 0.3.
        generator (torch.Generator, optional): random source for the last token.

    Returns:
        tokens (torch.Tensor): int64 ``[n+1]``, the ``n`` accepted draft tokens
        and one from the target.

    Raises:
        TypeError, ValueError: as `verify_draft` for the tensors; thresholds
            outside ``[0, 1]``.

    Examples:
        >>> greedy = torch.eye(4)
        >>> typical_accept(torch.tensor([1, 2]), greedy[[1, 3, 0]])
        tensor([1, 3])
    """
    _check_verify_inputs(draft_tokens, None, target_probs, generator)
    _check_threshold("epsilon", epsilon)
    _check_threshold("delta", delta)
    ok = typical_mask(draft_tokens, target_probs, epsilon, delta)  # [k]
    n = int(ok.long().cumprod(0).sum().item())  # longest prefix that passes
    return torch.cat(
        [draft_tokens[:n].long(), sample(target_probs[n], generator).view(1)]
    )
