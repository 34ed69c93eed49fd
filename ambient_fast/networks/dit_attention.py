"""Multi-head self- and cross-attention of the DiT blocks, with QK normalisation.

Queries and keys are layer-normalised per head without affine parameters before the dot product (QK-norm,
Dehghani et al. 2023, as in the MicroDiffusion release), which keeps attention logits bounded in low precision.
The attention width may differ from the token width (layer-wise scaling: see dit_presets.py). No biases (the
release's MicroDiT sizes use none). Masks are boolean, True = attend, broadcast as [B, 1, 1, L_keys].
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[B, T, H * head_dim] -> [B, H, T, head_dim]."""
    return x.unflatten(-1, (-1, head_dim)).transpose(1, 2)


def _attend(q, k, v, head_dim: int, mask: torch.Tensor | None) -> torch.Tensor:
    q, k, v = (_split_heads(t, head_dim) for t in (q, k, v))
    q, k = F.layer_norm(q, (head_dim,)), F.layer_norm(k, (head_dim,))  # QK-norm, no affine
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, width: int, head_dim: int):
        super().__init__()
        if width % head_dim:
            raise ValueError(f"attention width {width} is not a multiple of head_dim {head_dim}")
        self.head_dim = head_dim
        self.qkv = nn.Linear(dim, 3 * width, bias=False)
        self.proj = nn.Linear(width, dim, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(_attend(q, k, v, self.head_dim, mask))


class CrossAttention(nn.Module):
    """Image tokens [B, T, dim] attend to context tokens [B, L, context_dim] (the caption)."""

    def __init__(self, dim: int, context_dim: int, width: int, head_dim: int):
        super().__init__()
        if width % head_dim:
            raise ValueError(f"attention width {width} is not a multiple of head_dim {head_dim}")
        self.head_dim = head_dim
        self.q = nn.Linear(dim, width, bias=False)
        self.kv = nn.Linear(context_dim, 2 * width, bias=False)
        self.proj = nn.Linear(width, dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        k, v = self.kv(context).chunk(2, dim=-1)
        return self.proj(_attend(self.q(x), k, v, self.head_dim, mask))
