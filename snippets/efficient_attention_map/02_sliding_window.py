"""The sliding window, measured: `flash_attention` with `window=(w - 1, 0)`
against dense causal.

You will see:
* that the windowed kernel computes exactly softmax attention under the band
  mask (against the reference with the mask written out);
* its time, forward and forward+backward, as the length grows at a fixed window,
  beside the dense causal kernel's: the kernel skips the key tiles outside the
  window, so its time should grow like ``T * w`` while the dense one grows like
  ``T²``.

Only a GPU run says anything about speed; on a CPU the snippet runs tiny sizes.
"""

# requires: cuda
# %%
import json

import matplotlib.pyplot as plt
import torch

from kernels import flash_attention
from kernels.bench import max_diff, time_ms
from kernels.flash_attention import attention_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# On a GPU: 16k tokens per batch, 16 heads of 128, bfloat16; a window of 1024
# keys.
if DEVICE == "cuda":
    LENGTHS, WINDOW, TOKENS, H, D, DTYPE = (
        [2048, 4096, 8192, 16384, 32768],
        1024,
        16384,
        16,
        128,
        torch.bfloat16,
    )
else:
    LENGTHS, WINDOW, TOKENS, H, D, DTYPE = (
        [128, 256],
        32,
        256,
        2,
        32,
        torch.float32,
    )
print(
    "device: "
    + (
        torch.cuda.get_device_name()
        if DEVICE == "cuda"
        else "cpu (timings say nothing about GPUs)"
    )
)

# %% [markdown]
# First, what the window means: query `i` sees keys `i - (w - 1)` to `i`, the
# band of the map's second panel. The kernel against the reference, which builds
# the `[T, T]` band and masks the full score matrix.

# %%
g = torch.Generator().manual_seed(0)
q, k, v = (
    torch.randn(1, H, 300, D, generator=g).to(DEVICE, DTYPE) for _ in range(3)
)
ours = flash_attention(q, k, v, window=(WINDOW - 1, 0))
reference = attention_ref(q, k, v, window=(WINDOW - 1, 0))
i = torch.arange(300, device=DEVICE)
# [T, T], True where seen
band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - WINDOW)
s = (q.double() @ k.double().transpose(-1, -2)) * D**-0.5
expected = torch.softmax(s.masked_fill(~band, float("-inf")), -1) @ v.double()
print(
    f"max |ours - masked softmax attention| = {max_diff(ours, expected):.2e}  "
    f"(reference: {max_diff(reference, expected):.2e})"
)

# %% [markdown]
# Then the time, at `B * T` fixed, for the window and for dense causal
# attention.


# %%
def measure(fn, q, k, v, mode):
    if mode == "fwd":
        return time_ms(lambda: fn(q, k, v), warmup=10, rep=50)
    do = torch.randn_like(q)

    def fwd_bwd():
        for x in (q, k, v):
            x.grad = None
        fn(q, k, v).backward(do)

    return time_ms(fwd_bwd, warmup=10, rep=50)


CONTENDERS = {
    f"window {WINDOW}": lambda q, k, v: flash_attention(
        q, k, v, window=(WINDOW - 1, 0)
    ),
    "dense causal": lambda q, k, v: flash_attention(q, k, v, causal=True),
}
rows = []
for T in LENGTHS:
    B = max(1, TOKENS // T)
    q, k, v = (
        torch.randn(B, H, T, D, device=DEVICE, dtype=DTYPE, requires_grad=True)
        for _ in range(3)
    )
    for mode in ("fwd", "fwd+bwd"):
        ms = {
            name: measure(fn, q, k, v, mode) for name, fn in CONTENDERS.items()
        }
        rows.append({"T": T, "B": B, "mode": mode, "ms": ms})
        print(
            f"{mode:7s} T={T:6d} B={B:2d}  "
            + "  ".join(f"{n}: {t:8.3f} ms" for n, t in ms.items())
            + "\n  dense / window: "
            + f"{ms['dense causal'] / ms[f'window {WINDOW}']:.2f}x"
        )

# %%
fig, axes = plt.subplots(
    2, 1, figsize=(6.8, 7.2), sharex=True, layout="constrained"
)
for ax, mode in zip(axes, ("fwd", "fwd+bwd")):
    points = [r for r in rows if r["mode"] == mode]
    for name in CONTENDERS:
        ax.plot(
            [r["T"] for r in points],
            [r["ms"][name] for r in points],
            "o-",
            ms=3,
            label=name,
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(
        title=f"{mode}, {TOKENS} tokens per batch, H={H}, D={D}",
        ylabel="time (ms)",
    )
    ax.grid(alpha=0.3)
    ax.legend()
axes[-1].set_xlabel("sequence length T (tokens)")
fig.suptitle(
    f"flash_attention with a sliding window of {WINDOW} keys\n"
    f"({torch.cuda.get_device_name() if DEVICE == 'cuda' else 'CPU'})"
)
fig.savefig("window.svg")

last = {
    mode: next(r for r in reversed(rows) if r["mode"] == mode)
    for mode in ("fwd", "fwd+bwd")
}
with open("results.json", "w") as f:
    json.dump(
        {
            "window": WINDOW,
            "max_length": LENGTHS[-1],
            "rows": rows,
            **{
                f"dense_over_window_{m.replace('+', '_')}_at_max": r["ms"][
                    "dense causal"
                ]
                / r["ms"][f"window {WINDOW}"]
                for m, r in last.items()
            },
        },
        f,
        indent=2,
    )
