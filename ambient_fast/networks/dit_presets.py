"""The text-conditioned diffusion transformer sizes, in one table (DIT_PRESETS), and the per-block widths they imply.

The two MicroDiT rows are the architectures of Sehwag et al. 2024, "Stretching Each Dollar: Diffusion Training from
Scratch on a Micro-Budget" (arXiv 2407.15811), which the Ambient-o paper trains unchanged in its text-to-image
experiment (Ambient-o Appendix F.3, "MicroDiffusion": "a Diffusion Transformer utilizing Mixture-of-Experts
feedforward layers, with ~1.1B parameters"; README of the MicroDiffusion release: "a 1.16 billion parameter sparse
transformer"). Every number of those rows is read from the public MicroDiffusion release
(github.com/SonyResearch/micro_diffusion, micro_diffusion/models/dit.py: MicroDiT_Tiny_2 and MicroDiT_XL_2; the
caption width from models/utils.py: the DFN5B-CLIP ViT-H/14 text tower gives 77 tokens x 1024). Note: that release
uses width 1024 (16 heads of 64), not 1280; 8 experts in every other block except the last.

Layer-wise scaling (as in the release, after OpenELM): block i of `depth` gets an attention width of
qkv_ratio[0] -> qkv_ratio[1] and a feed-forward width of mlp_ratio[0] -> mlp_ratio[1] times `dim`, linearly in i.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DiTSize:
    dim: int  # backbone width (channels per token)
    depth: int  # backbone blocks (run on the kept patches only when masking)
    head_dim: int  # channels per attention head
    patch_size: int  # pixels (latent pixels) per patch side
    qkv_ratio: tuple[float, float]  # attention width / dim in the first and last block (linear in between)
    mlp_ratio: tuple[float, float]  # feed-forward width / dim in the first and last block
    mixer_dim: int  # width of the patch mixer (blocks run on all patches before masking)
    mixer_depth: int  # patch-mixer blocks; 0 = mask right after the patch embedding
    mixer_mlp_ratio: float  # feed-forward width / mixer_dim in the patch mixer (attention width = mixer_dim)
    num_experts: int  # experts of the MoE feed-forward layers; 0 = all dense
    expert_capacity: float  # expert-choice capacity factor: each expert takes capacity * tokens / num_experts tokens
    experts_every: int  # every n-th block (0-based n-1, 2n-1, ...) has an MoE feed-forward (not the backbone's last)
    caption_dim: int  # width of the precomputed caption embeddings [B, L, caption_dim]
    multiple_of: int  # feed-forward widths are rounded up to a multiple of this
    source: str  # where the numbers come from

    def qkv_width(self, block: int) -> int:
        """Attention width of backbone block `block`: dim * ratio rounded up to an even number of heads."""
        ratio = _lerp(self.qkv_ratio, block, self.depth)
        return self.dim if ratio == 1 else _round_up(int(self.dim * ratio), 2 * self.head_dim)

    def mlp_ratio_at(self, block: int) -> float:
        return _lerp(self.mlp_ratio, block, self.depth)

    def is_moe(self, block: int, depth: int, *, last_dense: bool) -> bool:
        """MoE feed-forward in blocks experts_every-1, 2*experts_every-1, ... of `depth` (the release keeps the
        backbone's last block dense: last_dense, but not the mixer's)."""
        if self.num_experts == 0 or (last_dense and block == depth - 1):
            return False
        return (block + 1) % self.experts_every == 0

    def ffn_width(self, width: int, ratio: float, *, moe: bool) -> int:
        """Hidden width of a feed-forward layer on `width` channels: a dense SwiGLU keeps 2/3 of width * ratio
        (its three matrices then cost what two of width * ratio would), an expert (two matrices, GELU) all of it;
        both rounded up to multiple_of."""
        hidden = int(width * ratio)
        return _round_up(hidden if moe else int(2 * hidden / 3), self.multiple_of)


def _lerp(pair: tuple[float, float], block: int, depth: int) -> float:
    if depth == 1 or pair[0] == pair[1]:
        return float(pair[0])
    return pair[0] + (pair[1] - pair[0]) * block / (depth - 1)


def _round_up(value: int, multiple: int) -> int:
    return multiple * ((value + multiple - 1) // multiple)


DIT_PRESETS: dict[str, DiTSize] = {
    # Ours, for CPU tests and toy runs: every feature of the large one (patch mixer, layer-wise scaling, experts,
    # cross-attention) at a width of 64.
    "dit-tiny": DiTSize(dim=64, depth=4, head_dim=16, patch_size=2, qkv_ratio=(0.5, 1.0), mlp_ratio=(1.0, 4.0),
                        mixer_dim=32, mixer_depth=2, mixer_mlp_ratio=2.0, num_experts=4, expert_capacity=2.0,
                        experts_every=2, caption_dim=32, multiple_of=16, source="ambient_fast (CPU-testable)"),
    # MicroDiT_Tiny_2 of the MicroDiffusion release.
    "microdit-tiny": DiTSize(dim=512, depth=16, head_dim=32, patch_size=2, qkv_ratio=(0.5, 1.0), mlp_ratio=(0.5, 4.0),
                             mixer_dim=512, mixer_depth=4, mixer_mlp_ratio=4.0, num_experts=8, expert_capacity=2.0,
                             experts_every=2, caption_dim=1024, multiple_of=256,
                             source="MicroDiffusion release, MicroDiT_Tiny_2"),
    # MicroDiT_XL_2: the ~1.1B network of Ambient-o's text-to-image experiment (Appendix F.3, Table of Section 5).
    "microdit-1.1b": DiTSize(dim=1024, depth=28, head_dim=64, patch_size=2, qkv_ratio=(0.5, 1.0), mlp_ratio=(0.5, 4.0),
                             mixer_dim=768, mixer_depth=6, mixer_mlp_ratio=4.0, num_experts=8, expert_capacity=2.0,
                             experts_every=2, caption_dim=1024, multiple_of=256,
                             source="MicroDiffusion release, MicroDiT_XL_2; Ambient-o Appendix F.3"),
}


def dit_size(name: str) -> DiTSize:
    if name not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {name!r}; choose from {sorted(DIT_PRESETS)}")
    return DIT_PRESETS[name]
