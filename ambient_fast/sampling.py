"""The EDM sampler (Karras et al. 2022, Algorithm 1: deterministic Heun, 2nd order) with optional guidance by a
second network (EDM2 autoguidance / CFG form: D = D_g + w (D - D_g)) or classifier-free guidance by the same
network at the null condition (classifier_free), and loading a trained denoiser.

`denoise(x, sigma, class_labels, **condition) -> D` is any callable returning the denoised estimate in float32, e.g.
networks.Precond (condition: the DiT's caption and caption_mask), or an exact denoiser in tests.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch


def edm_sigmas(num_steps: int, *, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
               device=None) -> torch.Tensor:
    """sigma_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, then 0 (EDM eq. 5)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    ramp = i / max(num_steps - 1, 1)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64, device=device)])


def classifier_free(model, *, guidance: float, label_dim: int = 0):
    """f(x, level, class_labels, **condition) = out(x; null) + guidance (out(x; c) - out(x; null)): classifier-free
    guidance (Ho & Salimans 2022) of a denoiser D (networks.Precond) or a velocity v (networks.Velocity), both linear
    in the network output, so the same mix serves the EDM and the flow sampler. c is the given caption (condition:
    caption, caption_mask) and class label; the null condition is the one condition dropout trains (empty caption,
    zero label vector: train/condition_dropout.py). One forward of 2B (conditional and null halves), mixed in
    float64; guidance = 1 is the conditional model itself (one forward of B, bit-identical to the unguided call)."""
    from .train.condition_dropout import drop_conditions

    def guided(x, level, class_labels=None, **condition):
        if guidance == 1.0:
            return model(x, level, class_labels, **condition)
        batch = x.shape[0]
        drop = torch.arange(2 * batch, device=x.device) >= batch  # the second half gets the null condition
        twice = {name: None if value is None else torch.cat([value, value]) for name, value in condition.items()}
        labels = None if class_labels is None else torch.cat([class_labels, class_labels])
        labels, twice = drop_conditions(labels, twice, drop, label_dim=label_dim)
        level = torch.as_tensor(level, device=x.device).reshape(-1).expand(batch)  # [B], also from a scalar
        out = model(torch.cat([x, x]), torch.cat([level, level]), labels, **twice).double()
        conditional, null = out[:batch], out[batch:]
        return null + guidance * (conditional - null)  # D_w = D(x; null) + w (D(x; c) - D(x; null))

    return guided


