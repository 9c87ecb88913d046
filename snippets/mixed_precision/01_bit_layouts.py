"""Bit layouts: how FP32, TF32, FP16, BF16
and the two FP8 formats spend their bits.

You will see:
* the sign, exponent and mantissa fields of each format, drawn bit by bit;
* the bits each format stores for the number pi, and the value those bits stand
  for;
* that TF32 is FP32 with the last 13 mantissa bits dropped, and BF16 FP32 with
  the last 16.
"""

# %%
import json
import math
import struct

import matplotlib.pyplot as plt
import torch

# %% [markdown]
# Each format as (key, name, torch dtype or None, sign bits, exponent bits,
# mantissa bits). TF32 is not a storage type: it lives in a 32-bit register, and
# the matrix units read only its first 19 bits. PyTorch has no TF32 dtype, so
# its bits are computed by hand below.

# %%
FORMATS = [
    ("fp32", "FP32", torch.float32, 1, 8, 23),
    ("tf32", "TF32", None, 1, 8, 10),
    ("fp16", "FP16", torch.float16, 1, 5, 10),
    ("bf16", "BF16", torch.bfloat16, 1, 8, 7),
    ("fp8_e4m3", "FP8 E4M3", torch.float8_e4m3fn, 1, 4, 3),
    ("fp8_e5m2", "FP8 E5M2", torch.float8_e5m2, 1, 5, 2),
]
VALUE = math.pi


def float32_bits(x: float) -> int:
    """The 32 bits of ``x`` rounded to float32, as an unsigned integer."""
    return struct.unpack("<I", struct.pack("<f", x))[0]


def tf32_bits(x: float) -> int:
    """The 19 bits of TF32: float32 rounded to nearest (ties to even) at its
    10th mantissa bit.
    """
    b = float32_bits(x)
    b = (b + 0x0FFF + ((b >> 13) & 1)) & ~0x1FFF  # round away the last 13 bits
    return b >> 13


def stored(dtype, x: float) -> tuple[str, float]:
    """(bit string, value those bits stand for) of ``x`` in one format."""
    if dtype is None:  # TF32
        b = tf32_bits(x)
        return format(b, "019b"), struct.unpack(
            "<f", struct.pack("<I", b << 13)
        )[0]
    t = torch.tensor(x).to(dtype)
    nbits = torch.finfo(dtype).bits
    as_int = {32: torch.int32, 16: torch.int16, 8: torch.uint8}[nbits]
    b = t.view(as_int).item() & ((1 << nbits) - 1)
    return format(b, f"0{nbits}b"), t.float().item()


rows = []
for key, name, dtype, s, e, m in FORMATS:
    bits, value = stored(dtype, VALUE)
    assert len(bits) == s + e + m
    rows.append(
        {
            "key": key,
            "name": name,
            "sign": s,
            "exponent": e,
            "mantissa": m,
            "bits": bits,
            "pi": value,
            "pi_text": f"{value:.6f}",
        }
    )
    print(
        f"{name:9s} {bits[0]} {bits[1 : 1 + e]} {bits[1 + e :]:23s}  pi -> "
        f"{value:.8f}"
    )

# %% [markdown]
# The figure: one row per format, one box per bit, most significant bit first.
# The 13 bits of the 32-bit register that TF32 ignores are hatched.

# %%
COLOURS = {"sign": "#f4a582", "exponent": "#92c5de", "mantissa": "#a6dba0"}
IGNORED = {"facecolor": "white", "edgecolor": "gray", "hatch": "///", "lw": 0.6}


def box(x: float, y: float, width: float, **style) -> plt.Rectangle:
    """A box ``width`` bits wide, starting at bit ``x`` of row ``y``."""
    return plt.Rectangle((x, y + 0.1), width, 0.8, **style)


ROW = 1.6  # height of a row: its caption above its boxes
fig, ax = plt.subplots(figsize=(6.8, 4.8))
for i, row in enumerate(rows):
    y = (len(rows) - 1 - i) * ROW
    fields = [
        f for f in ("sign", "exponent", "mantissa") for _ in range(row[f])
    ]
    for x, (field, bit) in enumerate(zip(fields, row["bits"])):
        ax.add_patch(
            box(x, y, 1, facecolor=COLOURS[field], edgecolor="black", lw=0.6)
        )
        ax.text(
            x + 0.5,
            y + 0.5,
            bit,
            ha="center",
            va="center",
            fontsize=9,
            family="monospace",
        )
    # the low bits of the float32 register that the matrix units ignore
    if row["key"] == "tf32":
        ax.add_patch(box(len(fields), y, 32 - len(fields), **IGNORED))
    bias = 2 ** (row["exponent"] - 1) - 1
    label = (
        f"1 + {row['exponent']} + {row['mantissa']} bits, bias {bias}:  π "
        f"→ {row['pi']:.6f}"
    )
    # the caption above the row: the format's name, then its rules and pi
    ax.text(0, y + 0.95, row["name"], va="bottom", weight="bold")
    ax.text(6, y + 0.95, label, va="bottom")
handles = [
    box(0, 0, 1, facecolor=c, edgecolor="black", lw=0.6)
    for c in COLOURS.values()
]
handles.append(box(0, 0, 1, **IGNORED))
ax.legend(
    handles,
    ["sign", "exponent", "mantissa (fraction)", "ignored by TF32 matrix units"],
    loc="upper center",
    bbox_to_anchor=(0.5, -0.14),
    ncol=2,
    frameon=False,
)
ax.set_xlim(-0.3, 32.3)
ax.spines["bottom"].set_bounds(0, 32)
ax.set_ylim(-0.1, len(rows) * ROW)
ax.set_xticks(range(0, 33, 4))
ax.set_xlabel("bit position, counted from the most significant bit (bits)")
ax.set_yticks([])
for side in ("left", "right", "top"):
    ax.spines[side].set_visible(False)
ax.set_title("Six floating-point formats, bit by bit, each storing π")
fig.tight_layout()
fig.savefig("bit_layouts.svg")

with open("results.json", "w") as f:
    json.dump({row["key"]: row for row in rows}, f, indent=2)
