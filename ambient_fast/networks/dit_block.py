"""The DiT block with adaLN-zero conditioning and cross-attention, and the final layer.

Block (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers", Section 3.2 "adaLN-Zero"; the
cross-attention placement of MicroDiT / PixArt-alpha):
    shift1, scale1, gate1, shift2, scale2, gate2 = Linear(cond)          (cond = SiLU(c), c the conditioning vector)
    x += gate1 * SelfAttn(LN(x) * (1 + scale1) + shift1)
    x += g_caption * CrossAttn(LN'(x), caption tokens)                 (g_caption = 0 for an empty caption)
    x += gate2 * FFN(LN(x) * (1 + scale2) + shift2)
The modulation Linear and the cross-attention output projection start at zero, so every block starts as the
identity (adaLN-zero); the final layer's output projection starts at zero too, so F = 0 and D = c_skip x at start.
"""
from __future__ import annotations

import torch
from torch import nn

from .dit_attention import CrossAttention, SelfAttention

NORM_EPS = 1e-6


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    def __init__(self, dim: int, *, cond_dim: int, head_dim: int, attn_width: int, ffn: nn.Module, context_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS, elementwise_affine=False)
        self.attn = SelfAttention(dim, attn_width, head_dim)
        self.norm2 = nn.LayerNorm(dim, eps=NORM_EPS, bias=False) if context_dim else None
        self.cross = CrossAttention(dim, context_dim, dim, head_dim) if context_dim else None
        self.norm3 = nn.LayerNorm(dim, eps=NORM_EPS, elementwise_affine=False)
        self.ffn = ffn
        self.modulation = nn.Linear(cond_dim, 6 * dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, context_gate: torch.Tensor | None = None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond).unsqueeze(1).chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))
        if self.cross is not None and context is not None:
            x = x + context_gate * self.cross(self.norm2(x), context, context_mask)
        return x + gate2 * self.ffn(modulate(self.norm3(x), shift2, scale2))

    def zero_init(self) -> None:
        """adaLN-zero: gates, shifts and scales start at 0; the cross-attention contributes 0 at start."""
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        if self.cross is not None:
            nn.init.zeros_(self.cross.proj.weight)


class FinalLayer(nn.Module):
    """LN, adaLN shift/scale, then a linear map from dim to the patch's pixels (patch_size^2 * channels)."""

    def __init__(self, dim: int, *, cond_dim: int, out_features: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS, elementwise_affine=False)
        self.modulation = nn.Linear(cond_dim, 2 * dim)
        self.linear = nn.Linear(dim, out_features)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(cond).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))

    def zero_init(self) -> None:
        for layer in (self.modulation, self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