@torch.no_grad()
def heun_sample(denoise, noise: torch.Tensor, *, class_labels=None, num_steps: int = 32, sigma_min: float = 0.002,
                sigma_max: float = 80.0, rho: float = 7.0, guide=None, guidance: float = 1.0,
                condition: dict | None = None) -> torch.Tensor:
    """Samples from standard normal `noise` [B, ...]: x_0 = sigma_max * noise, then Heun steps along the
    probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (EDM Algorithm 1 without churn). guide: a second
    denoiser (a weaker network or an unconditional one) for D_w = D_guide + guidance (D - D_guide). condition:
    keyword inputs of every denoise / guide call (the DiT's caption [B, L, D] and caption_mask [B, L])."""
    if guide is None and guidance != 1.0:
        raise ValueError("guidance != 1 needs a guide network (for classifier-free guidance: classifier_free)")
    sigmas = edm_sigmas(num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, device=noise.device)
    condition = condition or {}

    def denoised(x, sigma):
        level = torch.full((x.shape[0],), float(sigma), dtype=torch.float32, device=x.device)
        out = denoise(x.float(), level, class_labels, **condition).double()
        if guide is not None and guidance != 1.0:
            out = guide(x.float(), level, class_labels, **condition).double().lerp(out, guidance)
        return out

    x = noise.double() * sigmas[0]
    for i in range(num_steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        slope = (x - denoised(x, sigma)) / sigma  # d = (x - D(x; sigma)) / sigma
        x_next = x + (sigma_next - sigma) * slope  # Euler step
        if sigma_next > 0:  # 2nd-order correction (Heun)
            slope_next = (x_next - denoised(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma) * (0.5 * slope + 0.5 * slope_next)
        x = x_next
    return x.float()


TRACKED_EMA = "tracked"  # the run's first tracked EMA (config.ema_stds[0]): what EDM / EDM2 sample
RAW_WEIGHTS = "raw"  # the optimizer's weights, no averaging


def load_denoiser(source: str | Path, *, ema_std: float | str | None = TRACKED_EMA,
                  device: str | torch.device = "cpu"):
    """(denoiser, metadata) from a run directory or a checkpoint / EMA snapshot file: the Precond module of an EDM
    run, or for a rectified-flow run (config objective "flow") its velocity network as a denoiser D(x, sigma)
    (flow_sampling.denoiser_from_velocity), so every EDM-sampler caller works with both.

    ema_std: "tracked" (default) = the run's first tracked EMA, as EDM / EDM2 sample; "raw" or None = the newest
    checkpoint's raw weights; a tracked std (e.g. 0.10) = that EMA; any other std in (0, 0.289) = post-hoc
    reconstruction from the run's stored snapshots (EDM2 Section 3). metadata["weights"] says which was loaded.
    """
    from .flow_sampling import denoiser_from_velocity

    model, meta = load_model(source, ema_std=ema_std, device=device)
    return (denoiser_from_velocity(model) if meta["objective"] == "flow" else model), meta


def load_model(source: str | Path, *, ema_std: float | str | None = TRACKED_EMA, device: str | torch.device = "cpu"):
    """(model, metadata) as load_denoiser, the model as trained: networks.Precond (D(x, sigma)) for objective
    "edm", networks.velocity.Velocity (v(z, t), for flow_sampling.flow_sample) for "flow"; metadata["objective"]
    says which (runs from before the field are "edm")."""
    from .train import checkpoint
    from .train.config import TrainConfig

    source = Path(source)
    if source.is_dir():
        latest = checkpoint.load_latest(source)
        if latest is None:
            raise FileNotFoundError(f"no readable checkpoint in {source}")
        _, tensors, meta = latest
    else:
        tensors, meta = checkpoint.load(source)
    if meta.get("network", "builtin") != "builtin":
        raise ValueError(f"{source} was trained with the user network {meta['network']}; build it yourself, load the "
                         "checkpoint's 'net.*' tensors (train.checkpoint.load + split) and sample with Precond(net)")
    config = TrainConfig.from_dict(meta["config"])
    state, weights = _weights(source, tensors, [float(s) for s in config.ema_stds], ema_std)
    return _model(config, meta, state, device), {**meta, "weights": weights, "objective": config.objective}


def _weights(source: Path, tensors: dict, tracked: list[float], ema_std) -> tuple[dict, str]:
    """(state dict, description) of the requested weights: raw, a tracked EMA, or a post-hoc reconstruction."""
    from .train import checkpoint
    from .train.phema import reconstruct

    if ema_std is None or ema_std == RAW_WEIGHTS:
        state = checkpoint.split(tensors, "net")
        if not state:
            raise ValueError(f"{source} holds EMA weights only (a snapshot); pass an EMA std or a training checkpoint")
        return state, "raw weights"
    if ema_std == TRACKED_EMA:
        if not tracked:
            raise ValueError(f"{source} tracks no EMA (ema_stds is empty); pass ema_std='raw' (--ema raw)")
        return checkpoint.split(tensors, f"ema{tracked[0]:.4f}"), (
            f"EMA std {tracked[0]:g} (the run's first tracked EMA; --ema raw for the raw weights)")
    ema_std = float(ema_std)
    if any(math.isclose(ema_std, s, rel_tol=1e-6) for s in tracked):
        return checkpoint.split(tensors, f"ema{ema_std:.4f}"), f"EMA std {ema_std:g} (tracked)"
    if not source.is_dir():
        raise ValueError("post-hoc EMA reconstruction needs the run directory (it reads every snapshot)")
    snapshots = []
    for _, path in checkpoint.list_checkpoints(source, "phema"):
        snap_tensors, snap_meta = checkpoint.load(path)
        snapshots += [(float(s), snap_meta["step"], checkpoint.split(snap_tensors, f"ema{float(s):.4f}"))
                      for s in snap_meta["stds"]]
    if not snapshots:
        raise FileNotFoundError(f"{source} has no EMA snapshots (phema-*.safetensors) to reconstruct std {ema_std}")
    times = sorted({step for _, step, _ in snapshots})
    if len(times) == 1:  # the least-squares fit then only mixes the tracked EMAs of that moment
        warnings.warn(f"EMA std {ema_std:g} was rebuilt from snapshots of a single time (after {times[0]} steps), which "
                      f"only mixes the tracked stds {sorted(tracked)}: sample a tracked one (--ema {tracked[0]:g}) or "
                      "train with snapshot_every well below total_steps", stacklevel=3)
    return reconstruct(snapshots, ema_std), f"EMA std {ema_std:g} (post hoc, from {len(snapshots)} snapshots)"


def _model(config, meta: dict, state: dict, device):
    """The builtin network of the run's config with `state` loaded, wrapped in EDM preconditioning (objective
    "edm") or as a velocity field (objective "flow")."""
    from .networks import Precond
    from .networks.velocity import Velocity
    from .train.build import build_network

    net = build_network(config.network, img_channels=meta["img_channels"], img_resolution=meta["img_resolution"],
                        label_dim=meta["label_dim"], seed=0, caption_dim=meta.get("caption_dim", 0))
    net.load_state_dict(state)
    if config.objective == "flow":
        return Velocity(net, label_dim=meta["label_dim"]).to(device).eval()
    return Precond(net, sigma_data=config.sigma_data, label_dim=meta["label_dim"]).to(device).eval()


def image_grid(images: torch.Tensor, *, min_width: int = 512, separator: int = 2, background: int = 255) -> np.ndarray:
    """[B, C, H, W] in [-1, 1] -> uint8 [rows * H * k + (rows - 1) * separator, cols * W * k + (cols - 1) *
    separator, C]: a near-square grid, each image enlarged by the smallest integer factor k that makes the tiles
    at least `min_width` pixels wide together (nearest neighbour: every sample pixel becomes a k x k block), with
    `separator` pixels of `background` between tiles (and in the empty cells of the last row).
    min_width=0, separator=0 give the plain grid at the samples' size."""
    b, c, h, w = images.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    scale = max(1, math.ceil(min_width / (cols * w)))
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    pixels = pixels.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    th, tw = h * scale, w * scale
    grid = torch.full((rows * th + (rows - 1) * separator, cols * tw + (cols - 1) * separator, c), background,
                      dtype=torch.uint8)
    for i in range(b):
        r, q = divmod(i, cols)
        top, left = r * (th + separator), q * (tw + separator)
        grid[top:top + th, left:left + tw] = pixels[i].permute(1, 2, 0)
    return grid.numpy()


def save_image_grid(images: torch.Tensor, path: str | Path, **grid) -> Path:
    """image_grid(images, **grid) written as a PNG (greyscale for one channel); returns the path."""
    from PIL import Image

    if images.shape[1] not in (1, 3):
        raise ValueError(f"images have {images.shape[1]} channels (latents?); decode them before writing a PNG")
    array = image_grid(images, **grid)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(path)
    return path


def save_outputs(samples: torch.Tensor, labels: torch.Tensor | None, *, png: str | Path | None, npz: str | Path | None) -> None:
    """The samples as an .npz (float32 'samples', uint8 'images' for pixel data, int64 'labels') and a PNG grid
    (image_grid: enlarged to at least 512 px wide, a thin separator between samples)."""
    arrays = {"samples": samples.cpu().numpy()}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy()
    is_pixels = samples.shape[1] in (1, 3)
    if is_pixels:
        arrays["images"] = ((samples.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    if npz:
        Path(npz).parent.mkdir(parents=True, exist_ok=True)
        np.savez(npz, **arrays)
    if png:
        if not is_pixels:
            raise ValueError(f"samples have {samples.shape[1]} channels (latents?); decode them before writing a PNG")
        save_image_grid(samples, png)
