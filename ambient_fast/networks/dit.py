"""A text-conditioned diffusion transformer in the style of MicroDiT (Sehwag et al. 2024, arXiv 2407.15811), the
network of Ambient-o's text-to-image experiment (Appendix F.3); sizes in dit_presets.py.

    x_in [B, C, H, W] -> patch embedding (p x p patches, dim channels) + fixed 2-D sin-cos positions
      -> patch mixer: mixer_depth DiT blocks on all patches (width mixer_dim)
      -> keep only the patches in `keep` (training-time masking, dit_mask.py)
      -> backbone: depth DiT blocks (layer-wise scaled widths, MoE feed-forward in every other block)
      -> final adaLN layer -> patches back to [B, C, H, W] (zeros at dropped patches)
Conditioning vector c = MLP(Fourier(c_noise)) + label embedding + pooled caption; every block reads SiLU(c)
through its adaLN-zero modulation, and cross-attends to the caption tokens (dit_block.py, dit_caption.py).

It follows the library's network protocol (precond.py): forward(x_in, c_noise, class_labels) -> F, with
x_in = c_in x_t and c_noise = ln(sigma) / 4, so it trains and samples through Precond like the UNets; the caption,
its mask and the kept patches are keyword arguments. Built with caption_dim=0 it has no caption branch (a
class-conditional or unconditional DiT, e.g. for the trainer, whose data carry no captions yet).
"""
from __future__ import annotations


import torch
from torch import nn
from torch.nn import functional as F

from .labels import label_vectors
from .dit_block import NORM_EPS, DiTBlock, FinalLayer
from .dit_caption import CaptionEncoder
from .dit_ffn import ExpertChoiceMoE, SwiGLU
from .dit_presets import DiTSize, dit_size
from .edm2 import MPFourier

NOISE_FREQUENCIES = 256  # Fourier features of c_noise (random frequencies, EDM2's MPFourier, bandwidth 1)


