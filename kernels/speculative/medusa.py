"""Medusa: extra decoding heads on a frozen target, a tree of candidates, tree
attention.

The heads are any `Drafter` (`kernels.models.MedusaHeads` is one). Head ``i``
(0-based) reads the target's last hidden state at position ``t`` and predicts
the token at ``t + 2 + i`` (the target's own head predicts ``t + 1``). Each
step, the top-k tokens of every head form a tree of candidate continuations
(`Tree`, given as a list of paths as in Medusa's ``medusa_choices``); one target
forward with tree attention scores every node, and the longest path that passes
the acceptance rule is kept. Two rules: exact speculative sampling along the
tree (`verify_tree`: siblings are tried in turn, each a one-hot draft) and
Medusa's typical acceptance (`typical_tree`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .decode import DecodeStats, check_decode_args, prefill, timed
from .interface import Drafter, LanguageModel
from .sampling import _check_threshold, logits_to_probs, sample, typical_mask

__all__ = [
    "Tree",
    "build_tree",
    "DEFAULT_TREE",
    "tree_candidates",
    "verify_tree",
    "typical_tree",
    "medusa_generate",
]

# A small tree in the style of Medusa's ``mc_sim_7b_63``: path (a, b, c) is the
# a-th choice of head 0, then the b-th of head 1, then the c-th of head 2. 12
# nodes plus the root.
DEFAULT_TREE = [
    (0,),
    (1,),
    (2,),
    (0, 0),
    (0, 1),
    (1, 0),
    (0, 2),
    (2, 0),
    (0, 0, 0),
    (0, 0, 1),
    (0, 1, 0),
    (0, 0, 0, 0),
]


@dataclass(frozen=True)
class Tree:
    """A candidate tree, nodes in breadth-first order; node 0 is the root (the
    pending token).

    Attributes:
        paths: the paths of nodes ``1..N``, as given (sorted by depth, then
            lexicographically).
        parent: ``[N+1]`` parent index (-1 for the root).
        depth: ``[N+1]`` depth (0 for the root); node ``i`` sits at position
            ``start + depth[i]``.
        rank: ``[N+1]`` which top-k choice of its head a node is (-1 for the
            root).
        mask: bool ``[N+1, N+1]``: ``mask[i, j]`` when ``j`` is ``i`` or an
            ancestor of ``i``.
        children: for each node, its children in rank order.
    """

    paths: tuple
    parent: torch.Tensor
    depth: torch.Tensor
    rank: torch.Tensor
    mask: torch.Tensor
    children: tuple

    @property
    def num_nodes(self) -> int:
        return len(self.paths) + 1

    @property
    def max_depth(self) -> int:
        return int(self.depth.max())

    @property
    def top_k(self) -> int:
        return int(self.rank.max()) + 1 if len(self.paths) else 0


def build_tree(paths) -> Tree:
    """Build a `Tree` from paths such as ``[(0,), (1,), (0, 0)]``.

    Args:
        paths: sequence of non-empty tuples of non-negative ints; every prefix
            of a path must itself be a path; no duplicates. May be empty (root
            only: no speculation).

    Returns:
        Tree.

    Raises:
        TypeError: a path is not a tuple/list of ints.
        ValueError: empty or duplicate paths, negative ranks, a missing prefix.

    Examples:
        >>> build_tree([(0,), (1,), (0, 0)]).mask.int()
        tensor([[1, 0, 0, 0],
                [1, 1, 0, 0],
                [1, 0, 1, 0],
                [1, 1, 0, 1]], dtype=torch.int32)
    """
    clean = []
    for path in paths:
        if not isinstance(path, (tuple, list)) or not all(
            isinstance(r, int) and not isinstance(r, bool) for r in path
        ):
            raise TypeError(f"each path must be a tuple of ints, got {path!r}")
        if len(path) == 0 or min(path) < 0:
            raise ValueError(
                "each path must be a non-empty tuple of non-negative ranks, "
                f"got {path!r}"
            )
        clean.append(tuple(path))
    if len(set(clean)) != len(clean):
        raise ValueError(f"paths must not repeat, got {clean}")
    clean.sort(key=lambda p: (len(p), p))
    index = {(): 0}
    for i, path in enumerate(clean, start=1):
        if path[:-1] not in index:
            raise ValueError(
                f"path {path} needs its prefix {path[:-1]} in the tree too"
            )
        index[path] = i
    n = len(clean) + 1
    parent = [-1] + [index[p[:-1]] for p in clean]
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):  # a node sees itself and its ancestors
        j = i
        while j >= 0:
            mask[i, j] = True
            j = parent[j]
    # rank order
    children = tuple(
        tuple(j for j in range(1, n) if parent[j] == i) for i in range(n)
    )
    return Tree(
        paths=tuple(clean),
        parent=torch.tensor(parent),
        depth=torch.tensor([0] + [len(p) for p in clean]),
        rank=torch.tensor([-1] + [p[-1] for p in clean]),
        mask=mask,
        children=children,
    )


def tree_candidates(
    tree: Tree, root: torch.Tensor, head_logits: torch.Tensor
) -> torch.Tensor:
    """Tokens of the tree's nodes: the root, then for node ``i`` the
    ``rank[i]``-th best token of head ``depth[i]-1``.

    Args:
        tree (Tree): the tree.
        root (torch.Tensor): the pending token, a 0-d or ``[1]`` integer tensor.
        head_logits (torch.Tensor): ``[num_heads, V]``, the heads at the last
            fed position.

    Returns:
        int64 ``[N+1]``.
    """
    if tree.num_nodes == 1:
        return root.view(1).long()
    top = torch.topk(
        head_logits[: tree.max_depth], tree.top_k, dim=-1
    ).indices  # [depth, top_k]
    depth, rank = tree.depth[1:].to(top.device), tree.rank[1:].to(top.device)
    return torch.cat([root.view(1).long(), top[depth - 1, rank]])


def verify_tree(
    tree: Tree, tokens: torch.Tensor, target_probs: torch.Tensor, generator=None
):
    """Exact speculative sampling along a tree of deterministic candidates.

    At the current node (starting at the root) with target distribution ``p``,
    the children are tried in rank order. A child with token ``x`` is a draft
    whose distribution is one-hot, so the rule of `verify_draft` reads: accept
    with probability ``min(1, p(x) / 1) = p(x)``; on rejection, ``p`` becomes
    the residual ``norm(max(0, p - onehot(x)))``: ``p`` with ``x`` removed.
    Accepting moves to the child (and its own target distribution); when no
    child is accepted, or at a leaf, the last token is drawn from ``p``. Every
    token is therefore distributed exactly as the target's; with one-hot
    ``target_probs`` this is greedy decoding.

    Args:
        tree (Tree): the tree.
        tokens (torch.Tensor): int64 ``[N+1]``, the nodes' tokens
            (`tree_candidates`).
        target_probs (torch.Tensor): ``[N+1, V]``, the target's distribution
            after each node.
        generator (torch.Generator, optional): random source.

    Returns:
        ``(path, last)``: the accepted nodes (a list of indices, starting with
        the root 0) and the extra token (0-d int64).
    """
    path, node = [0], 0
    p = target_probs[0]
    while True:
        for child in tree.children[node]:
            x = tokens[child]
            u = torch.rand(
                (), generator=generator, device=p.device, dtype=p.dtype
            )
            if u < p[x]:  # accept: u < p(x) / draft(x) with draft(x) = 1
                node = child
                break
            p = p.clone()
            p[x] = 0  # residual norm(max(0, p - onehot(x)))
            p = p / p.sum() if p.sum() > 0 else target_probs[node]
        else:  # no child accepted (or a leaf): the last token comes from p
            return path, sample(p, generator)
        path.append(node)
        p = target_probs[node]


def typical_tree(
    tree: Tree,
    tokens: torch.Tensor,
    target_probs: torch.Tensor,
    epsilon: float = 0.09,
    delta: float = 0.3,
    generator=None,
):
    """Medusa's typical acceptance on a tree: the longest root path whose tokens
    all pass.

    A node passes when its token's probability under its parent's target
    distribution exceeds ``min(epsilon, delta * exp(-H(parent distribution)))``
    (`typical_mask`). Ties go to the path listed first. The last token is drawn
    from the target's distribution at the deepest accepted node. Same arguments
    and result as `verify_tree`.
    """
    n = tree.num_nodes
    parent = tree.parent.clamp_min(0).to(tokens.device)
    ok = typical_mask(
        tokens[1:, None], target_probs[parent[1:]][:, None], epsilon, delta
    )[:, 0]  # [N]: node passes
    ok = torch.cat([torch.ones(1, dtype=torch.bool, device=tokens.device), ok])
    best = [0]
    # the root path of each node, kept if every node on it passes
    for leaf in range(1, n):
        chain, j = [], leaf
        while j > 0:
            chain.append(j)
            j = int(tree.parent[j])
        chain = [0] + chain[::-1]
        if bool(ok[chain].all()) and len(chain) > len(best):
            best = chain
    return best, sample(target_probs[best[-1]], generator)


@torch.no_grad()
def medusa_generate(
    target: LanguageModel,
    heads: Drafter,
    prompt: torch.Tensor,
    max_new_tokens: int,
    tree=DEFAULT_TREE,
    temperature: float = 1.0,
    acceptance: str = "exact",
    epsilon: float = 0.09,
    delta: float = 0.3,
    generator: torch.Generator | None = None,
):
    """Decoding with Medusa heads: one target forward per step verifies a whole
    candidate tree.

    Each step: the heads' top-k tokens at the last fed position fill the tree
    below the pending token (`tree_candidates`); the target runs once over the
    ``N+1`` nodes with tree attention (mask `Tree.mask`, position
    ``start + depth``); the acceptance rule picks a root path and one more
    token; the KV cache keeps the path's entries (`KVCache.keep`) and the heads
    read the hidden state of its last node for the next step. With
    ``temperature=0`` both rules give the target's greedy decoding exactly.
    Batch 1.

    Args:
        target (LanguageModel): the frozen model.
        heads (Drafter): heads trained on its hidden states (e.g.
            `kernels.models.MedusaHeads`, `kernels.models.train_medusa_heads`).
        prompt (torch.Tensor): integer ``[T]``.
        max_new_tokens (int): tokens to return.
        tree: list of paths (see `build_tree`) or a `Tree`; its depth may not
            exceed the heads.
        temperature (float): 0 is greedy. Default 1.
        acceptance (str): ``"exact"`` (speculative sampling along the tree,
            `verify_tree`) or ``"typical"`` (`typical_tree`, with ``epsilon``
            and ``delta``).
        generator (torch.Generator, optional): random source.

    Returns:
        ``(tokens, stats)``: int64 ``[max_new_tokens]`` and a `DecodeStats` in
        which ``drafted`` counts the tree's depth once per step (the most a step
        can accept).
    """
    tree = tree if isinstance(tree, Tree) else build_tree(tree)
    if acceptance not in ("exact", "typical"):
        raise ValueError(
            f"acceptance must be 'exact' or 'typical', got {acceptance!r}"
        )
    _check_threshold("epsilon", epsilon)
    _check_threshold("delta", delta)
    if tree.num_nodes > 1 and tree.max_depth > heads.num_heads:
        raise ValueError(
            f"the tree is {tree.max_depth} deep but there are only "
            f"{heads.num_heads} heads"
        )
    check_decode_args(
        target,
        prompt,
        max_new_tokens,
        temperature,
        generator,
        extra=tree.num_nodes,
    )
    stats, device = DecodeStats(), prompt.device
    start_time = time.perf_counter()
    mask, depth = tree.mask.to(device), tree.depth.to(device)
    cache = target.new_cache()
    tokens = prompt.long()
    out = prefill(target, cache, tokens, return_hidden=True)
    # [heads, V]
    head_logits = heads(out[1][-1:][None])[0, 0] if out is not None else None
    # no hidden state yet: root only
    step_tree = tree if head_logits is not None else build_tree([])
    while len(tokens) - len(prompt) < max_new_tokens:
        start = cache.length  # = len(tokens) - 1: the pending token is the root
        with timed(stats, "draft_s", device):
            nodes = tree_candidates(step_tree, tokens[-1], head_logits)
        with timed(stats, "target_s", device):
            logits, hidden = target(
                nodes[None],
                cache,
                tree_mask=mask[: len(nodes), : len(nodes)],
                position_ids=start + depth[: len(nodes)],
                return_hidden=True,
            )
        probs = logits_to_probs(logits[0], temperature)  # [N+1, V]
        if acceptance == "exact":
            path, last = verify_tree(step_tree, nodes, probs, generator)
        else:
            path, last = typical_tree(
                step_tree, nodes, probs, epsilon, delta, generator
            )
        cache.keep(start, path)
        # the heads at the last accepted node: next step's tree
        with timed(stats, "draft_s", device):
            head_logits = heads(hidden[:, path[-1]][None])[0, 0]  # [heads, V]
        tokens = torch.cat([tokens, nodes[path[1:]], last.view(1)])
        stats.target_forwards += 1
        stats.drafted += step_tree.max_depth
        stats.accepted += len(path) - 1
        stats.accepted_lengths.append(len(path) - 1)
        step_tree = tree
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats.wall_s = time.perf_counter() - start_time
    stats.new_tokens = len(tokens) - len(prompt)
    return tokens[len(prompt) : len(prompt) + max_new_tokens], stats
