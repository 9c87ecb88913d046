"""Speculative decoding: exactness of the accept/reject rules, greedy equivalence of every loop,
KV-cache rollback, the model stack's context limit, its training/caching code, and the
dependency rule (``import kernels`` leaves the model stack alone).

Everything runs on the CPU with small models. Exactness tests use randomly initialised models in
float64 (so that a forward over several tokens and token-by-token forwards agree to ~1e-15 and
no argmax tie can flip); the tests that need drafts the target accepts train tiny models for a
few seconds (module fixture). Statistical tests use fixed seeds and state their significance.
"""

import math
import subprocess
import sys

import pytest
import torch

from kernels.models import (
    PRESETS,
    Config,
    MedusaHeads,
    MTPModule,
    Transformer,
    TrainConfig,
    cached,
    load_corpus,
    load_models,
    train_lm,
    train_medusa_heads,
    train_mtp,
)
from kernels.speculative import (
    DEFAULT_TREE,
    DecodeStats,
    Drafter,
    LanguageModel,
    MultiTokenDrafter,
    build_tree,
    generate,
    logits_to_probs,
    medusa_generate,
    mtp_generate,
    sample,
    speculative_generate,
    typical_accept,
    typical_tree,
    verify_draft,
    verify_tree,
)

TINY = Config(dim=32, n_layers=2, n_heads=2, hidden=64, max_seq_len=256)
TINY_TRAINED = Config(
    dim=32, n_layers=2, n_heads=2, hidden=64, max_seq_len=96
)  # trains on 96-byte windows
PROMPTS = [[104], [100, 101, 102, 32], list(b"import os\nimport sys\n")]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: one thread avoids the thread pool's overhead (and noise from busy cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def random_model(config=TINY, seed=0, std=0.3):
    """A random float64 model whose logits are far from uniform (larger weights than at init)."""
    torch.manual_seed(seed)
    model = Transformer(config).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, std)
    return model