def sincos_positions(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding [grid_h * grid_w, dim] (ViT / DiT / MAE): half the channels encode the
    row, half the column, each as sin and cos at frequencies 10000^(-i / (dim / 4))."""
    if dim % 4:
        raise ValueError(f"the DiT width must be a multiple of 4 for 2-D sin-cos positions, got {dim}")
    freqs = 10000.0 ** (-torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64), torch.arange(grid[1], dtype=torch.float64),
                                indexing="ij")
    parts = [f(pos.reshape(-1, 1) * freqs) for pos in (rows, cols) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1).float()


class DiT(nn.Module):
    def __init__(self, img_channels: int, img_resolution: int, *, size: DiTSize | str = "dit-tiny", label_dim: int = 0,
                 caption_dim: int | None = None):
        super().__init__()
        size = dit_size(size) if isinstance(size, str) else size
        p = size.patch_size
        if img_resolution % p:
            raise ValueError(f"img_resolution {img_resolution} is not a multiple of the patch size {p}")
        self.size, self.img_channels, self.img_resolution, self.label_dim = size, img_channels, img_resolution, label_dim
        self.caption_dim = size.caption_dim if caption_dim is None else caption_dim
        self.grid = (img_resolution // p, img_resolution // p)
        dim, mixer_dim = size.dim, size.mixer_dim if size.mixer_depth else size.dim

        self.patch_embed = nn.Conv2d(img_channels, dim, kernel_size=p, stride=p)
        device = torch.empty(0).device  # the default device (meta when counting parameters)
        with torch.device("cpu"):  # fixed values computed on the CPU (seeded generator), then moved
            self.register_buffer("positions", sincos_positions(dim, self.grid).to(device), persistent=False)
            self.noise_fourier = MPFourier(NOISE_FREQUENCIES).to(device)
        self.noise_mlp = nn.Sequential(nn.Linear(NOISE_FREQUENCIES, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label_embed = nn.Linear(label_dim, dim, bias=False) if label_dim else None
        self.caption = (CaptionEncoder(self.caption_dim, dim, head_dim=size.head_dim,
                                       ffn_hidden=size.ffn_width(dim, 4.0, moe=False)) if self.caption_dim else None)

        def block(width: int, index: int, depth: int, attn_width: int, ratio: float, last_dense: bool) -> DiTBlock:
            moe = size.is_moe(index, depth, last_dense=last_dense)
            hidden = size.ffn_width(width, ratio, moe=moe)
            ffn = (ExpertChoiceMoE(width, hidden, num_experts=size.num_experts, capacity=size.expert_capacity)
                   if moe else SwiGLU(width, hidden))
            return DiTBlock(width, cond_dim=dim, head_dim=size.head_dim, attn_width=attn_width, ffn=ffn,
                            context_dim=dim if self.caption_dim else 0)

        self.mixer = nn.ModuleList(block(mixer_dim, i, size.mixer_depth, mixer_dim, size.mixer_mlp_ratio, False)
                                   for i in range(size.mixer_depth))
        self.mixer_in = self._projection(dim, mixer_dim)
        self.mixer_out = self._projection(mixer_dim, dim)
        self.blocks = nn.ModuleList(block(dim, i, size.depth, size.qkv_width(i), size.mlp_ratio_at(i), True)
                                    for i in range(size.depth))
        self.final = FinalLayer(dim, cond_dim=dim, out_features=p * p * img_channels)
        self._init_weights()

    @staticmethod
    def _projection(width_in: int, width_out: int) -> nn.Module:
        if width_in == width_out:
            return nn.Identity()
        return nn.Sequential(nn.LayerNorm(width_in, eps=NORM_EPS, bias=False), nn.Linear(width_in, width_out, bias=False))

    def _init_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linear maps, zero biases, N(0, 0.02) noise MLP, then adaLN-zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for layer in (self.noise_mlp[0], self.noise_mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in (*self.mixer, *self.blocks, self.final):
            block.zero_init()
        if self.caption is not None:
            self.caption.zero_init()

    def conditioning(self, c_noise: torch.Tensor, class_labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        """c = MLP(Fourier(c_noise)) + label embedding (one-hot labels, or soft / zero vectors as they are)."""
        c = self.noise_mlp(self.noise_fourier(c_noise.reshape(-1).expand(batch).to(torch.float32)))
        if self.label_embed is not None:
            if class_labels is None:
                raise ValueError(f"this network is class-conditional (label_dim={self.label_dim}): pass class_labels")
            c = c + self.label_embed(label_vectors(class_labels, self.label_dim, dtype=c.dtype))
        return c

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None, *,
                caption: torch.Tensor | None = None, caption_mask: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """F [B, C, H, W] for x_in = c_in x_t [B, C, H, W] and c_noise = ln(sigma) / 4 [B] (or scalar).

        caption: precomputed embeddings [B, L, caption_dim]; caption_mask: bool [B, L], True = real token (None =
        all real); a network with a caption branch given caption=None treats every caption as empty.
        keep: int64 [B, n_keep] indices (row-major over the patch grid) of the patches the backbone sees, from
        dit_mask.random_keep; F is 0 at the other patches, which the loss must skip (dit_mask.pixel_keep_mask).
        """
        batch, channels, height, width = x_in.shape
        if (channels, height, width) != (self.img_channels, self.img_resolution, self.img_resolution):
            raise ValueError(f"expected input [B, {self.img_channels}, {self.img_resolution}, {self.img_resolution}], "
                             f"got {list(x_in.shape)}")
        if caption is not None and self.caption is None:
            raise ValueError("this DiT was built without a caption branch (caption_dim=0): it takes no caption")
        x = self.patch_embed(x_in).flatten(2).transpose(1, 2) + self.positions.to(x_in.dtype)  # [B, N, dim]
        c = self.conditioning(c_noise, class_labels, batch)
        context = context_mask = context_gate = None
        if caption is not None:
            context, pooled, context_mask, context_gate = self.caption(caption, caption_mask)
            c = c + pooled
        cond = F.silu(c)  # the adaLN input of every block (DiT's SiLU -> Linear modulation)

        x = self.mixer_in(x)
        for blk in self.mixer:
            x = blk(x, cond, context, context_mask, context_gate)
        if keep is not None:  # deferred masking: drop tokens after the patch mixer (MicroDiT Section 3)
            x = x.gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = self.mixer_out(x)
        for blk in self.blocks:
            x = blk(x, cond, context, context_mask, context_gate)
        out = self.final(x, cond)  # [B, n_kept, p * p * C]
        if keep is not None:
            index = keep.unsqueeze(-1).expand(-1, -1, out.shape[-1])
            out = out.new_zeros(batch, self.grid[0] * self.grid[1], out.shape[-1]).scatter(1, index, out)
        return self.unpatchify(out)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, h * w, p * p * C] (row-major patches, each p x p x C) -> [B, C, h p, w p]."""
        p, (h, w) = self.size.patch_size, self.grid
        x = tokens.reshape(tokens.shape[0], h, w, p, p, self.img_channels)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(tokens.shape[0], self.img_channels, h * p, w * p)
