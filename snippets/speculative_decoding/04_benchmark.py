"""Speculative decoding on a GPU: tokens per second, against the prediction and
against Hugging Face.

You will see, for the GPU-size target and draft (trained on the first GPU run,
then cached), greedy and at temperature 1, in bfloat16, batch 1:
* tokens/s of plain decoding with the target, and of speculative decoding for k
  = 1, 2, 4, 6;
* the cost ratio c of a draft forward to a target forward, measured from plain
  decoding;
* the measured speed-up against Leviathan et al.'s prediction
  ``(1 - alpha^(k+1)) / ((1 - alpha)(k c + 1))`` from the measured alpha and c;
* when ``transformers`` is installed: the same two sets of weights in Hugging
  Face Llama models, and the speed-up of its assisted generation
  (``generate(..., assistant_model=...)``).
Only a GPU run says anything about speed; on a CPU the snippet runs the small
models briefly.
"""

# requires: cuda
# %%
import copy
import json
import time

import matplotlib.pyplot as plt
import torch

from kernels.models import TRAINING, load_corpus, load_models
from kernels.speculative import generate, speculative_generate

try:
    from transformers import LlamaConfig, LlamaForCausalLM

    HAS_HF = True
except ImportError:
    HAS_HF = False

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZE, DTYPE = (
    ("gpu", torch.bfloat16) if DEVICE == "cuda" else ("cpu", torch.float32)
)
# GPU grid sized for about 30-40 s of decoding in all (ours and Hugging Face's,
# two temperatures): 3 prompts x 128 tokens per configuration, at roughly 2-4 ms
# per batch-1 step of these models.
KS, PROMPTS, NEW_TOKENS, PROMPT_LEN = (
    ([1, 2, 4, 6], 3, 128, 64) if DEVICE == "cuda" else ([1, 2, 4], 2, 24, 32)
)
TEMPERATURES = [0.0, 1.0]
if DEVICE == "cpu":
    # tiny matrices: one thread avoids the thread pool's overhead
    torch.set_num_threads(1)
# trains only these two on first use
models = load_models(SIZE, device=DEVICE, models=("target", "draft"))
target, draft = models["target"].to(DTYPE), models["draft"].to(DTYPE)
DEVICE_NAME = (
    torch.cuda.get_device_name()
    if DEVICE == "cuda"
    else "cpu (timings say nothing about GPUs)"
)
print(
    f"device: {DEVICE_NAME}, "
    f"{SIZE}-size models in {str(DTYPE).replace('torch.', '')}, transformers "
    f"installed: {HAS_HF}"
)

# %% [markdown]
# Prompts from the held-out end of the corpus, each at the start of a line.

# %%
data, _ = load_corpus(TRAINING[SIZE].corpus_bytes)
held_out = data[int(0.95 * len(data)) :]
g = torch.Generator().manual_seed(0)
line_starts = (held_out[: -PROMPT_LEN - 1] == ord("\n")).nonzero().flatten() + 1
picks = line_starts[torch.randperm(len(line_starts), generator=g)[:PROMPTS]]
prompts = [
    held_out[s : s + PROMPT_LEN].long().to(DEVICE) for s in picks.tolist()
]


# %% [markdown]
# A timer over all prompts (synchronising the GPU, since plain decoding never
# waits for it), after one untimed warm-up run that compiles the kernels for
# these shapes.


# %%
def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def tokens_per_second(run):
    """``run(prompt, seed)`` generates NEW_TOKENS tokens; returns (tokens/s over
    all prompts, its outputs).
    """
    run(prompts[0], 0)  # warm-up
    sync()
    start, outputs = time.perf_counter(), []
    for i, prompt in enumerate(prompts):
        outputs.append(run(prompt, i))
    sync()
    return NEW_TOKENS * len(prompts) / (time.perf_counter() - start), outputs


def seeded(seed):
    return torch.Generator(DEVICE).manual_seed(seed)


def expected_tokens(alpha, k):
    return float(k + 1) if alpha == 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def alpha_from_lengths(lengths, k):
    """Accepted drafts over tested drafts (a step that stopped at a rejection
    tested n + 1).
    """
    accepted = sum(lengths)
    return accepted / (accepted + sum(n < k for n in lengths))


# %% [markdown]
# Plain decoding with each model gives the baseline and c, the time of a draft
# step over the time of a target step (both one forward and one sample per
# token). Then speculative decoding for every k, with alpha measured from its
# accepted lengths, and the prediction.

