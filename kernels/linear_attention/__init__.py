"""Linear attention: attention without a softmax, as an RNN with a matrix state
per head.

`linear_attention` and `linear_attention_step` (``api.py``) run the
chunk-parallel Triton kernels of ``triton.py``; `linear_attention_quadratic`,
`linear_attention_recurrent` and `linear_attention_chunk_states` (``naive.py``)
are the plain PyTorch references; ``feature_maps.py`` holds the feature maps
applied to ``q`` and ``k``; ``op.py`` registers the Triton path as PyTorch
operators (``torch.ops.kernels.linear_attention_fwd``, ``_bwd``,
``linear_attention_step``), which ``torch.compile`` traces.
"""

from .api import linear_attention, linear_attention_step
from .feature_maps import (
    elu_plus_one,
    gaussian_projection,
    orthogonal_gaussian,
    positive_random_features,
    relu,
    trigonometric_random_features,
)
from .naive import (
    linear_attention_chunk_states,
    linear_attention_quadratic,
    linear_attention_recurrent,
)

__all__ = [
    "linear_attention",
    "linear_attention_step",
    "linear_attention_quadratic",
    "linear_attention_recurrent",
    "linear_attention_chunk_states",
    "elu_plus_one",
    "relu",
    "positive_random_features",
    "trigonometric_random_features",
    "orthogonal_gaussian",
    "gaussian_projection",
]
