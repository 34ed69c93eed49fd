"""A compact EDM-style UNet (Karras et al. 2022, DDPM++-like blocks), small enough to train on a CPU.

Split in two so the noise classifier of the annotation step (Section 3.1: "the downsampling half of a diffusion
UNet, global pooling, linear head") reuses the same encoder:

  * UNetEncoder(x, c_noise) -> features [B, C]       global-average-pooled output of the downsampling half
  * UNet(x_in, c_noise, class_labels) -> raw F       encoder + decoder with skip connections (the `F` of EDM:
                                                     D = c_skip x + c_out F(c_in x, c_noise), see networks/precond.py)

Both take the preconditioned input x_in = c_in(sigma) x and c_noise = ln(sigma) / 4; neither applies
preconditioning itself.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .labels import label_vectors


def _group_norm(channels: int) -> nn.GroupNorm:
    # 32 groups as in EDM, fewer for the narrow CPU networks (groups must divide the channel count).
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class FourierEmbedding(nn.Module):
    """Random Fourier features of c_noise (EDM's NCSN++ embedding): [B] -> [B, channels]."""

    def __init__(self, channels: int, *, scale: float = 16.0, seed: int = 0):
        super().__init__()
        if channels % 2:
            raise ValueError(f"FourierEmbedding needs an even channel count, got {channels}")
        generator = torch.Generator().manual_seed(seed)  # fixed frequencies, not tied to the global RNG
        self.register_buffer("freqs", torch.randn(channels // 2, generator=generator) * scale)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        phase = 2 * math.pi * c_noise.to(torch.float32).outer(self.freqs)
        return torch.cat([phase.cos(), phase.sin()], dim=1)


class NoiseEmbedding(nn.Module):
    """c_noise (and optional one-hot class labels) -> the embedding every residual block is conditioned on."""

    def __init__(self, model_channels: int, emb_channels: int, *, label_dim: int = 0, fourier_scale: float = 16.0):
        super().__init__()
        self.fourier = FourierEmbedding(model_channels, scale=fourier_scale)
        self.label = nn.Linear(label_dim, model_channels, bias=False) if label_dim else None
        self.mlp = nn.Sequential(nn.Linear(model_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels))
        self.label_dim = label_dim

    def forward(self, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.fourier(c_noise)
        if self.label is not None:
            if class_labels is None:
                raise ValueError(f"this network is class-conditional (label_dim={self.label_dim}): pass class_labels")
            emb = emb + self.label(label_vectors(class_labels, self.label_dim, dtype=emb.dtype))
        return self.mlp(F.silu(emb))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the noise embedding as a per-channel scale and shift (EDM's adaptive scale),
    optional 2x down/upsampling and self-attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, *, resample: str = "none",
                 attention: bool = False, dropout: float = 0.0, attention_head_channels: int = 64):
        super().__init__()
        if resample not in ("none", "down", "up"):
            raise ValueError(f"resample must be 'none', 'down' or 'up', got {resample!r}")
        self.resample = resample
        self.norm0 = _group_norm(in_channels)
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.affine = nn.Linear(emb_channels, 2 * out_channels)
        self.norm1 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv1.weight)  # each block starts as the identity (its skip path)
        nn.init.zeros_(self.conv1.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.attention = SelfAttention(out_channels, head_channels=attention_head_channels) if attention else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(self._resample(F.silu(self.norm0(x))))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        h = self.conv1(self.dropout(h))
        x = self._resample(x)
        x = (h + (x if self.skip is None else self.skip(x))) / math.sqrt(2)  # EDM: skip_scale = 1/sqrt(2)
        return x if self.attention is None else self.attention(x)


class SelfAttention(nn.Module):
    def __init__(self, channels: int, *, head_channels: int = 64):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return (x + self.proj(out)) / math.sqrt(2)


def _check_geometry(img_resolution: int, channel_mult) -> None:
    levels = len(channel_mult)
    if levels < 1:
        raise ValueError("channel_mult needs at least one level")
    if img_resolution % (2 ** (levels - 1)):
        raise ValueError(f"img_resolution {img_resolution} is not divisible by 2^{levels - 1} ({levels} levels)")


class UNetEncoder(nn.Module):
    """The downsampling half of the UNet, conditioned on c_noise (and optionally class labels).

    forward(x, c_noise) -> features [B, out_features]: the last level's activations, normalised, SiLU and
    global-average-pooled, ready for a linear head (the noise classifier of Section 3.1). `encode` returns the
    full-resolution pyramid the decoder of `UNet` needs.
    """

    def __init__(self, img_channels: int, img_resolution: int, model_channels: int = 32, channel_mult=(1, 2, 2),
                 num_blocks: int = 1, *, attn_resolutions=(), label_dim: int = 0, dropout: float = 0.0,
                 emb_channels: int | None = None, pooled_head: bool = True, fourier_scale: float = 16.0):
        super().__init__()
        _check_geometry(img_resolution, channel_mult)
        self.img_channels, self.img_resolution = img_channels, img_resolution
        self.emb_channels = emb_channels or 4 * model_channels
        # fourier_scale: frequency scale of the c_noise features (EDM: 16; smaller gives smoother functions of sigma)
        self.embedding = NoiseEmbedding(model_channels, self.emb_channels, label_dim=label_dim, fourier_scale=fourier_scale)
        self.conv_in = nn.Conv2d(img_channels, model_channels, 3, padding=1)
        self.blocks = nn.ModuleList()
        self.skip_channels = [model_channels]  # channels of every activation the decoder receives, in order
        channels, resolution = model_channels, img_resolution
        for level, mult in enumerate(channel_mult):
            if level > 0:
                self.blocks.append(ResBlock(channels, channels, self.emb_channels, resample="down", dropout=dropout))
                resolution //= 2
                self.skip_channels.append(channels)
            for _ in range(num_blocks):
                out = model_channels * mult
                self.blocks.append(ResBlock(channels, out, self.emb_channels, dropout=dropout,
                                            attention=resolution in attn_resolutions))
                channels = out
                self.skip_channels.append(channels)
        self.out_features = channels
        # The pooled head's norm; UNet leaves it out (pooled_head=False) so DDP sees no unused parameters.
        self.out_norm = _group_norm(channels) if pooled_head else None

    def encode(self, x: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None):
        """-> (last activation, list of every activation for the decoder's skips, embedding)."""
        if x.dim() != 4 or x.shape[1] != self.img_channels:
            raise ValueError(f"expected input [B, {self.img_channels}, H, W], got {tuple(x.shape)}")
        emb = self.embedding(c_noise.reshape(-1).expand(x.shape[0]), class_labels)
        h = self.conv_in(x)
        skips = [h]
        for block in self.blocks:
            h = block(h, emb)
            skips.append(h)
        return h, skips, emb

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.out_norm is None:
            raise RuntimeError("built with pooled_head=False (inside a UNet): use encode() instead")
        h, _, _ = self.encode(x, c_noise, class_labels)
        return F.silu(self.out_norm(h)).mean(dim=(2, 3))


class UNet(nn.Module):
    """Encoder, a middle pair of blocks (with attention) and a decoder with skip concatenation. Returns the raw
    output F (same shape as the input); follows the network protocol of networks/precond.py."""

    def __init__(self, img_channels: int, img_resolution: int, model_channels: int = 32, channel_mult=(1, 2, 2),
                 num_blocks: int = 1, *, attn_resolutions=(), label_dim: int = 0, dropout: float = 0.0,
                 out_channels: int | None = None, mid_attention: bool = True, fourier_scale: float = 16.0):
        super().__init__()
        self.encoder = UNetEncoder(img_channels, img_resolution, model_channels, channel_mult, num_blocks,
                                   attn_resolutions=attn_resolutions, label_dim=label_dim, dropout=dropout,
                                   pooled_head=False, fourier_scale=fourier_scale)
        self.img_channels, self.img_resolution, self.label_dim = img_channels, img_resolution, label_dim
        emb = self.encoder.emb_channels
        channels = self.encoder.out_features
        self.mid = nn.ModuleList([
            ResBlock(channels, channels, emb, attention=mid_attention, dropout=dropout),
            ResBlock(channels, channels, emb, dropout=dropout),
        ])
        skips = list(self.encoder.skip_channels)
        self.decoder = nn.ModuleList()
        resolution = img_resolution // 2 ** (len(channel_mult) - 1)
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_blocks + 1):  # one extra block per level consumes the resampling skip
                out = model_channels * mult
                self.decoder.append(ResBlock(channels + skips.pop(), out, emb, dropout=dropout,
                                             attention=resolution in attn_resolutions))
                channels = out
            if level > 0:
                self.decoder.append(ResBlock(channels, channels, emb, resample="up", dropout=dropout))
                resolution *= 2
        assert not skips, "every encoder activation must feed the decoder"
        self.out_norm = _group_norm(channels)
        self.conv_out = nn.Conv2d(channels, out_channels or img_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # F = 0 at start: D = c_skip x, a sensible first denoiser
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        h, skips, emb = self.encoder.encode(x_in, c_noise, class_labels)
        for block in self.mid:
            h = block(h, emb)
        for block in self.decoder:
            if block.resample != "up":
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
        return self.conv_out(F.silu(self.out_norm(h)))