def perturbed_copy(model, noise, seed=1):
    """The model plus Gaussian noise on its weights: a draft that agrees with it only sometimes."""
    g = torch.Generator().manual_seed(seed)
    copy = Transformer(model.config).double().eval()
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(noise * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return copy


def chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square test of ``counts`` against ``probs``; the p-value.

    Cells with zero probability must be empty; cells expecting fewer than 5 counts are pooled
    into one, as the chi-square approximation asks.
    """
    n = counts.sum()
    expected = n * probs.double()
    assert counts[expected == 0].sum() == 0, (
        "a token with probability 0 was emitted"
    )
    small = (expected > 0) & (expected < 5)
    if small.any():
        counts = torch.cat([counts[~small], counts[small].sum().view(1)])
        expected = torch.cat([expected[~small], expected[small].sum().view(1)])
    keep = expected > 0
    stat = (
        (counts[keep].double() - expected[keep]) ** 2 / expected[keep]
    ).sum()
    df = int(keep.sum()) - 1
    return torch.special.gammaincc(
        torch.tensor(df / 2, dtype=torch.float64), stat / 2
    ).item()


# ----------------------------------------------------------------------------- verify_draft: exactness
ALPHA = 1e-3  # significance level of every chi-square test below (fixed seeds: the tests are deterministic)


def random_rows(g, rows, V, sparsity=0.3):
    """Random distributions with some exact zeros (where the residual logic matters most)."""
    p = torch.rand(rows, V, generator=g, dtype=torch.float64) ** 3
    p[torch.rand(rows, V, generator=g) < sparsity] = 0
    p[:, 0] += 0.01  # no empty row
    return p / p.sum(-1, keepdim=True)


def test_verify_draft_samples_the_target_exactly():
    """Over many trials the first emitted token follows target_probs[0], the second (when a draft
    was accepted) target_probs[1], whatever the draft; the first draft is accepted with
    probability sum(min(p, q))."""
    g = torch.Generator().manual_seed(0)
    V, k, trials = 6, 2, 20000
    draft_probs, target_probs = random_rows(g, k, V), random_rows(g, k + 1, V)
    first, second = (
        torch.zeros(V, dtype=torch.long),
        torch.zeros(V, dtype=torch.long),
    )
    accepted_first = 0
    drafts = torch.stack(
        [sample(draft_probs, g) for _ in range(trials)]
    )  # [trials, k]
    for d in drafts:
        out = verify_draft(d, draft_probs, target_probs, generator=g)
        assert 1 <= len(out) <= k + 1
        first[out[0]] += 1
        if (
            len(out) >= 2
        ):  # the first draft was accepted: the second token is the target's next sample
            accepted_first += 1
            second[out[1]] += 1
    assert chi2_pvalue(first, target_probs[0]) > ALPHA
    assert chi2_pvalue(second, target_probs[1]) > ALPHA
    alpha = torch.minimum(draft_probs[0], target_probs[0]).sum().item()
    rate = accepted_first / trials
    tolerance = 4 * math.sqrt(
        alpha * (1 - alpha) / trials
    )  # 4 standard deviations of a binomial rate
    assert abs(rate - alpha) < tolerance, (
        f"acceptance rate {rate:.4f}, sum(min(p, q)) = {alpha:.4f}"
    )


def test_verify_draft_with_disjoint_supports_always_rejects():
    draft = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0, 0.3, 0.7], [0.25, 0.25, 0.25, 0.25]])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(4, dtype=torch.long)
    for _ in range(2000):
        out = verify_draft(torch.tensor([1]), draft, target, generator=g)
        assert len(out) == 1
        counts[out[0]] += 1
    assert chi2_pvalue(counts, target[0]) > ALPHA


def test_identical_distributions_accept_everything():
    g = torch.Generator().manual_seed(3)
    probs = random_rows(g, 5, 7)
    for _ in range(200):
        drafts = sample(probs[:4], g)
        out = verify_draft(drafts, probs[:4], probs, generator=g)
        assert len(out) == 5 and torch.equal(out[:4], drafts)


def test_one_hot_rows_are_greedy_decoding():
    g = torch.Generator().manual_seed(1)
    V = 9
    for _ in range(300):
        k = int(torch.randint(0, 6, (1,), generator=g))
        greedy = torch.randint(
            V, (k + 1,), generator=g
        )  # the target's argmax at each position
        drafts = torch.where(
            torch.rand(k, generator=g) < 0.7,
            greedy[:k],
            torch.randint(V, (k,), generator=g),
        )
        eye = torch.eye(V, dtype=torch.float64)
        out = verify_draft(drafts, eye[drafts], eye[greedy], generator=g)
        n = int((drafts == greedy[:k]).long().cumprod(0).sum())
        assert torch.equal(out, torch.cat([drafts[:n], greedy[n : n + 1]]))


def test_verify_tree_samples_the_target_exactly():
    """Speculative sampling along a tree (siblings tried in turn): first token ~ target_probs[0]."""
    g = torch.Generator().manual_seed(2)
    tree = build_tree([(0,), (1,), (2,), (0, 0)])
    V = 5
    probs = random_rows(g, tree.num_nodes, V, sparsity=0.0)
    tokens = torch.tensor(
        [4, 0, 1, 2, 3]
    )  # root, three children of the root, a grandchild
    first = torch.zeros(V, dtype=torch.long)
    for _ in range(10000):
        path, last = verify_tree(tree, tokens, probs, generator=g)
        emitted = torch.cat([tokens[path[1:]], last.view(1)])
        first[emitted[0]] += 1
    assert chi2_pvalue(first, probs[0]) > ALPHA


def test_typical_accept_thresholds():
    # entropy of [0.5, 0.3, 0.2] is 1.0297 nats: threshold = min(0.09, 0.3 * exp(-1.0297)) = 0.0714
    target = torch.tensor(
        [[0.5, 0.3, 0.2, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64
    )
    assert (
        len(typical_accept(torch.tensor([2]), target)) == 2
    )  # 0.2 > 0.0714: accepted
    assert len(typical_accept(torch.tensor([3]), target)) == 1  # 0.0: rejected
    # exp(-H) = 0.357: the threshold is min(epsilon, delta * 0.357)
    assert (
        len(typical_accept(torch.tensor([2]), target, epsilon=0.25, delta=1.0))
        == 1
    )  # 0.25 > 0.2
    assert (
        len(typical_accept(torch.tensor([2]), target, epsilon=0.15, delta=1.0))
        == 2
    )  # 0.15 < 0.2
    assert (
        len(typical_accept(torch.tensor([2]), target, epsilon=1.0, delta=0.5))
        == 2
    )  # 0.179 < 0.2
    assert (
        len(typical_accept(torch.tensor([2]), target, epsilon=1.0, delta=0.6))
        == 1
    )  # 0.214 > 0.2
    eye = torch.eye(4, dtype=torch.float64)
    assert torch.equal(
        typical_accept(torch.tensor([1, 2, 0]), eye[[1, 2, 3, 0]]),
        torch.tensor([1, 2, 3]),
    )


def test_typical_tree_uses_its_thresholds():
    """The tree rule passes epsilon and delta on: a node at probability 0.2 passes or fails with them."""
    tree = build_tree([(0,)])  # the root and one child
    tokens = torch.tensor(
        [0, 2]
    )  # the child proposes token 2, which has probability 0.2 after the root
    target = torch.tensor(
        [[0.5, 0.3, 0.2, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64
    )
    path, _ = typical_tree(tree, tokens, target)  # threshold 0.0714: accepted
    assert path == [0, 1]
    path, _ = typical_tree(
        tree, tokens, target, epsilon=0.25, delta=1.0
    )  # threshold 0.25: rejected
    assert path == [0]


def test_logits_to_probs():
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0 - 1e-3]])
    assert torch.equal(
        logits_to_probs(logits, 0), torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    )
    assert torch.allclose(
        logits_to_probs(logits, 1.0), torch.softmax(logits, -1)
    )
    assert torch.allclose(
        logits_to_probs(logits, 2.0), torch.softmax(logits / 2, -1)
    )
    top2 = logits_to_probs(logits, 1.0, top_k=2)
    assert (
        top2[0, 0] == 0
        and top2[0, 2] == 0
        and torch.isclose(top2.sum(), torch.tensor(1.0))
    )
    assert logits_to_probs(logits.half(), 1.0).dtype == torch.float32


# ----------------------------------------------------------------------------- bad input
def _good():
    V = 4
    return (
        torch.tensor([1, 2]),
        torch.full((2, V), 0.25),
        torch.full((3, V), 0.25),
    )


BAD_VERIFY = {
    "tokens not a tensor": (
        lambda d, p, q: ([1, 2], p, q),
        TypeError,
        "draft_tokens must be a torch.Tensor",
    ),
    "float tokens": (
        lambda d, p, q: (d.float(), p, q),
        TypeError,
        "draft_tokens must hold integer token ids",
    ),
    "bool tokens": (
        lambda d, p, q: (d.bool(), p, q),
        TypeError,
        "integer token ids, got dtype torch.bool",
    ),
    "2-D tokens": (
        lambda d, p, q: (d[None], p, q),
        ValueError,
        r"draft_tokens must have 1 dimensions \[k\]",
    ),
    "target without k+1 rows": (
        lambda d, p, q: (d, p, q[:2]),
        ValueError,
        r"target_probs must have k\+1=3 rows",
    ),
    "draft rows": (
        lambda d, p, q: (d, p[:1], q),
        ValueError,
        "draft_probs must have one row per draft token",
    ),
    "vocab sizes differ": (
        lambda d, p, q: (d, torch.full((2, 5), 0.2), q),
        ValueError,
        "must have the same vocabulary size, got 5 and 4",
    ),
    "token too large": (
        lambda d, p, q: (torch.tensor([1, 4]), p, q),
        ValueError,
        r"draft_tokens must lie in \[0, V\)",
    ),
    "negative token": (
        lambda d, p, q: (torch.tensor([-1, 0]), p, q),
        ValueError,
        r"must lie in \[0, V\) = \[0, 4\)",
    ),
    "rows not summing to 1": (
        lambda d, p, q: (d, p * 2, q),
        ValueError,
        "each row of draft_probs must sum to 1, got row 0 summing to 2",
    ),
    "negative probability": (
        lambda d, p, q: (d, p, q - torch.tensor([0.5, 0, 0, 0.5])),
        ValueError,
        "target_probs must hold finite, non-negative probabilities",
    ),
    "nan probability": (
        lambda d, p, q: (d, p, q.index_fill(1, torch.tensor([0]), math.nan)),
        ValueError,
        "finite, non-negative",
    ),
    "integer probabilities": (
        lambda d, p, q: (d, p.long(), q),
        TypeError,
        "draft_probs must be a floating-point",
    ),
    "draft token impossible under draft": (
        lambda d, p, q: (d, torch.tensor([[0.5, 0, 0.5, 0], [0.25] * 4]), q),
        ValueError,
        "positive probability under its draft_probs row",
    ),
    "1-D target": (
        lambda d, p, q: (d, p, q[0]),
        ValueError,
        r"target_probs must have 2 dimensions \[k\+1, V\]",
    ),
    "devices differ": (
        lambda d, p, q: (d, p, q.to("meta")),
        ValueError,
        "must be on the same device",
    ),
}


@pytest.mark.parametrize("case", BAD_VERIFY, ids=list(BAD_VERIFY))
def test_verify_draft_rejects_bad_input(case):
    make, error, message = BAD_VERIFY[case]
    with pytest.raises(error, match=message):
        verify_draft(*make(*_good()))


def test_other_bad_inputs():
    d, p, q = _good()
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        verify_draft(d, p, q, generator=0)
    with pytest.raises(ValueError, match="epsilon must be a number in"):
        typical_accept(d, q, epsilon=2.0)
    with pytest.raises(ValueError, match=r"target_probs must have k\+1=3 rows"):
        typical_accept(d, q[:2])
    with pytest.raises(
        ValueError, match="temperature must be a finite number >= 0"
    ):
        logits_to_probs(torch.zeros(3), -1.0)
    with pytest.raises(TypeError, match="temperature must be a number"):
        logits_to_probs(torch.zeros(3), "hot")
    with pytest.raises(
        ValueError, match="top_k must be between 1 and the vocabulary size 3"
    ):
        logits_to_probs(torch.zeros(3), 1.0, top_k=4)
    with pytest.raises(TypeError, match="logits must be a floating-point"):
        logits_to_probs(torch.zeros(3, dtype=torch.long))
    model = random_model()
    with pytest.raises(
        ValueError, match="num_draft_tokens must be an int >= 1"
    ):
        speculative_generate(
            model, model, torch.tensor([1]), 4, num_draft_tokens=0
        )
    with pytest.raises(
        ValueError, match=r"prompt must have 1 dimensions \[T\] \(batch 1\)"
    ):
        speculative_generate(model, model, torch.tensor([[1, 2], [3, 4]]), 4)
    with pytest.raises(
        ValueError,
        match=r"= 301 tokens exceeds the model's context, max_seq_len=256",
    ):
        generate(model, torch.tensor([1]), 300)
    with pytest.raises(
        ValueError, match=r"prompt tokens must lie in \[0, 256\)"
    ):
        generate(model, torch.tensor([256]), 3)
    other = random_model(
        Config(
            dim=32,
            n_layers=1,
            n_heads=2,
            hidden=64,
            vocab_size=100,
            max_seq_len=256,
        )
    )
    with pytest.raises(
        ValueError, match="target and draft must share a vocabulary"
    ):
        speculative_generate(model, other, torch.tensor([1]), 4)
    with pytest.raises(
        ValueError, match=r"path \(1, 0\) needs its prefix \(1,\)"
    ):
        build_tree([(0,), (1, 0)])
    with pytest.raises(ValueError, match="paths must not repeat"):
        build_tree([(0,), (0,)])
    with pytest.raises(
        ValueError, match="the tree is 4 deep but there are only 2 heads"
    ):
        medusa_generate(
            model, MedusaHeads.from_target(model, 2), torch.tensor([1, 2]), 4
        )
    with pytest.raises(
        ValueError, match="acceptance must be 'exact' or 'typical'"
    ):
        medusa_generate(
            model,
            MedusaHeads.from_target(model, 4),
            torch.tensor([1, 2]),
            4,
            acceptance="greedy",
        )


# ----------------------------------------------------------------------------- KV cache
@pytest.mark.parametrize("accepted", [0, 2, 4])
def test_rollback_gives_the_logits_of_a_fresh_forward(accepted):
    """Feed a prefix and 5 drafts, reject all but ``accepted``, feed the next token: the logits equal
    those of a fresh forward over the accepted prefix plus that token."""
    model = random_model()
    g = torch.Generator().manual_seed(accepted)
    prefix, drafts, nxt = (
        torch.randint(256, (n,), generator=g) for n in (7, 5, 1)
    )
    cache = model.new_cache()
    model(prefix[None], cache)
    model(drafts[None], cache)
    cache.rollback(5 - accepted)
    assert cache.length == 7 + accepted
    logits = model(nxt[None], cache)[0, -1]
    fresh = model(torch.cat([prefix, drafts[:accepted], nxt])[None])[0, -1]
    torch.testing.assert_close(logits, fresh, rtol=0, atol=1e-12)
    cache.truncate(3)
    torch.testing.assert_close(
        model(nxt[None], cache)[0, -1],
        model(torch.cat([prefix[:3], nxt])[None])[0, -1],
        rtol=0,
        atol=1e-12,
    )
    with pytest.raises(
        ValueError, match="n must be between 0 and the cached length 4"
    ):
        cache.rollback(5)


def test_tree_forward_and_keep_match_a_sequential_forward():
    """A tree forward scores each node as if its root path had been fed alone; keeping a path in
    the cache then continues exactly like a fresh forward over it."""
    model = random_model()
    tree = build_tree([(0,), (1,), (0, 0), (1, 0), (0, 0, 0)])
    g = torch.Generator().manual_seed(5)
    prefix, nodes = (
        torch.randint(256, (6,), generator=g),
        torch.randint(256, (tree.num_nodes,), generator=g),
    )
    cache = model.new_cache()
    model(prefix[None], cache)
    logits = model(
        nodes[None], cache, tree_mask=tree.mask, position_ids=6 + tree.depth
    )[0]
    for node in range(tree.num_nodes):
        chain, j = [], node
        while j >= 0:
            chain.insert(0, j)
            j = int(tree.parent[j])
        fresh = model(torch.cat([prefix, nodes[chain]])[None])[0, -1]
        torch.testing.assert_close(logits[node], fresh, rtol=0, atol=1e-12)
    path = [0, 2, 4]  # root, (1,), (1, 0)
    cache.keep(6, path)
    nxt = torch.tensor([65])
    torch.testing.assert_close(
        model(nxt[None], cache)[0, -1],
        model(torch.cat([prefix, nodes[path], nxt])[None])[0, -1],
        rtol=0,
        atol=1e-12,
    )


def test_tree_mask_of_a_small_tree():
    tree = build_tree(
        [(1,), (0,), (0, 1), (0, 0), (1, 0)]
    )  # given out of order on purpose
    assert tree.paths == ((0,), (1,), (0, 0), (0, 1), (1, 0))
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],  # root
            [1, 1, 0, 0, 0, 0],  # (0,)
            [1, 0, 1, 0, 0, 0],  # (1,)
            [1, 1, 0, 1, 0, 0],  # (0, 0)
            [1, 1, 0, 0, 1, 0],  # (0, 1)
            [1, 0, 1, 0, 0, 1],  # (1, 0)
        ],
        dtype=torch.bool,
    )
    assert torch.equal(tree.mask, expected)
    assert tree.depth.tolist() == [
        0,
        1,
        1,
        2,
        2,
        2,
    ] and tree.parent.tolist() == [-1, 0, 0, 1, 1, 2]
    assert (
        tree.children[0] == (1, 2)
        and tree.children[1] == (3, 4)
        and tree.top_k == 2
    )


# ----------------------------------------------------------------------------- greedy equivalence
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
def test_greedy_speculative_equals_greedy_target(k):
    target = random_model()
    draft = perturbed_copy(target, noise=0.05)
    drafted = accepted = 0
    for prompt in PROMPTS:
        prompt = torch.tensor(prompt)
        tokens, stats = speculative_generate(
            target, draft, prompt, 40, num_draft_tokens=k, temperature=0
        )
        assert torch.equal(tokens, generate(target, prompt, 40, temperature=0))
        assert (
            stats.new_tokens >= 40
            and stats.drafted == k * stats.target_forwards
        )
        assert (
            len(stats.accepted_lengths) == stats.target_forwards
            and sum(stats.accepted_lengths) == stats.accepted
        )
        assert (
            stats.new_tokens == stats.accepted + stats.target_forwards
        )  # each step: accepted drafts + one
        drafted, accepted = drafted + stats.drafted, accepted + stats.accepted
    assert 0 < accepted < drafted, (
        "the draft should be accepted sometimes and rejected sometimes"
    )


def test_sampled_speculative_decoding_follows_the_target():
    """End to end at temperature 1: the first two generated tokens follow the target's distributions
    (the second one marginalised over the first), through the draft loop and the cache rollbacks."""
    target = random_model()
    draft = perturbed_copy(target, noise=0.05)
    prompt = torch.tensor([1, 2, 3])
    with torch.no_grad():
        p1 = torch.softmax(target(prompt[None])[0, -1], -1)  # [V]
        both = torch.cat(
            [prompt.expand(256, 3), torch.arange(256)[:, None]], dim=1
        )  # every first token
        p2 = (p1[:, None] * torch.softmax(target(both)[:, -1], -1)).sum(
            0
        )  # sum_x p(x) p(. | x)
    g = torch.Generator().manual_seed(0)
    first, second = (
        torch.zeros(256, dtype=torch.long),
        torch.zeros(256, dtype=torch.long),
    )
    rejected = 0
    for _ in range(1500):
        tokens, stats = speculative_generate(
            target, draft, prompt, 2, num_draft_tokens=2, generator=g
        )
        first[tokens[0]] += 1
        second[tokens[1]] += 1
        rejected += stats.accepted < stats.drafted
    assert 0 < rejected < 1500
    assert chi2_pvalue(first, p1) > ALPHA and chi2_pvalue(second, p2) > ALPHA


def test_draft_equal_to_target_is_always_accepted():
    model = random_model()
    tokens, stats = speculative_generate(
        model,
        model,
        torch.tensor([1, 2, 3]),
        30,
        num_draft_tokens=4,
        generator=torch.Generator().manual_seed(0),
    )
    assert (
        stats.acceptance_rate == 1.0 and stats.tokens_per_target_forward == 5.0
    )
    assert (
        isinstance(stats, DecodeStats)
        and stats.wall_s >= stats.draft_s + stats.target_s > 0
    )


def test_sampling_is_reproducible_with_a_generator():
    target = random_model()
    draft = perturbed_copy(target, noise=0.05)
    runs = [
        speculative_generate(
            target,
            draft,
            torch.tensor([5, 6]),
            30,
            3,
            temperature=0.8,
            generator=torch.Generator().manual_seed(7),
        )[0]
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1]) and len(runs[0]) == 30


# ----------------------------------------------------------------------------- trained tiny models
@pytest.fixture(scope="module")
def trained():
    """Tiny models trained for a few seconds on the standard library: drafts that get accepted."""
    train = TrainConfig(steps=150, batch_size=6, lr=1e-2, corpus_bytes=200_000)
    target, _ = train_lm(TINY_TRAINED, train, device="cpu", verbose=False)
    heads, history = train_medusa_heads(
        target,
        num_heads=4,
        train=TrainConfig(
            steps=100, batch_size=6, lr=1e-2, corpus_bytes=200_000
        ),
        device="cpu",
        verbose=False,
    )
    model, mtp, mtp_history = train_mtp(
        TINY_TRAINED, 0.5, train, device="cpu", verbose=False
    )
    return {
        "target": target.double(),
        "heads": heads.double(),
        "heads_history": history,
        "mtp_model": model.double(),
        "mtp": mtp.double(),
        "mtp_history": mtp_history,
    }


@pytest.mark.parametrize("acceptance", ["exact", "typical"])
@pytest.mark.parametrize(
    "paths",
    [DEFAULT_TREE, [(0,), (0, 0), (0, 0, 0)], [(0,), (1,), (2,), (3,), (1, 0)]],
    ids=["default", "chain", "wide"],
)
def test_greedy_medusa_equals_greedy_target(trained, paths, acceptance):
    target, heads = trained["target"], trained["heads"]
    accepted = 0
    for prompt in PROMPTS:
        prompt = torch.tensor(prompt)
        tokens, stats = medusa_generate(
            target,
            heads,
            prompt,
            40,
            tree=paths,
            temperature=0,
            acceptance=acceptance,
        )
        assert torch.equal(tokens, generate(target, prompt, 40, temperature=0))
        accepted += stats.accepted
    assert accepted > 0, (
        "the heads never got a candidate accepted: the tree path was not exercised"
    )


@pytest.mark.parametrize("k", [1, 2, 3])
def test_greedy_mtp_self_speculation_equals_greedy_model(trained, k):
    model, mtp = trained["mtp_model"], trained["mtp"]
    accepted = 0
    for prompt in PROMPTS:
        prompt = torch.tensor(prompt)
        tokens, stats = mtp_generate(
            model, mtp, prompt, 40, num_draft_tokens=k, temperature=0
        )
        assert torch.equal(tokens, generate(model, prompt, 40, temperature=0))
        accepted += stats.accepted
    assert accepted > 0


def test_sampled_medusa_and_mtp_run(trained):
    g = torch.Generator().manual_seed(0)
    for acceptance in ("exact", "typical"):
        tokens, stats = medusa_generate(
            trained["target"],
            trained["heads"],
            torch.tensor([100, 101]),
            30,
            temperature=0.7,
            acceptance=acceptance,
            generator=g,
        )
        assert len(tokens) == 30 and stats.target_forwards <= 30
    tokens, stats = mtp_generate(
        trained["mtp_model"],
        trained["mtp"],
        torch.tensor([100, 101]),
        30,
        2,
        temperature=0.7,
        generator=g,
    )
    assert len(tokens) == 30 and 0 <= stats.acceptance_rate <= 1


def test_training_reduces_the_losses(trained):
    def drop(
        history,
    ):  # mean of the first 5 steps minus mean of the last 20 (single batches are noisy)
        return sum(history[:5]) / 5 - sum(history[-20:]) / 20

    heads = trained["heads_history"]
    assert set(heads) == {"head0", "head1", "head2", "head3"}
    assert all(
        drop(h) > 0.2 for h in heads.values()
    )  # the heads start as copies of the next-token head
    mtp = trained["mtp_history"]
    assert drop(mtp["main"]) > 1.5 and drop(mtp["mtp"]) > 1.5


# ----------------------------------------------------------------------------- corpus, cache
def test_corpus_is_the_standard_library():
    data, digest = load_corpus(10_000)
    assert (
        data.dtype == torch.uint8 and len(data) == 10_000 and len(digest) == 64
    )
    assert load_corpus(10_000)[1] == digest
    assert b"import" in bytes(load_corpus(100_000)[0].tolist())


def test_checkpoints_are_cached_and_rebuilt_when_missing(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("KERNELS_CACHE", str(tmp_path))
    calls = []

    def build():
        calls.append(1)
        return {"x": torch.arange(3)}

    assert torch.equal(cached("test", {"a": 1}, build)["x"], torch.arange(3))
    assert torch.equal(cached("test", {"a": 1}, build)["x"], torch.arange(3))
    assert len(calls) == 1
    cached("test", {"a": 2}, build)  # another key: another checkpoint
    assert len(calls) == 2
    for path in (tmp_path / "speculative").iterdir():
        path.unlink()
    cached("test", {"a": 1}, build)  # missing: rebuilt
    assert len(calls) == 3 and "training" in capsys.readouterr().out


def test_load_models_trains_once_then_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERNELS_CACHE", str(tmp_path))
    train = TrainConfig(steps=3, batch_size=2, corpus_bytes=20_000)
    models = load_models("cpu", device="cpu", train=train, num_heads=2)
    assert "[train" in capsys.readouterr().out
    assert (
        len(list((tmp_path / "speculative").glob("*.pt"))) == 5
    )  # target, draft, heads, 2 MTP runs
    again = load_models("cpu", device="cpu", train=train, num_heads=2)
    assert "[train" not in capsys.readouterr().out
    for name in ("target", "draft", "mtp_model", "baseline"):
        assert isinstance(again[name], Transformer)
        assert all(
            torch.equal(a, b)
            for a, b in zip(
                models[name].state_dict().values(),
                again[name].state_dict().values(),
            )
        )
    assert (
        models["target"].config == PRESETS["cpu-target"]
        and models["draft"].config == PRESETS["cpu-draft"]
    )
    assert (
        isinstance(again["mtp"], MTPModule)
        and len(again["history"]["mtp"]["main"]) == 3
    )


def test_load_models_trains_only_what_is_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNELS_CACHE", str(tmp_path))
    train = TrainConfig(steps=2, batch_size=1, corpus_bytes=20_000)
    models = load_models(
        "cpu", device="cpu", models=("draft",), train=train, verbose=False
    )
    assert set(models) == {"draft", "history"} and set(models["history"]) == {
        "draft"
    }
    assert len(list((tmp_path / "speculative").glob("*.pt"))) == 1
    with pytest.raises(
        ValueError, match=r"models must name some of \('target'"
    ):
        load_models("cpu", models=("teacher",), train=train)


# ----------------------------------------------------------------------------- the model stack
def test_a_model_refuses_sequences_longer_than_its_trained_context():
    model = random_model(
        Config(dim=32, n_layers=1, n_heads=2, hidden=64, max_seq_len=16)
    )
    model(torch.zeros(1, 16, dtype=torch.long))  # the full context is fine
    with pytest.raises(
        ValueError,
        match="at most max_seq_len=16 tokens; this input reaches 17 positions",
    ):
        model(torch.zeros(1, 17, dtype=torch.long))
    cache = model.new_cache()
    model(torch.zeros(1, 10, dtype=torch.long), cache)
    with pytest.raises(
        ValueError,
        match="at most max_seq_len=16 tokens; this input reaches 19 positions",
    ):
        model(torch.zeros(1, 9, dtype=torch.long), cache)
    with pytest.raises(
        ValueError,
        match=r"prompt \(10\) \+ max_new_tokens \(3\) \+ lookahead \(4\) = 17 tokens",
    ):
        speculative_generate(
            model,
            model,
            torch.zeros(10, dtype=torch.long),
            3,
            num_draft_tokens=4,
        )
    for preset in PRESETS.values():  # every context is a training window: the trainer reads it from the config
        assert preset.max_seq_len in (128, 512)


def test_the_models_implement_the_interfaces():
    model = random_model()
    assert isinstance(model, LanguageModel)
    assert isinstance(MedusaHeads.from_target(model, 2), Drafter)
    assert isinstance(MTPModule(model.config), MultiTokenDrafter)


def test_medusa_heads_start_as_the_targets_next_token_head():
    """Cai et al. (2024): W1 starts at zero and each head's own W2 as a copy of the LM head."""
    model = random_model()
    heads = MedusaHeads.from_target(model, 3)  # in the model's dtype (float64)
    _, hidden = model(torch.tensor([[1, 2, 3, 4]]), return_hidden=True)
    logits = heads(hidden)  # [1, 4, 3, V]
    for i in range(3):
        torch.testing.assert_close(
            logits[:, :, i], model.lm_head(hidden), rtol=0, atol=1e-12
        )
    assert all(
        out.weight.data_ptr() != model.lm_head.weight.data_ptr()
        for out in heads.out
    )  # own copies
    with pytest.raises(
        ValueError, match="num_heads must be an int >= 1, got 0"
    ):
        MedusaHeads(32, 0)


def test_import_kernels_leaves_the_model_stack_unloaded():
    code = (
        "import sys, kernels, kernels.speculative\n"
        "loaded = sorted(m for m in sys.modules if m == 'kernels.models' or m.startswith('kernels.models.'))\n"
        "assert not loaded, loaded\n"
        "import kernels.models\n"
        "assert 'kernels.models.train' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_the_ops_never_import_the_model_stack():
    import ast
    from pathlib import Path

    import kernels

    root = Path(kernels.__file__).parent
    for path in root.rglob("*.py"):
        if "models" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(
                n == "models"
                or n.endswith(".models")
                or ".models." in n
                or n.startswith("models")
                for n in names
            ), f"{path} imports the model stack"
