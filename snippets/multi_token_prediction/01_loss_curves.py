"""Multi-token prediction as a training
objective: the loss curves with and without it.

You will see:
* the MTP module's shapes: the pairs (hidden state h_i, next token t_{i+1}) in,
  predictions of t_{i+2} out, with the embedding and output head shared with the
  main model;
* the training losses of two runs of the same model from the same initialisation
  on the same batches: next-token loss alone (lambda = 0), and next-token loss +
  lambda * MTP loss;
* the losses of both on held-out bytes.
"""

# %%
import json

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from kernels.models import TRAINING, load_corpus, load_models, split

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# which preset of trained models to load
SIZE = "gpu" if DEVICE == "cuda" else "cpu"
# lambda: DeepSeek-V3's weight for the first 10T tokens of its pre-training
MTP_WEIGHT = 0.3
torch.manual_seed(0)

models = load_models(
    SIZE,
    device=DEVICE,
    models=("mtp", "baseline"),
    mtp_weight=MTP_WEIGHT,
    verbose=False,
)  # trained and cached on the first run
model, mtp, baseline = models["mtp_model"], models["mtp"], models["baseline"]
train = TRAINING[SIZE]


def parameters(module, skip=()):
    return sum(
        p.numel()
        for name, p in module.named_parameters()
        if not name.startswith(skip)
    )


print(
    f"main model: {parameters(model):,} parameters ({model.config.n_layers} "
    f"blocks, dim {model.config.dim})"
)
print(
    f"MTP module: {parameters(mtp):,} parameters of its own (projection 2*dim "
    "-> dim, one block, a norm); embedding and output head are the main "
    "model's"
)

# %% [markdown]
# One forward on a window of held-out bytes. The main model sees
# `t_0 .. t_{T-1}` and predicts `t_1 .. t_T`. The MTP module gets the pairs
# `(h_i, t_{i+1})` for `i = 0 .. T-2` and predicts `t_{i+2}`: one position
# fewer, one token further. Its gradient reaches the main model through `h`;
# this is how `train_mtp` computes both losses.

# %%
# the bytes no run was trained on
_, held_out = split(load_corpus(train.corpus_bytes)[0])
# windows as long as the training windows
WINDOWS, LENGTH = 256 if DEVICE == "cuda" else 64, model.max_seq_len
starts = torch.randint(
    len(held_out) - LENGTH - 1,
    (WINDOWS,),
    generator=torch.Generator().manual_seed(0),
)
batch = (
    torch.stack([held_out[s : s + LENGTH + 1] for s in starts.tolist()])
    .long()
    .to(DEVICE)
)
x, y = batch[:, :-1], batch[:, 1:]  # inputs t_0..t_{T-1}, targets t_1..t_T
with torch.no_grad():
    logits, h = model(x, return_hidden=True)  # [W, T, V], [W, T, dim]
    # pairs (h_i, t_{i+1}) -> t_{i+2}: [W, T-1, V]
    mtp_logits, _ = mtp(model, h[:, :-1], x[:, 1:])
    baseline_logits = baseline(x)
print(
    f"x {tuple(x.shape)} -> main logits {tuple(logits.shape)}, hidden "
    f"{tuple(h.shape)}"
)
print(
    f"MTP input: hidden {tuple(h[:, :-1].shape)} and tokens "
    f"{tuple(x[:, 1:].shape)} -> logits {tuple(mtp_logits.shape)}, targets "
    f"y[:, 1:] {tuple(y[:, 1:].shape)}"
)


def loss_per_window(logits, targets):
    """Mean cross-entropy (nats per byte) of each window: [W]."""
    return F.cross_entropy(
        logits.float().transpose(1, 2), targets, reduction="none"
    ).mean(-1)


held = {
    "main loss, lambda = 0": loss_per_window(baseline_logits, y),
    f"main loss, lambda = {MTP_WEIGHT}": loss_per_window(logits, y),
    f"MTP loss, lambda = {MTP_WEIGHT}": loss_per_window(mtp_logits, y[:, 1:]),
}
difference = (
    held[f"main loss, lambda = {MTP_WEIGHT}"] - held["main loss, lambda = 0"]
)
# standard error over the windows
difference_se = difference.std().item() / WINDOWS**0.5
print(
    f"held-out loss over {WINDOWS} windows of {LENGTH} bytes (nats per byte):"
)
for name, loss in held.items():
    print(f"  {name:24s} {loss.mean().item():.3f}")
