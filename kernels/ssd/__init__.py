"""Mamba-2's SSD: a state space model whose decay is one scalar per head and step.

`ssd` (``api.py``) runs the selective scan's Triton kernel (``kernels/selective_scan/triton.py``)
on a rearranged layout: SSD has no kernel of its own. `ssd_ref` (``naive.py``) is the quadratic,
attention-like reference.
"""
from .api import ssd
from .naive import ssd_ref

__all__ = ["ssd", "ssd_ref"]
