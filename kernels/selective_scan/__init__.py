"""Mamba's selective scan: a linear recurrence whose decay and input depend on the token.

`selective_scan` (``api.py``) runs the chunked Triton scan of ``triton.py`` and
`selective_scan_step` its one-token decoding kernel; `selective_scan_ref` and
`selective_scan_step_ref` (``naive.py``) are the sequential PyTorch references.
"""

from .api import selective_scan, selective_scan_step
from .naive import selective_scan_ref, selective_scan_step_ref

__all__ = [
    "selective_scan",
    "selective_scan_step",
    "selective_scan_ref",
    "selective_scan_step_ref",
]