# %%
with torch.no_grad():
    ours = {}
    for temperature in TEMPERATURES:
        plain, _ = tokens_per_second(
            lambda p, s: generate(target, p, NEW_TOKENS, temperature, seeded(s))
        )
        draft_plain, _ = tokens_per_second(
            lambda p, s: generate(draft, p, NEW_TOKENS, temperature, seeded(s))
        )
        c = plain / draft_plain
        print(
            f"temperature {temperature:g}: plain decoding {plain:.0f} tokens/s "
            f"(draft alone {draft_plain:.0f}), c = {c:.3f}"
        )
        rows = []
        for k in KS:
            rate, outs = tokens_per_second(
                lambda p, s: speculative_generate(
                    target,
                    draft,
                    p,
                    NEW_TOKENS,
                    num_draft_tokens=k,
                    temperature=temperature,
                    generator=seeded(s),
                )
            )
            lengths = [n for _, stats in outs for n in stats.accepted_lengths]
            alpha = alpha_from_lengths(lengths, k)
            predicted = expected_tokens(alpha, k) / (k * c + 1)
            rows.append(
                {
                    "k": k,
                    "tokens_per_s": rate,
                    "alpha": alpha,
                    "speedup": rate / plain,
                    "predicted": predicted,
                    "ratio": rate / plain / predicted,
                    "tokens_per_forward": sum(n + 1 for n in lengths)
                    / len(lengths),
                }
            )
            print(
                f"  k={k}: {rate:.0f} tokens/s, alpha {alpha:.3f}, speed-up "
                f"{rate / plain:.2f}x, predicted {predicted:.2f}x, measured / "
                f"predicted {rows[-1]['ratio']:.2f}"
            )
        ours[temperature] = {
            "plain": plain,
            "draft_plain": draft_plain,
            "c": c,
            "rows": rows,
        }


# %% [markdown]
# Hugging Face. Our blocks are Llama's (RMSNorm, rotary embeddings on halves of
# each head, SwiGLU, no biases), so the weights map one to one: the fused `wqkv`
# splits into `q_proj`, `k_proj`, `v_proj`, and `w_gate_up` into `gate_proj` and
# `up_proj`. The conversion is checked on logits before anything is timed.


# %%
def to_hf(model):
    c = model.config
    config = LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.dim,
        intermediate_size=c.hidden,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_heads,
        max_position_embeddings=c.max_seq_len,
        rms_norm_eps=1e-5,
        rope_theta=c.rope_base,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    state = {
        "model.embed_tokens.weight": model.embed.weight,
        "model.norm.weight": model.norm.weight,
        "lm_head.weight": model.lm_head.weight,
    }
    for i, block in enumerate(model.layers):
        p = f"model.layers.{i}."
        # rows: q, k, v (the view [3, H, D] in Attention)
        q, k, v = block.attn.wqkv.weight.chunk(3, dim=0)
        # rows: gate, up (chunk(2) in Block)
        gate, up = block.w_gate_up.weight.chunk(2, dim=0)
        state.update(
            {
                p + "input_layernorm.weight": block.attn_norm.weight,
                p + "post_attention_layernorm.weight": block.ffn_norm.weight,
                p + "self_attn.q_proj.weight": q,
                p + "self_attn.k_proj.weight": k,
                p + "self_attn.v_proj.weight": v,
                p + "self_attn.o_proj.weight": block.attn.wo.weight,
                p + "mlp.gate_proj.weight": gate,
                p + "mlp.up_proj.weight": up,
                p + "mlp.down_proj.weight": block.w_down.weight,
            }
        )
    hf = LlamaForCausalLM(config)
    hf.load_state_dict(
        {name: w.detach().float().cpu() for name, w in state.items()},
        strict=True,
    )
    return hf.to(device=DEVICE, dtype=DTYPE).eval()


def hf_generate(model, prompt, seed, temperature, assistant=None):
    torch.manual_seed(seed)  # Hugging Face samples from the global generator
    sampling = (
        {
            "do_sample": True,
            "temperature": temperature,
            "top_k": 0,
            "top_p": 1.0,
        }
        if temperature > 0
        else {"do_sample": False}
    )
    out = model.generate(
        prompt[None],
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        assistant_model=assistant,
        pad_token_id=0,
        **sampling,
    )
    return out[0, len(prompt) :]


