"""PyTorch modules that compute each stage graph from sam2's own submodules.

Each wrapper reuses the parameters of a loaded sam2 model and rewrites only what
ONNX and TensorRT cannot take (complex RoPE, variable-length memories and
prompts, data-dependent selection).  Their signatures are the contract in
``medsam2.graphs``.
"""

from medsam2_export.wrappers.image_encoder import ImageEncoderGraph
from medsam2_export.wrappers.mask_downsampler import MaskDownsamplerGraph
from medsam2_export.wrappers.mask_select import MaskSelectGraph
from medsam2_export.wrappers.memory_attention import MemoryAttentionGraph
from medsam2_export.wrappers.memory_encoder import MemoryEncoderGraph
from medsam2_export.wrappers.sam_heads import SamHeadsGraph

__all__ = [
    "ImageEncoderGraph",
    "MaskDownsamplerGraph",
    "MaskSelectGraph",
    "MemoryAttentionGraph",
    "MemoryEncoderGraph",
    "SamHeadsGraph",
]
