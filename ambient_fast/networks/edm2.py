"""The EDM2 magnitude-preserving UNet (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", config G; Sections 2-3 and Appendix B of that paper).

Every layer keeps the expected magnitude (RMS) of its activations at 1 for unit-magnitude inputs:
  * normalize(x): x / (eps + ||x|| / sqrt(N)), per sample (pixel norm along channels in the encoder);
  * MPConv: forced weight normalisation, w <- normalize(w) stored back during training (eq. 9 / Sec. 2.4),
    then w / sqrt(fan_in) in the forward, so each output is a unit-norm combination of unit inputs;
  * mp_silu(x) = silu(x) / 0.596 (0.596 = E[silu(z)^2]^(1/2) for z ~ N(0, 1));
  * mp_sum(a, b, t) = ((1 - t) a + t b) / sqrt((1 - t)^2 + t^2);
  * mp_cat(a, b, t): concatenation with weights that keep the total magnitude and give b the fraction t;
  * MPFourier: cos(2 pi (f c + phi)) * sqrt(2) with fixed random f, phi: unit-magnitude embedding.
No biases, no group norms; the output gain and the class/noise balance are learned or fixed scalars as in the
paper. The network returns (F, logvar): the raw output and the learned log-variance u(sigma) of the EDM2 loss
(Sec. 5: u from an MP-Fourier embedding of c_noise and a linear layer).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .labels import label_vectors

SILU_RMS = 0.596  # sqrt(E[silu(z)^2]), z ~ N(0, 1)


def normalize(x: torch.Tensor, *, dim=None, eps: float = 1e-4) -> torch.Tensor:
    """x / (eps + ||x|| / sqrt(N)) with the norm over `dim` (default: all but the first)."""
    dim = dim if dim is not None else list(range(1, x.dim()))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    per_norm = x.numel() // max(norm.numel(), 1)  # N: elements under each norm
    norm = torch.add(eps, norm, alpha=1 / math.sqrt(per_norm))
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x) / SILU_RMS


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, *, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    na, nb = a.shape[dim], b.shape[dim]
    scale = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([a * (scale / math.sqrt(na) * (1 - t)), b * (scale / math.sqrt(nb) * t)], dim=dim)


class MPFourier(nn.Module):
    def __init__(self, channels: int, *, bandwidth: float = 1.0, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", 2 * math.pi * torch.randn(channels, generator=generator) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(channels, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(torch.float32).outer(self.freqs) + self.phases
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(nn.Module):
    """Convolution (kernel (k, k)) or linear layer (kernel ()) with forced weight normalisation."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...]):
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: torch.Tensor, *, gain=1.0) -> torch.Tensor:
        w = self.weight.to(torch.float32)
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(w))  # forced weight normalisation: stored weights stay unit-RMS rows
        w = normalize(w) * (gain / math.sqrt(w[0].numel()))  # each output: unit-norm weights over fan_in inputs
        w = w.to(x.dtype)
        if w.dim() == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


