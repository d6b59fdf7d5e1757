"""Memory attention graph: condition a frame's features on its object's memory bank.

The bank has a variable number of spatial memories (a dynamic slot axis) and a
fixed number of object-pointer slots; empty slots are masked out of the
attention, so the result equals sam2's on the valid entries alone.  Spatial
position encodings are constants of the 32x32 grid and live in the graph.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from medsam2.graphs import FEAT, HIDDEN_DIM, MEM_DIM, NUM_MASKMEM, OBJ_PTR_SLOTS
from medsam2_export.wrappers.attention import attend, key_bias, project
from medsam2_export.wrappers.rope import axial_angles, rotate

TOKENS = FEAT * FEAT
MAX_PTR_TOKENS = OBJ_PTR_SLOTS * (HIDDEN_DIM // MEM_DIM)


def sine_pe_1d(pos: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """sam2's ``get_1d_sine_pe``: [..., ] -> [..., dim]."""
    half = dim // 2
    dim_t = torch.arange(half, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)
    angles = pos.unsqueeze(-1) / dim_t
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class MemoryAttentionGraph(nn.Module):
    """sam2's ``_prepare_memory_conditioned_features`` + ``MemoryAttention`` for fixed-shape banks."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        attention = model.memory_attention
        self.layers = attention.layers
        self.norm = attention.norm
        self.no_mem_embed = model.no_mem_embed
        self.maskmem_tpos_enc = model.maskmem_tpos_enc
        self.obj_ptr_tpos_proj = model.obj_ptr_tpos_proj
        self.ptr_tokens = HIDDEN_DIM // MEM_DIM
        if self.layers[0].cross_attn_image.num_heads != 1:
            raise ValueError("the memory attention graph assumes sam2's one-head cross-attention")
        with torch.no_grad():
            curr_pos = model.image_encoder.neck.position_encoding(torch.zeros(1, HIDDEN_DIM, FEAT, FEAT))
            mem_pos = model.memory_encoder.position_encoding(torch.zeros(1, MEM_DIM, FEAT, FEAT))
        self.register_buffer("curr_pos", curr_pos.flatten(2).transpose(1, 2), persistent=False)
        self.register_buffer("mem_pos", mem_pos.flatten(2).transpose(1, 2), persistent=False)
        rope_dim = self.layers[0].self_attn.internal_dim // self.layers[0].self_attn.num_heads
        angles = axial_angles(rope_dim, FEAT, FEAT, theta=self.layers[0].self_attn.compute_cis.keywords["theta"])
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)

    def forward(
        self,
        feat_s2: Tensor,
        memory: Tensor,
        memory_tpos: Tensor,
        memory_valid: Tensor,
        obj_ptrs: Tensor,
        obj_ptr_tpos: Tensor,
        obj_ptr_valid: Tensor,
        no_memory: Tensor,
    ) -> Tensor:
        """Shapes as in ``medsam2.graphs.MEMORY_ATTENTION``; returns pix_feat [B, 256, 32, 32]."""
        batch = feat_s2.shape[0]
        curr = feat_s2.flatten(2).transpose(1, 2)
        spatial, spatial_pos = self._spatial_memory(memory, memory_tpos)
        pointers, pointer_pos = self._pointer_memory(obj_ptrs, obj_ptr_tpos)
        keys = torch.cat([spatial.flatten(1, 2), pointers], dim=1)
        keys_pos = torch.cat([spatial_pos.flatten(1, 2), pointer_pos], dim=1)
        valid = torch.cat(
            [
                memory_valid.unsqueeze(-1).expand(-1, -1, TOKENS).flatten(1),
                obj_ptr_valid.unsqueeze(-1).expand(-1, -1, self.ptr_tokens).flatten(1),
            ],
            dim=1,
        )
        bias = key_bias(valid)
        out = curr + 0.1 * self.curr_pos
        for layer in self.layers:
            out = self._layer(layer, out, keys, keys_pos, bias)
        out = self.norm(out)
        attended = out.transpose(1, 2).reshape(batch, HIDDEN_DIM, FEAT, FEAT)
        # An initial conditioning frame has no memory: sam2 adds the no-memory embedding instead.
        without_memory = feat_s2 + self.no_mem_embed.view(1, HIDDEN_DIM, 1, 1)
        return torch.where(no_memory.view(-1, 1, 1, 1) > 0.5, without_memory, attended)

    def _spatial_memory(self, memory: Tensor, memory_tpos: Tensor) -> tuple[Tensor, Tensor]:
        tokens = memory.flatten(3).transpose(2, 3)
        tpos = self.maskmem_tpos_enc.view(NUM_MASKMEM, MEM_DIM)[NUM_MASKMEM - 1 - memory_tpos]
        return tokens, self.mem_pos.unsqueeze(0) + tpos.unsqueeze(2)

    def _pointer_memory(self, obj_ptrs: Tensor, obj_ptr_tpos: Tensor) -> tuple[Tensor, Tensor]:
        batch, slots = obj_ptrs.shape[0], obj_ptrs.shape[1]
        # Each 256-d pointer becomes four 64-d tokens sharing one temporal encoding.
        tokens = obj_ptrs.reshape(batch, slots * self.ptr_tokens, MEM_DIM)
        pos = self.obj_ptr_tpos_proj(sine_pe_1d(obj_ptr_tpos, HIDDEN_DIM))
        pos = pos.unsqueeze(2).expand(-1, -1, self.ptr_tokens, -1).reshape(batch, slots * self.ptr_tokens, MEM_DIM)
        return tokens, pos

    def _layer(self, layer: nn.Module, tgt: Tensor, keys: Tensor, keys_pos: Tensor, bias: Tensor) -> Tensor:
        x = layer.norm1(tgt)
        q, k, v = project(layer.self_attn, x, x, x)
        q, k = rotate(q, self.rope_cos, self.rope_sin), rotate(k, self.rope_cos, self.rope_sin)
        tgt = tgt + attend(layer.self_attn, q, k, v)

        x = layer.norm2(tgt)
        tgt = tgt + self._cross_attention(layer.cross_attn_image, x, keys, keys_pos, bias)

        x = layer.norm3(tgt)
        return tgt + layer.linear2(layer.activation(layer.linear1(x)))

    def _cross_attention(self, attn: nn.Module, x: Tensor, keys: Tensor, keys_pos: Tensor, bias: Tensor) -> Tensor:
        # Values are a linear map of the 64-d memory and the attention weights sum to one, so
        # softmax(qk) @ (M W + b) == (softmax(qk) @ M) W + b: attend in 64-d, project once.
        # That cuts the largest matmul by 4x; sam2's one-head layout keeps it a plain matmul.
        q = rotate(attn.q_proj(x), self.rope_cos, self.rope_sin).unsqueeze(1)
        k = self._rotate_spatial_keys(attn.k_proj(keys + keys_pos).unsqueeze(1))
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
        weights = torch.softmax(scores + bias[:, None, None, :], dim=-1)
        mixed = torch.matmul(weights, keys.unsqueeze(1)).squeeze(1)
        return attn.out_proj(attn.v_proj(mixed))

    def _rotate_spatial_keys(self, k: Tensor) -> Tensor:
        # Spatial keys repeat the 32x32 grid once per memory; pointer tokens get no RoPE.
        batch, heads, _, dim = k.shape
        spatial = k[:, :, :-MAX_PTR_TOKENS].reshape(batch, heads, -1, TOKENS, dim)
        spatial = rotate(spatial, self.rope_cos, self.rope_sin).reshape(batch, heads, -1, dim)
        return torch.cat([spatial, k[:, :, -MAX_PTR_TOKENS:]], dim=2)
