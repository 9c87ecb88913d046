"""Selectivity in one channel: remember the last marked value, ignore everything
else.

You will see a toy version of Mamba's selective-copying task. A stream of random
values goes by; a few of them carry a marker. At every position the output
should be the most recent marked value (0 before the first marker). Fillers are
random too, so they must be ignored, not just averaged away.

* A selective scan with one state and hand-set weights solves it: the step size
  ``Δ_t = softplus(20 m_t - 10)`` is large on marked tokens (the state forgets
  and takes the new value) and tiny on fillers (the state is kept and the token
  ignored).
* The best linear time-invariant filter cannot: we fit, by least squares over
  thousands of sequences, the causal convolution of *any* length that maps both
  the values and the markers to the target. Every time-invariant SSM (S4
  included, of any state size) computes such a convolution, so none can do
  better than this fit.
"""

# %%
import json

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from kernels import selective_scan

DEVICE = "cpu"  # a toy: the least-squares fit and the scans are small
L, P_MARK, N_TRAIN, N_TEST = 64, 0.1, 2000, 200
torch.manual_seed(0)


def make_batch(n):
    """Values ``u [n, L]`` ~ N(0, 1), markers ``m [n, L]`` in {0, 1}, and the
    target ``[n, L]``."""
    u = torch.randn(n, L)
    m = (torch.rand(n, L) < P_MARK).float()
    target = torch.zeros(n, L)
    last = torch.zeros(n)
    for t in range(L):
        last = torch.where(m[:, t] > 0, u[:, t], last)
        target[:, t] = last
    return u, m, target


u_train, m_train, y_train = make_batch(N_TRAIN)
u_test, m_test, y_test = make_batch(N_TEST)

# %% [markdown]
# The selective scan, with hand-set weights. Each sequence is one channel (d =
# number of sequences, b = 1), with one state (n = 1), `A = -1`, `B = 1` and
# `C = 1 / 10`. Only Δ depends on the input, through the marker, as Mamba's
# `delta_proj` followed by `softplus` would compute it:
# `Δ_t = softplus(20 m_t - 10)`, about 10 on a marked token and 5e-5 on a
# filler.
#
# * Marked token: `exp(Δ A) = exp(-10)` wipes the state, and `Δ B u_t = 10 u_t`
#   writes the new value.
# * Filler: `exp(Δ A)` is 1 to within 5e-5, so the state is kept, and `Δ B u_t`
#   is about 5e-5 u_t.


# %%
def selective_memory(u, m):
    """Output ``[n, L]`` of the hand-set selective scan on values ``u`` and
    markers ``m`` ``[n, L]``."""
    n = u.shape[0]
    # the "projection" of the marker; softplus is applied by the scan
    delta = 20.0 * m - 10.0
    # [d, n = 1], time-invariant
    A, B, C = (
        -torch.ones(n, 1),
        torch.ones(n, 1),
        torch.full((n, 1), 0.1),
    )
    # [n, L]
    return selective_scan(u[None], delta[None], A, B, C, delta_softplus=True)[0]


selective_out = selective_memory(u_test, m_test)

# %% [markdown]
# The best time-invariant filter:
# `y_t = sum_k (K_u[k] u_{t-k} + K_m[k] m_{t-k}) + c`, with kernels as long as
# the sequence, fitted by least squares on every position of every training
# sequence.


# %%
def lagged(x):
    """``[n, L] -> [n, L, L]``: entry ``[i, t, k]`` is ``x[i, t - k]`` (0 for
    ``k > t``)."""
    padded = F.pad(x, (L - 1, 0))  # [n, 2L - 1]
    # [n, L, L]: windows[i, t, j] = x[i, t - (L - 1) + j]
    windows = padded.unfold(1, L, 1)
    return windows.flip(-1)


def features(u, m):
    ones = torch.ones(*u.shape, 1)
    # [n L, 2L + 1]
    return torch.cat([lagged(u), lagged(m), ones], dim=-1).reshape(
        -1, 2 * L + 1
    )


weights = torch.linalg.lstsq(
    features(u_train, m_train).double(), y_train.reshape(-1, 1).double()
).solution
lti_out = (
    (features(u_test, m_test).double() @ weights).reshape(N_TEST, L).float()
)

# %% [markdown]
# Mean squared error on the held-out sequences, over all positions, against the
# trivial predictor 0 (whose error is the variance of the target).

# %%
mse = {
    "selective scan (hand-set)": F.mse_loss(selective_out, y_test).item(),
    "best time-invariant filter": F.mse_loss(lti_out, y_test).item(),
    "always 0": y_test.pow(2).mean().item(),
}
for name, value in mse.items():
    print(f"{name:28s} MSE {value:.2e}")

# %%
i = 0
fig, (ax_in, ax_dt, ax_out) = plt.subplots(
    3,
    1,
    figsize=(6.8, 6.6),
    sharex=True,
    gridspec_kw={"height_ratios": [1.2, 0.8, 1.4]},
)
t = torch.arange(L)
marked = m_test[i] > 0
ax_in.bar(
    t[~marked], u_test[i][~marked], color="lightgray", label="filler (ignore)"
)
ax_in.bar(
    t[marked], u_test[i][marked], color="tab:red", label="marked (remember)"
)
ax_in.set(ylabel="value $u_t$", title="Input stream of one test sequence")
# headroom for the legend above the bars
ax_in.margins(y=0.35)
ax_in.legend(loc="upper center", ncol=2)
ax_dt.semilogy(t, F.softplus(20.0 * m_test[i] - 10.0), "k.-", ms=3)
ax_dt.set(
    ylabel=r"step size $\Delta_t$",
    title=r"Selection: $\Delta_t = \mathrm{softplus}(20\,m_t - 10)$",
)
ax_out.step(
    t,
    y_test[i],
    where="post",
    color="black",
    lw=2.5,
    alpha=0.3,
    label="target: last marked value",
)
ax_out.plot(
    t, selective_out[i], "o-", ms=3, color="tab:blue", label="selective scan"
)
ax_out.plot(
    t,
    lti_out[i],
    "s-",
    ms=3,
    color="tab:orange",
    label="best time-invariant filter",
)
ax_out.set(xlabel="position t (tokens)", ylabel="output $y_t$", title="Outputs")
ax_out.legend(loc="lower left")
for ax in (ax_in, ax_dt, ax_out):
    ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig("selective_memory.svg", facecolor="white")

with open("results.json", "w") as f:
    json.dump(
        {
            "L": L,
            "p_mark": P_MARK,
            "train_sequences": N_TRAIN,
            "test_sequences": N_TEST,
            "mse_selective": mse["selective scan (hand-set)"],
            "mse_lti": mse["best time-invariant filter"],
            "mse_zero": mse["always 0"],
        },
        f,
        indent=2,
    )