def _resample(x: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "down":
        return F.avg_pool2d(x, 2)  # the [1, 1] box filter of the paper
    if mode == "up":
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return x


class Block(nn.Module):
    """Encoder or decoder residual block of Figure 21: (resample) -> (1x1 skip, pixel norm for the encoder) ->
    MP-SiLU, 3x3 MPConv, scale by (1 + emb), MP-SiLU, dropout, 3x3 MPConv -> MP-sum with the skip -> attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, *, flavor: str, resample: str = "keep",
                 attention: bool = False, channels_per_head: int = 64, dropout: float = 0.0, res_balance: float = 0.3,
                 attn_balance: float = 0.3, clip_act: float = 256.0):
        super().__init__()
        self.flavor, self.resample, self.dropout = flavor, resample, dropout
        self.res_balance, self.attn_balance, self.clip_act = res_balance, attn_balance, clip_act
        self.heads = out_channels // channels_per_head if attention else 0
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, (3, 3))
        self.emb_linear = MPConv(emb_channels, out_channels, ())
        self.conv_res1 = MPConv(out_channels, out_channels, (3, 3))
        self.conv_skip = MPConv(in_channels, out_channels, (1, 1)) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, (1, 1)) if self.heads else None
        self.attn_proj = MPConv(out_channels, out_channels, (1, 1)) if self.heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = _resample(x, self.resample)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm: unit magnitude per position
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.heads:
            b, c_, h, w = x.shape
            qkv = self.attn_qkv(x).reshape(b, self.heads, -1, 3, h * w)
            q, k, v = normalize(qkv, dim=2).unbind(3)  # cosine attention: unit-norm q, k per head
            y = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
            y = self.attn_proj(y.transpose(-1, -2).reshape(b, c_, h, w))
            x = mp_sum(x, y, t=self.attn_balance)
        return x.clamp(-self.clip_act, self.clip_act) if self.clip_act else x


class EDM2UNet(nn.Module):
    """Class-conditional magnitude-preserving UNet; forward(x_in, c_noise, class_labels) -> (F, logvar)."""

    def __init__(self, img_channels: int, img_resolution: int, model_channels: int = 192, channel_mult=(1, 2, 3, 4),
                 num_blocks: int = 3, *, attn_resolutions=(16, 8), label_dim: int = 0, dropout: float = 0.0,
                 channel_mult_emb: int = 4, label_balance: float = 0.5, concat_balance: float = 0.5,
                 logvar_channels: int = 128):
        super().__init__()
        self.img_channels, self.img_resolution, self.label_dim = img_channels, img_resolution, label_dim
        self.label_balance, self.concat_balance = label_balance, concat_balance
        cemb = model_channels * channel_mult_emb
        self.emb_fourier = MPFourier(model_channels)
        self.emb_noise = MPConv(model_channels, cemb, ())
        self.emb_label = MPConv(label_dim, cemb, ()) if label_dim else None
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.logvar_fourier = MPFourier(logvar_channels, seed=1)
        self.logvar_linear = MPConv(logvar_channels, 1, ())
        block = dict(emb_channels=cemb, dropout=dropout)

        self.enc = nn.ModuleDict()
        cout = img_channels + 1  # a constant-ones channel gives the first conv a bias
        skips = []
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, (3, 3))
            else:
                self.enc[f"{res}x{res}_down"] = Block(cout, cout, flavor="enc", resample="down", **block)
            skips.append(cout)
            for i in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{i}"] = Block(cin, cout, flavor="enc", attention=res in attn_resolutions, **block)
                skips.append(cout)
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(cout, cout, flavor="dec", attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = Block(cout, cout, flavor="dec", **block)
            else:
                self.dec[f"{res}x{res}_up"] = Block(cout, cout, flavor="dec", resample="up", **block)
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{i}"] = Block(cin, cout, flavor="dec", attention=res in attn_resolutions, **block)
        self.out_conv = MPConv(cout, img_channels, (3, 3))

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None):
        c_noise = c_noise.reshape(-1).expand(x_in.shape[0])
        emb = self.emb_noise(self.emb_fourier(c_noise))
        if self.emb_label is not None:
            if class_labels is None:
                raise ValueError(f"this network is class-conditional (label_dim={self.label_dim}): pass class_labels")
            one_hot = label_vectors(class_labels, self.label_dim, dtype=emb.dtype)
            emb = mp_sum(emb, self.emb_label(one_hot * math.sqrt(self.label_dim)), t=self.label_balance)
        emb = mp_silu(emb)
        x = torch.cat([x_in, torch.ones_like(x_in[:, :1])], dim=1)
        skips = []
        for name, layer in self.enc.items():
            x = layer(x) if name.endswith("_conv") else layer(x, emb)
            skips.append(x)
        for name, layer in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = layer(x, emb)
        raw = self.out_conv(x, gain=self.out_gain)
        logvar = self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1)  # u(sigma), EDM2 Sec. 5 / eq. 8
        return raw, logvar


@dataclass(frozen=True)
class EDM2Size:
    """One row of the EDM2 img512 table (Karras et al. 2024, Table 2 / Appendix: training configurations)."""

    model_channels: int
    ref_lr: float  # alpha_ref, learning rate before decay
    decay_batches: int  # t_ref: inverse-square-root decay starts after this many iterations (batches of 2048)
    dropout: float
    training_mimg: int  # training duration in millions of images (2^20 images)


# img512 presets on 64x64x4 SD-VAE latents: batch 2048, channel_mult (1, 2, 3, 4), 3 blocks per level,
# attention at 16x16 and 8x8, P_mean = -0.4, P_std = 1.0, EMA stds 0.05/0.10 stored for post-hoc reconstruction.
EDM2_IMG512 = {
    "xs": EDM2Size(128, 0.0120, 70_000, 0.00, 2048),
    "s": EDM2Size(192, 0.0100, 70_000, 0.00, 2048),
    "m": EDM2Size(256, 0.0090, 70_000, 0.10, 2048),
    "l": EDM2Size(320, 0.0080, 70_000, 0.10, 1792),
    "xl": EDM2Size(384, 0.0070, 70_000, 0.10, 1280),
    "xxl": EDM2Size(448, 0.0065, 70_000, 0.10, 896),
}
