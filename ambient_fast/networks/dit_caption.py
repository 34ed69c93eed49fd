"""Caption conditioning of the DiT: precomputed text-encoder embeddings [B, L, caption_dim] plus a mask.

No text encoder runs here: the caption embeddings are computed once, offline (MicroDiffusion uses the DFN5B-CLIP
ViT-H/14 text tower: 77 tokens x 1024; a T5 encoder works the same with its own width). As in MicroDiT, the tokens
are projected to the network width (MLP), refined by one pre-norm transformer block among themselves, and their
masked mean, through another MLP, joins the noise-level embedding in the adaLN conditioning vector; the tokens
themselves are the keys/values of every block's cross-attention.

The mask is bool [B, L], True = a real token (padding False). A caption with no real token (all False: the "empty"
caption of classifier-free guidance and caption dropout) contributes nothing: its pooled vector is 0 and the
cross-attention is gated off (g_caption = 0), so the network is then unconditional on text.
"""
from __future__ import annotations

import torch
from torch import nn

from .dit_attention import SelfAttention
from .dit_block import NORM_EPS
from .dit_ffn import SwiGLU


def _mlp(in_features: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, dim), nn.GELU(approximate="tanh"),
                         nn.LayerNorm(dim, eps=NORM_EPS, bias=False), nn.Linear(dim, dim))


class CaptionEncoder(nn.Module):
    def __init__(self, caption_dim: int, dim: int, *, head_dim: int, ffn_hidden: int):
        super().__init__()
        self.caption_dim = caption_dim
        self.proj = _mlp(caption_dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS, bias=False)
        self.attn = SelfAttention(dim, dim, head_dim)
        self.norm2 = nn.LayerNorm(dim, eps=NORM_EPS, bias=False)
        self.ffn = SwiGLU(dim, ffn_hidden)
        self.pool = _mlp(dim, dim)

    def forward(self, caption: torch.Tensor, mask: torch.Tensor | None = None):
        """(tokens [B, L, dim], pooled [B, dim], attention mask bool [B, 1, 1, L], gate [B, 1, 1])."""
        if caption.dim() != 3 or caption.shape[-1] != self.caption_dim:
            raise ValueError(f"caption embeddings must be [B, L, {self.caption_dim}], got {list(caption.shape)}")
        batch, length, _ = caption.shape
        valid = torch.ones(batch, length, dtype=torch.bool, device=caption.device) if mask is None else mask.bool()
        has_token = valid.any(dim=1)
        attn_mask = (valid | ~has_token[:, None])[:, None, None, :]  # an empty caption attends to all (gated off)
        tokens = self.proj(caption)
        tokens = tokens + self.attn(self.norm1(tokens), attn_mask)
        tokens = tokens + self.ffn(self.norm2(tokens))
        weights = valid.unsqueeze(-1).to(tokens.dtype)
        mean = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1)  # masked mean over the real tokens
        gate = has_token.to(tokens.dtype)
        return tokens, self.pool(mean) * gate[:, None], attn_mask, gate.view(batch, 1, 1)

    def zero_init(self) -> None:
        """The refinement block starts as the identity (its two output projections at zero)."""
        nn.init.zeros_(self.attn.proj.weight)
        nn.init.zeros_(self.ffn.w3.weight)
