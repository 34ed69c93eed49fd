"""What the network sees of an EDM2 latent dataset, for the trainer and the annotation alike.

A stored latent is the VAE posterior's [mean, std] stacked along channels (8 channels for the SD VAE; encode.py).
The network sees a posterior sample standardised per channel (EDM2):
    x0 = (posterior_mean + posterior_std * noise - latent_mean) / latent_std * 0.5,
in the units of sigma_data = 0.5, which are the units of every noise level the trainer and the annotation use.
The trainer draws `noise` afresh at every step (train/loop.py); the annotation draws one fixed sample per image,
keyed by its sample id (posterior_noise), so that it scores a tensor the denoiser is trained on.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..ops.sample_noise import sample_noise

PIXELS = "pixels"
LATENT_NOISE_DOMAIN = 0x504F5354 << 32  # "POST": apart from the fixed noise n_i, which uses the plain seed


def latent_space(channels: int) -> str:
    """How an ImageSet / annotation provenance names the space of standardised latents."""
    return f"latents: standardised, {channels} channels"


def standardise_latents(moments: torch.Tensor, noise: torch.Tensor, *, latent_mean: Sequence[float] | torch.Tensor,
                        latent_std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """[B, 2C, H, W] stored posterior [mean, std] and standard normal noise [B, C, H, W] -> the network's x0
    [B, C, H, W]: a posterior sample, standardised per channel to sigma_data = 0.5 (EDM2)."""
    mean = torch.as_tensor(latent_mean, dtype=torch.float32, device=moments.device).view(1, -1, 1, 1)
    std = torch.as_tensor(latent_std, dtype=torch.float32, device=moments.device).view(1, -1, 1, 1)
    if moments.shape[1] != 2 * mean.shape[1] or std.shape[1] != mean.shape[1]:
        raise ValueError(f"latents have {moments.shape[1]} channels (posterior mean + std), but latent_mean / "
                         f"latent_std have {mean.shape[1]} / {std.shape[1]} entries (one per mean channel)")
    posterior_mean, posterior_std = moments.chunk(2, dim=1)
    z = posterior_mean + posterior_std * noise
    return (z - mean) / std * 0.5


def posterior_noise(sample_ids: torch.Tensor, shape: Sequence[int], *, seed: int = 0) -> torch.Tensor:
    """One fixed standard normal draw [N, *shape] per sample id (counter-based: the same on every device and for
    any batching), for a reproducible posterior sample of each latent."""
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be in [0, 2^32); got {seed}")
    return sample_noise(sample_ids, shape, seed=LATENT_NOISE_DOMAIN + int(seed))