def configure_assistant(hf_draft, defaults, k=None):
    """Hugging Face's own settings (k=None), or exactly k draft tokens per step
    like ours.
    """
    hf_draft.generation_config = copy.deepcopy(defaults)
    if k is not None:
        hf_draft.generation_config.num_assistant_tokens = k
        hf_draft.generation_config.num_assistant_tokens_schedule = "constant"
        if hasattr(
            hf_draft.generation_config, "assistant_confidence_threshold"
        ):
            # never stop drafting early
            hf_draft.generation_config.assistant_confidence_threshold = 0.0


hf = {}
if HAS_HF:
    hf_target, hf_draft = to_hf(target), to_hf(draft)
    with torch.no_grad():
        probe = prompts[0][None]
        diff = max(
            (ours_m(probe).float() - hf_m(probe).logits.float())
            .abs()
            .max()
            .item()
            for ours_m, hf_m in ((target, hf_target), (draft, hf_draft))
        )
    print(f"Hugging Face conversion: max |logit difference| {diff:.3g}")
    defaults = copy.deepcopy(hf_draft.generation_config)
    # what newer versions fill in at generate time
    unset = getattr(defaults, "_get_default_generation_params", dict)()
    shown = {
        name: getattr(defaults, name, None)
        if getattr(defaults, name, None) is not None
        else unset.get(name)
        for name in (
            "num_assistant_tokens",
            "num_assistant_tokens_schedule",
            "assistant_confidence_threshold",
        )
    }
    print("Hugging Face's assistant defaults:", shown)
    for temperature in TEMPERATURES:
        plain, _ = tokens_per_second(
            lambda p, s: hf_generate(hf_target, p, s, temperature)
        )
        configure_assistant(hf_draft, defaults)
        default_rate, _ = tokens_per_second(
            lambda p, s: hf_generate(hf_target, p, s, temperature, hf_draft)
        )
        per_k = []
        for k in KS:
            configure_assistant(hf_draft, defaults, k)
            rate, _ = tokens_per_second(
                lambda p, s: hf_generate(hf_target, p, s, temperature, hf_draft)
            )
            per_k.append(
                {"k": k, "tokens_per_s": rate, "speedup": rate / plain}
            )
        hf[temperature] = {
            "plain": plain,
            "default": default_rate,
            "default_speedup": default_rate / plain,
            "rows": per_k,
            "logit_max_abs_diff": diff,
        }
        print(
            f"temperature {temperature:g}: HF plain {plain:.0f} tokens/s, "
            f"assisted with its defaults {default_rate:.0f} tokens/s = "
            f"{default_rate / plain:.2f}x; fixed k: "
            + ", ".join(f"{r['k']}: {r['speedup']:.2f}x" for r in per_k)
        )
else:
    print(
        "transformers is not installed: no Hugging Face comparison (pip "
        "install transformers)"
    )

# %% [markdown]
# The verdicts: our best speed-up over k against Hugging Face's best (its
# defaults or any fixed k), and the lowest ratio of measured to predicted
# speed-up.

# %%
summary = {
    "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
    "dtype": str(DTYPE),
    "new_tokens": NEW_TOKENS,
    "prompts": PROMPTS,
    "ours": ours,
    "hf": hf,
}
for temperature in TEMPERATURES:
    best = max(ours[temperature]["rows"], key=lambda r: r["speedup"])
    line = (
        f"temperature {temperature:g}: best speed-up {best['speedup']:.2f}x at "
        f"k = {best['k']}; measured / predicted between "
        f"{min(r['ratio'] for r in ours[temperature]['rows']):.2f} and "
        f"{max(r['ratio'] for r in ours[temperature]['rows']):.2f} (target >= "
        "0.9)"
    )
    if temperature in hf:
        hf_best = max(
            [hf[temperature]["default_speedup"]]
            + [r["speedup"] for r in hf[temperature]["rows"]]
        )
        line += (
            f"; Hugging Face's best {hf_best:.2f}x, ours / HF = "
            f"{best['speedup'] / hf_best:.2f} (target >= 1.0)"
        )
        summary[f"ours_over_hf_t{temperature:g}"] = best["speedup"] / hf_best
    summary[f"min_ratio_t{temperature:g}"] = min(
        r["ratio"] for r in ours[temperature]["rows"]
    )
    print(line)

