"""Mamba-2's SSD: a state space model whose decay is one scalar per head and
step.

`ssd` (``api.py``) is linear attention with a per-token decay (``q = C``,
``k = B``, ``v = dt x``, log-decay ``dt A``): it runs the chunk-parallel kernels
of `kernels.linear_attention`. `ssd_ref` (``naive.py``) is the quadratic,
attention-like reference. ``op.py`` registers the body of `ssd` as the operator
``torch.ops.kernels.ssd`` (``CompositeImplicitAutograd``), which
``torch.compile`` traces.
"""

from .api import ssd
from .naive import ssd_ref

__all__ = ["ssd", "ssd_ref"]
