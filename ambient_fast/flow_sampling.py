"""Rectified-flow sampling (Euler and Heun in velocity form) and the maps between noise parameterisations.

One noise axis serves every parameterisation (docs/flow.md): the VE level sigma (data units, what annotations,
select_sigma_tn and the EDM sampler use). A sample x0 + sigma eps is, up to a scale, the rectified-flow sample
z_t = (1 - t) x0 + t eps at t = sigma / (1 + sigma), and the variance-preserving sample a x0 + b eps
(a^2 + b^2 = 1) at b / a = sigma. So an annotation sigma_min read from the annotation file means t_n =
sigma_min / (1 + sigma_min) in rectified flow and b/a = sigma_min in VP; nothing is re-annotated.

`velocity(z, t, class_labels, **condition) -> v` is any callable returning the velocity estimate (the network
trained with ambient_fast.flow_loss), with t a float32 [B] tensor (condition: the DiT's caption and caption_mask;
sampling.classifier_free guides it).
"""
from __future__ import annotations

import math

import torch


def t_from_sigma(sigma):
    """Rectified-flow time of VE level sigma: t = sigma / (1 + sigma) (sigma = inf -> t = 1)."""
    if isinstance(sigma, torch.Tensor):
        return torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma / (1 + sigma))
    return 1.0 if math.isinf(sigma) else sigma / (1 + sigma)


def sigma_from_t(t):
    """VE level of rectified-flow time t: sigma = t / (1 - t) (t = 1 -> inf)."""
    return t / (1 - t)


def vp_from_sigma(sigma):
    """(a, b) of the variance-preserving sample a x0 + b eps at VE level sigma: a = 1/sqrt(1 + sigma^2), b = sigma a
    (sigma = inf -> (0, 1), pure noise)."""
    a = 1 / (1 + sigma**2) ** 0.5
    if isinstance(sigma, torch.Tensor):
        return a, torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma * a)
    return a, 1.0 if math.isinf(sigma) else sigma * a


def sigma_from_vp(a, b):
    """VE level of the VP sample a x0 + b eps (any a, b > 0: also non-unit-variance schedules): sigma = b / a."""
    return b / a


def shift_times(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's timestep shift t' = shift t / (1 + (shift - 1) t), which is sigma' = shift * sigma on the VE axis."""
    return shift * t / (1 + (shift - 1) * t)


def flow_times(num_steps: int, *, shift: float = 1.0, t_max: float = 1.0, device=None) -> torch.Tensor:
    """num_steps + 1 times from t_max down to 0, uniform in t and then shifted (shift > 1 spends more steps at high
    noise, as SD3); float64."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 < t_max <= 1 or not shift > 0:
        raise ValueError(f"need 0 < t_max <= 1 and shift > 0, got t_max={t_max}, shift={shift}")
    return shift_times(torch.linspace(t_max, 0.0, num_steps + 1, dtype=torch.float64, device=device), shift)


def times_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """A VE schedule (e.g. sampling.edm_sigmas, ending at 0) as rectified-flow times, float64."""
    return t_from_sigma(sigmas.double())


def denoiser_from_velocity(velocity):
    """D(x, sigma) = z - t v(z, t) with z = (1 - t) x, t = sigma / (1 + sigma): a velocity network as the EDM
    sampler's denoiser (sampling.heun_sample)."""

    def denoise(x, sigma, class_labels=None, **condition):
        t = t_from_sigma(sigma.double()).view(-1, *([1] * (x.dim() - 1)))
        z = (1 - t) * x.double()
        return (z - t * velocity(z.float(), t.flatten().float(), class_labels, **condition).double()).float()

    return denoise


def velocity_from_denoiser(denoise):
    """v(z, t) = (z - D(z / (1 - t), sigma)) / t with sigma = t / (1 - t): an EDM denoiser as a velocity field."""

    def velocity(z, t, class_labels=None, **condition):
        t64 = t.double().view(-1, *([1] * (z.dim() - 1)))
        x = z.double() / (1 - t64)
        d = denoise(x.float(), sigma_from_t(t.double()).float(), class_labels, **condition).double()
        return ((z.double() - d) / t64).float()

    return velocity


@torch.no_grad()
def flow_sample(velocity, noise: torch.Tensor, *, times: torch.Tensor | None = None, num_steps: int = 32,
                shift: float = 1.0, method: str = "heun", class_labels=None,
                condition: dict | None = None) -> torch.Tensor:
    """Integrates dz/dt = v(z, t) from t = times[0] (z = times[0] * noise: the pure-noise end of z_t = (1 - t) x0 +
    t eps, exact at t = 1) down to times[-1] (usually 0), in float64 between network calls.

    times: a decreasing schedule (flow_times, or times_from_sigmas(sampling.edm_sigmas(...)) for the EDM one);
    default flow_times(num_steps, shift=shift). method: 'euler' (1st order, one call per step) or 'heun' (2nd order,
    two calls per step; the last step to t = 0 is an Euler step, as in EDM's Algorithm 1). Euler here equals the EDM
    sampler's Euler steps on the mapped sigmas exactly: both are exact for a constant x0 estimate. condition:
    keyword inputs of every velocity call (the DiT's caption and caption_mask).
    """
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    if times is None:
        times = flow_times(num_steps, shift=shift, device=noise.device)
    times = times.to(device=noise.device, dtype=torch.float64)
    if times.dim() != 1 or times.numel() < 2 or not bool((times[1:] < times[:-1]).all()):
        raise ValueError("times must be a 1-D decreasing schedule of at least two times")
    if not (0 <= float(times[-1]) and float(times[0]) <= 1):
        raise ValueError(f"times must lie in [0, 1], got {float(times[0])} .. {float(times[-1])}")

    def v(z, t):
        level = torch.full((z.shape[0],), t, dtype=torch.float32, device=z.device)
        return velocity(z.float(), level, class_labels, **(condition or {})).double()

    z = noise.double() * times[0]
    for i in range(times.numel() - 1):
        t, t_next = float(times[i]), float(times[i + 1])
        slope = v(z, t)
        z_next = z + (t_next - t) * slope  # Euler step
        if method == "heun" and t_next > 0:  # trapezoidal correction (Heun)
            z_next = z + (t_next - t) * 0.5 * (slope + v(z_next, t_next))
        z = z_next
    return z.float()
