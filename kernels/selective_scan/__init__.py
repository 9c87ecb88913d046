"""Mamba's selective scan: a linear recurrence whose decay and input depend on the token.

`selective_scan` and `selective_scan_step` (``api.py``) run the chunked Triton scan of
``triton.py``; `selective_scan_ref` (``naive.py``) is the sequential PyTorch reference.
"""
from .api import selective_scan, selective_scan_step
from .naive import selective_scan_ref

__all__ = ["selective_scan", "selective_scan_step", "selective_scan_ref"]
