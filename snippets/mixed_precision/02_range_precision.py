"""Range and precision: what each format can
hold, and what happens to what it cannot.

You will see:
* the largest value, the smallest normal and subnormal values, the machine
  epsilon and the decimal digits of each format, from ``torch.finfo`` (and, for
  TF32, from its bit counts);
* overflow to ``inf`` and underflow to zero in float16, on real tensors;
* rounding: 2049 is not a float16, 257 is not a bfloat16, and ``1 + 1e-4`` is 1
  in float16;
* a sum of 4096 terms that stalls when it is accumulated in float16, but not in
  float32.
"""

# %%
import json
import math

import torch

# %% [markdown]
# The rules of an IEEE 754 binary format with `E` exponent bits and `M` mantissa
# bits: the bias is `2**(E-1) - 1`; the all-ones exponent is reserved for
# infinities and NaNs; the all-zeros exponent marks zero and the subnormal
# numbers.


# %%
def from_bit_counts(E: int, M: int) -> dict:
    """Range and precision of an IEEE 754 format with E exponent and M mantissa
    bits.
    """
    bias = 2 ** (E - 1) - 1
    return {
        # exponent field 2**E - 2, all mantissa bits set
        "max": (2 - 2.0**-M) * 2.0**bias,
        "smallest_normal": 2.0 ** (1 - bias),
        "smallest_subnormal": 2.0 ** (1 - bias - M),
        # the gap between 1 and the next number
        "eps": 2.0**-M,
        # M stored bits plus the implicit leading 1
        "digits": (M + 1) * math.log10(2),
    }


def with_span(p: dict) -> dict:
    """``p`` plus its span, smallest subnormal to largest value, in binary and
    decimal orders.
    """
    ratio = p["max"] / p["smallest_subnormal"]
    return {
        **p,
        "binary_orders": math.log2(ratio),
        "decimal_orders": math.log10(ratio),
    }


def from_finfo(dtype: torch.dtype) -> dict:
    """The same quantities for a torch dtype, from torch.finfo."""
    fi = torch.finfo(dtype)
    M = round(-math.log2(fi.eps))
    return {
        "max": fi.max,
        "smallest_normal": fi.smallest_normal,
        "smallest_subnormal": fi.smallest_normal * fi.eps,
        "eps": fi.eps,
        "digits": (M + 1) * math.log10(2),
    }


FORMATS = [  # (name, dtype, exponent bits, mantissa bits)
    ("float32", torch.float32, 8, 23),
    ("tf32", None, 8, 10),
    ("float16", torch.float16, 5, 10),
    ("bfloat16", torch.bfloat16, 8, 7),
    ("float8_e4m3fn", torch.float8_e4m3fn, 4, 3),
    ("float8_e5m2", torch.float8_e5m2, 5, 2),
]
props = {}
for name, dtype, E, M in FORMATS:
    props[name] = with_span(
        from_finfo(dtype) if dtype is not None else from_bit_counts(E, M)
    )
    props[name].update(exponent_bits=E, mantissa_bits=M)
    if dtype is not None:
        rule = from_bit_counts(E, M)
        differs = [k for k in rule if not math.isclose(rule[k], props[name][k])]
        print(
            f"{name:14s} torch.finfo agrees with the IEEE rules"
            if not differs
            else f"{name:14s} differs from the IEEE rules: "
            + ", ".join(
                f"{k} {props[name][k]:g} (rule {rule[k]:g})" for k in differs
            )
        )

# %% [markdown]
# The smallest subnormal is really there: it survives the conversion, and half
# of it does not.

# %%
for name, dtype, E, M in FORMATS:
    if dtype is not None:
        tiny = props[name]["smallest_subnormal"]
        kept = torch.tensor(tiny, dtype=torch.float64).to(dtype).double().item()
        lost = (
            torch.tensor(tiny / 2, dtype=torch.float64)
            .to(dtype)
            .double()
            .item()
        )
        print(
            f"{name:14s} smallest subnormal {tiny:.3e} -> {kept:.3e};  half of "
            f"it -> {lost:g}"
        )

# %% [markdown]
# The table on the page.