print(
    f"  main loss with MTP minus without: {difference.mean().item():+.3f} "
    f"(standard error {difference_se:.3f})"
)

# %% [markdown]
# The training curves. Both runs start from the same weights and see the same
# batches, so the difference between the two main losses comes from the MTP
# term. Per-step losses are noisy (each is one batch); the thick lines are
# running means over 25 steps.


# %%
def running_mean(values, width=25):
    v = torch.tensor(values)
    cumulative = torch.cat([torch.zeros(1), v.cumsum(0)])
    return [
        (cumulative[i + 1] - cumulative[max(0, i + 1 - width)]).item()
        / min(i + 1, width)
        for i in range(len(v))
    ]


curves = {
    "main loss, lambda = 0": models["history"]["baseline"]["main"],
    f"main loss, lambda = {MTP_WEIGHT}": models["history"]["mtp"]["main"],
    f"MTP loss, lambda = {MTP_WEIGHT}": models["history"]["mtp"]["mtp"],
}
fig, ax = plt.subplots(figsize=(6.8, 4.4))
for (name, values), color, style in zip(
    curves.items(), ("C0", "C1", "C2"), ("-", "-", "--")
):
    steps = range(1, len(values) + 1)
    ax.plot(steps, values, color=color, alpha=0.2, lw=0.8)
    ax.plot(
        steps,
        running_mean(values),
        color=color,
        ls=style,
        lw=2,
        label=name.replace("lambda", r"$\lambda$"),
    )
    ax.plot(
        [len(values)],
        [held[name].mean().item()],
        "o",
        color=color,
        ms=7,
        mec="black",
    )
smoothed = [
    v
    for values in curves.values()
    for v in running_mean(values)[len(values) // 10 :]
]
low = min(smoothed + [loss.mean().item() for loss in held.values()])
ax.set(
    xlabel="training step (optimizer steps)",
    ylabel="cross-entropy (nats per byte)",
    ylim=(low - 0.3, max(smoothed) + 0.3),
    title=(
        f"{SIZE}-size model ({parameters(model) / 1e6:.2f}M parameters),\n"
        f"{train.batch_size} x {model.max_seq_len} bytes per step"
    ),
)
ax.plot(
    [], [], "o", color="gray", mec="black", label="held-out loss after training"
)
ax.legend()
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig("loss_curves.svg", facecolor="white")

final = {name: running_mean(values)[-1] for name, values in curves.items()}
print(
    "training loss over the last 25 steps: "
    + ", ".join(f"{n} {v:.3f}" for n, v in final.items())
)
with open("results.json", "w") as f:
    json.dump(
        {
            "device": DEVICE,
            "size": SIZE,
            "mtp_weight": MTP_WEIGHT,
            "steps": train.steps,
            "batch_size": train.batch_size,
            "seq_len": model.max_seq_len,
            "main_parameters": parameters(model),
            "mtp_parameters": parameters(mtp),
            "mtp_fraction": parameters(mtp) / parameters(model),
            "held_out_windows": WINDOWS,
            "held_out_length": LENGTH,
            "held_out_main_baseline": held["main loss, lambda = 0"]
            .mean()
            .item(),
            "held_out_main_mtp": held[f"main loss, lambda = {MTP_WEIGHT}"]
            .mean()
            .item(),
            "held_out_mtp": held[f"MTP loss, lambda = {MTP_WEIGHT}"]
            .mean()
            .item(),
            "held_out_difference": difference.mean().item(),
            "held_out_difference_se": difference_se,
            "train_final_main_baseline": final["main loss, lambda = 0"],
            "train_final_main_mtp": final[f"main loss, lambda = {MTP_WEIGHT}"],
            "train_final_mtp": final[f"MTP loss, lambda = {MTP_WEIGHT}"],
        },
        f,
        indent=2,
    )
