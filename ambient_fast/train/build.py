"""Networks from a NetworkConfig (the registry of built-in architectures)."""
from __future__ import annotations

import torch

from ..networks import DiT, EDM2UNet, UNet, seeded
from .config import NetworkConfig

ARCHITECTURES = {"unet": UNet, "edm2": EDM2UNet, "dit": DiT}


def build_network(config: NetworkConfig, *, img_channels: int, img_resolution: int, label_dim: int, seed: int,
                  caption_dim: int = 0) -> torch.nn.Module:
    """The configured network, initialised from `seed` without touching the global generator. caption_dim: width
    of the data's caption embeddings (DiT only; 0: no caption branch)."""
    if config.arch not in ARCHITECTURES:
        raise ValueError(f"unknown network arch {config.arch!r}; choose from {sorted(ARCHITECTURES)}")
    label_dim = label_dim if config.class_conditional else 0
    if config.arch == "dit":
        return seeded(seed, lambda: DiT(img_channels, img_resolution, size=config.dit_size, label_dim=label_dim,
                                        caption_dim=caption_dim if config.captions else 0))
    return seeded(seed, lambda: ARCHITECTURES[config.arch](
        img_channels, img_resolution, config.model_channels, tuple(config.channel_mult), config.num_blocks,
        attn_resolutions=tuple(config.attn_resolutions), label_dim=label_dim,
        dropout=config.dropout,
    ))


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