# %%
def number(x: float) -> str:
    """Integers below a million in full, everything else to three significant
    digits.
    """
    if x == int(x) and x < 1e6:
        return f"{x:.0f}"
    mantissa, _, exponent = f"{x:.3g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


with open("formats.md", "w") as f:
    f.write(
        "| Format | Largest | Smallest normal | Smallest subnormal | Epsilon | "
        "Digits |\n|---|---:|---:|---:|---:|---:|\n"
    )
    for name, dtype, E, M in FORMATS:
        p = props[name]
        label = f"`{name}`" if dtype is not None else "TF32 (bit counts)"
        powers = "".join(
            f"| 2<sup>{round(math.log2(p[k]))}</sup> = {number(p[k])} "
            for k in ("smallest_normal", "smallest_subnormal", "eps")
        )
        f.write(
            f"| {label} | {number(p['max'])} {powers}| {p['digits']:.1f} |\n"
        )


# %% [markdown]
# Overflow and underflow in float16, with bfloat16 beside it.


# %%
def to(x: float, dtype: torch.dtype) -> float:
    """``x`` stored in ``dtype`` and read back as a Python float."""
    return torch.tensor(x, dtype=torch.float64).to(dtype).item()


demos = {}
for x in [70000.0, 1e-8, 1e-6, 2049.0, 257.0]:
    h, b = to(x, torch.float16), to(x, torch.bfloat16)
    demos[f"{x:g}"] = {
        "float16": h if math.isfinite(h) else str(h),
        "bfloat16": b,
    }
    print(f"{x:>8g} -> float16 {h:<14.8g} bfloat16 {b:.8g}")
demos["70000"]["bfloat16_error"] = to(70000.0, torch.bfloat16) - 70000.0
error = abs(to(1e-6, torch.float16) - 1e-6) / 1e-6
# largest relative rounding error of a normal float16
worst_normal = props["float16"]["eps"] / 2
demos["1e-06"].update(
    float16_error_percent=100 * error, times_worst_normal=error / worst_normal
)
print(f"relative error of 1e-6 in float16 (a subnormal): {error:.2%},")
print(
    f"{error / worst_normal:.0f} times the worst case of a normal float16 "
    f"({worst_normal:.3%})"
)

# %% [markdown]
# A small update to a weight of 1.0: float16 cannot hold `1 + 1e-4`, so a
# hundred such updates leave it unchanged, while a float32 master copy collects
# all of them.

# %%
w16, w32 = torch.tensor(1.0, dtype=torch.float16), torch.tensor(1.0)
for _ in range(100):
    w16 = w16 + torch.tensor(1e-4, dtype=torch.float16)
    w32 = w32 + 1e-4
print(
    f"1.0 plus 100 updates of 1e-4: float16 {w16.item():.6f}, float32 "
    f"{w32.item():.6f}"
)

# %% [markdown]
# Accumulation: 4096 terms of 0.01 (the products of a dot product of length
# 4096, say) added one by one into a float16 sum, into a float32 sum, and by a
# `torch` matrix product with float16 inputs.

# %%
terms = torch.full((4096,), 0.01, dtype=torch.float16)
acc16 = torch.tensor(0.0, dtype=torch.float16)
for t in terms:
    # every partial sum is rounded to float16
    acc16 = acc16 + t
acc32 = terms.float().sum().item()
matmul16 = (terms[None, :] @ torch.ones(4096, 1, dtype=torch.float16)).item()
exact = 4096 * to(0.01, torch.float16)
print(f"4096 terms of 0.01 added one by one in float16: {acc16.item():.2f}")
print(
    f"in float32: {acc32:.2f};  by a float16 matmul: {matmul16:.2f};  exact: "
    f"{exact:.2f}"
)

sums = {
    "float16_running_sum": acc16.item(),
    "float32_sum": acc32,
    "float16_matmul": matmul16,
    "exact": exact,
}
with open("results.json", "w") as f:
    json.dump(
        {
            **props,
            "demos": demos,
            "update": {"float16": w16.item(), "float32": w32.item()},
            # the sums as text with two decimals, as the page shows them
            "accumulation": {k: f"{v:.2f}" for k, v in sums.items()},
        },
        f,
        indent=2,
    )