# three panels per temperature, stacked in one column
fig, axes = plt.subplots(
    3 * len(TEMPERATURES),
    1,
    figsize=(6.8, 3.3 * 3 * len(TEMPERATURES)),
    squeeze=False,
    layout="constrained",
)
for row, temperature in enumerate(TEMPERATURES):
    o = ours[temperature]
    ks = [r["k"] for r in o["rows"]]
    panels = axes[3 * row : 3 * row + 3, 0]
    ax = panels[0]
    ax.plot(
        ks,
        [r["tokens_per_s"] for r in o["rows"]],
        "o-",
        label="speculative (ours)",
    )
    ax.axhline(o["plain"], color="C0", ls="--", label="plain decoding (ours)")
    if temperature in hf:
        ax.plot(
            ks,
            [r["tokens_per_s"] for r in hf[temperature]["rows"]],
            "s-",
            color="C1",
            label="assisted generation (HF), fixed $k$",
        )
        ax.axhline(
            hf[temperature]["plain"],
            color="C1",
            ls="--",
            label="plain generate (HF)",
        )
        ax.axhline(
            hf[temperature]["default"],
            color="C1",
            ls=":",
            label="assisted generation (HF), defaults",
        )
    ax.set(
        xlabel="draft tokens per step $k$ (tokens)",
        ylabel="tokens/s",
        ylim=(0, None),
        title=f"Throughput, temperature {temperature:g}",
    )
    ax = panels[1]
    ax.plot(
        ks, [r["speedup"] for r in o["rows"]], "o-", label="measured (ours)"
    )
    ax.plot(
        ks,
        [r["predicted"] for r in o["rows"]],
        "k--",
        label=rf"predicted from $\alpha$ and $c = {o['c']:.2f}$",
    )
    if temperature in hf:
        ax.plot(
            ks,
            [r["speedup"] for r in hf[temperature]["rows"]],
            "s-",
            color="C1",
            label="measured (HF)",
        )
    ax.axhline(1, color="gray", lw=1)
    ax.set(
        xlabel="draft tokens per step $k$ (tokens)",
        ylabel="speed-up over plain decoding (×)",
        title=f"Speed-up, temperature {temperature:g}",
    )
    ax = panels[2]
    ax.plot(
        ks,
        [r["ratio"] for r in o["rows"]],
        "o-",
        label="measured / predicted (ours)",
    )
    ax.axhline(0.9, color="red", ls="--", label="target 0.9")
    ax.set(
        xlabel="draft tokens per step $k$ (tokens)",
        ylabel="measured / predicted",
        # From 0, and high enough for the target line and every measured ratio.
        ylim=(0, max([1.3] + [1.1 * r["ratio"] for r in o["rows"]])),
        title=f"Measured over predicted speed-up, temperature {temperature:g}",
    )
    for ax in panels:
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
        ax.legend()
fig.suptitle(
    f"Batch-1 decoding of {NEW_TOKENS} tokens x {PROMPTS} prompts, {SIZE}-size "
    f"models,\n{str(DTYPE).replace('torch.', '')} ({summary['device']})"
)
fig.savefig("speedup.svg")

with open("benchmark.md", "w") as f:
    f.write(
        "| temperature | k | alpha | tokens/s (ours) | speed-up | predicted | "
        "measured / predicted | tokens/s (HF) | speed-up (HF) "
        "|\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    for temperature in TEMPERATURES:
        o = ours[temperature]
        hf_rows = (
            hf[temperature]["rows"]
            if temperature in hf
            else [None] * len(o["rows"])
        )
        f.write(
            f"| {temperature:g} | plain | | {o['plain']:.0f} | 1.00x | | | "
            + (
                f"{hf[temperature]['plain']:.0f} | 1.00x |\n"
                if temperature in hf
                else "– | – |\n"
            )
        )
        for r, h in zip(o["rows"], hf_rows):
            f.write(
                f"| {temperature:g} | {r['k']} | {r['alpha']:.3f} | "
                f"{r['tokens_per_s']:.0f} | {r['speedup']:.2f}x | "
                f"{r['predicted']:.2f}x | {r['ratio']:.2f} | "
                + (
                    f"{h['tokens_per_s']:.0f} | {h['speedup']:.2f}x |\n"
                    if h
                    else "– | – |\n"
                )
            )
        if temperature in hf:
            f.write(
                f"| {temperature:g} | HF defaults | | | | | | "
                f"{hf[temperature]['default']:.0f} | "
                f"{hf[temperature]['default_speedup']:.2f}x |\n"
            )
    f.write(
        "\nc (draft step time / target step time, from plain decoding): "
        + ", ".join(
            f"{ours[t]['c']:.3f} at temperature {t:g}" for t in TEMPERATURES
        )
        + ".\n"
    )

with open("results.json", "w") as f:
    json.dump(summary, f, indent=2, default=str)
