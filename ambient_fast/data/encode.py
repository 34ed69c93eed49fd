"""`dataset encode`: images -> EDM2-style latents with a VAE the user has locally.

Each image becomes one .npy file holding the VAE posterior's mean and standard deviation stacked along channels
(8 channels for the SD VAE: 4 mean + 4 std), as EDM2 stores them; training draws a latent mean + std * eps from
it each time and standardises it (train/latents.py). The output keeps the input's relative names (extension
.npy) and its dataset.json labels, so sample ids and keys match the image dataset's.

diffusers is optional: imported only here, with a clear error when absent. Nothing is ever downloaded: the VAE
is loaded with local_files_only=True from a diffusers AutoencoderKL directory.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .dataset import FileDataset, collate


def load_vae(vae_dir: str | Path, *, device: torch.device):
    try:
        from diffusers import AutoencoderKL
    except ImportError as error:
        raise ImportError("`dataset encode` needs diffusers (pip install diffusers) to load an AutoencoderKL") from error
    vae_dir = Path(vae_dir)
    if not (vae_dir / "config.json").is_file():
        raise FileNotFoundError(f"{vae_dir} is not a diffusers AutoencoderKL directory (no config.json)")
    return AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True).to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode_dataset(source: str | Path, destination: str | Path, *, vae_dir: str | Path, device: str | torch.device = "cpu",
                   batch_size: int = 16, log=print) -> dict:
    """Encode every image of `source` into `destination` (a directory). Returns the per-channel statistics of the
    posterior means, which the config's latent_mean / latent_std can use."""
    device = torch.device(device)
    dataset = FileDataset(source, on_error="raise")
    if dataset.is_latent:
        raise ValueError(f"{source} already holds latents")
    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()):
        raise FileExistsError(f"{destination} is not empty; refusing to mix encodings")
    log(f"encoding {len(dataset)} images from {source} with the VAE in {vae_dir} on {device} into {destination}")
    vae = load_vae(vae_dir, device=device)
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        posterior = vae.encode(batch["image"].to(device, vae.dtype)).latent_dist
        moments = torch.cat([posterior.mean, posterior.std], dim=1).float().cpu()  # [B, 2 * latent_channels, h, w]
        for key, latent in zip(batch["key"], moments):
            path = destination / Path(key).with_suffix(".npy")
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, latent.numpy())
        mean = posterior.mean.double()
        total = total + mean.sum(dim=(0, 2, 3))
        total_sq = total_sq + mean.square().sum(dim=(0, 2, 3))
        count += mean[:, 0].numel()
    labels = [[str(Path(key).with_suffix(".npy").as_posix()), int(label)] for key, label in zip(dataset.keys, dataset.labels)]
    (destination / "dataset.json").write_text(json.dumps({"labels": labels if dataset.label_dim else None}))
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    stats = {"latent_mean": mean.tolist(), "latent_std": std.tolist(), "num_images": len(dataset)}
    log(f"wrote {len(dataset)} latents; posterior-mean statistics per channel: {json.dumps(stats)}")
    return stats
