"""Eager PyTorch references, written from the paper's formulas and shared by the eager backend, the tests and the
benchmarks. They favour literal transcription over speed; the fused kernels must match them.
"""
from __future__ import annotations

import torch

from . import precond


def _per_sample(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] (or scalar) -> [B, 1, ..., 1] broadcastable against a [B, ...] tensor."""
    sigma = torch.as_tensor(sigma, device=like.device)
    if sigma.dim() == 0:
        sigma = sigma.expand(like.shape[0])
    return sigma.reshape(-1, *([1] * (like.dim() - 1)))


def ambient_loss_reference(
    denoised: torch.Tensor,
    x_t: torch.Tensor,
    x_tn: torch.Tensor,
    sigma_t: torch.Tensor,
    sigma_tn: torch.Tensor,
    *,
    sigma_data: float = precond.SIGMA_DATA,
    logvar: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample ambient loss [B] (DESIGN.md section 1, paper eq. 2.2 with the weights of eq. D.1).

    Computed in the promoted dtype of the inputs (use float64 inputs for a float64 reference).
    """
    s_t = _per_sample(sigma_t, denoised).to(denoised.dtype)
    s_tn = _per_sample(sigma_tn, denoised).to(denoised.dtype)
    alpha = precond.ambient_alpha(s_t, s_tn)  # eq. 2.2
    x_tn_hat = alpha * denoised + (1 - alpha) * x_t  # prediction of the annotated sample, eq. 2.2
    weight = precond.edm_weight(s_t, sigma_data) * precond.ambient_weight(s_t, s_tn)  # lambda * lambda_amb, eq. D.1
    per_element = weight * (x_tn_hat - x_tn) ** 2
    loss = per_element.flatten(1).mean(dim=1)
    if logvar is not None:
        u = logvar.reshape(-1).to(loss.dtype)
        loss = loss / u.exp() + u  # EDM2 learned uncertainty u(sigma) (Karras et al. 2024)
    return loss


def ambient_loss_precond_reference(
    raw_output: torch.Tensor,
    x_t: torch.Tensor,
    x_tn: torch.Tensor,
    sigma_t: torch.Tensor,
    sigma_tn: torch.Tensor,
    *,
    sigma_data: float = precond.SIGMA_DATA,
    logvar: torch.Tensor | None = None,
) -> torch.Tensor:
    """ambient_loss_reference with D = c_skip x_t + c_out F applied to the raw network output F."""
    s_t = _per_sample(sigma_t, raw_output).to(raw_output.dtype)
    denoised = precond.c_skip(s_t, sigma_data) * x_t + precond.c_out(s_t, sigma_data) * raw_output
    return ambient_loss_reference(denoised, x_t, x_tn, sigma_t, sigma_tn, sigma_data=sigma_data, logvar=logvar)


def edm_loss_reference(denoised, x0, sigma, *, sigma_data: float = precond.SIGMA_DATA) -> torch.Tensor:
    """Plain EDM loss lambda(sigma) * mean((D - x0)^2), per sample: what sigma_tn = 0 must reproduce."""
    s = _per_sample(sigma, denoised).to(denoised.dtype)
    return (precond.edm_weight(s, sigma_data) * (denoised - x0) ** 2).flatten(1).mean(dim=1)


def add_noise_reference(x_tn, sigma_t, sigma_tn, noise) -> torch.Tensor:
    """x_t = x_tn + sqrt(sigma_t^2 - sigma_tn^2) * eps (DESIGN.md section 1)."""
    s_t = _per_sample(sigma_t, x_tn).to(torch.float64 if x_tn.dtype == torch.float64 else torch.float32)
    s_tn = _per_sample(sigma_tn, x_tn).to(s_t.dtype)
    return (x_tn.to(s_t.dtype) + (s_t**2 - s_tn**2).sqrt() * noise.to(s_t.dtype)).to(x_tn.dtype)


def annotate_reference(x0, sigma_tn, noise) -> torch.Tensor:
    """x_tn = x0 + sigma_tn * n_i: the annotated sample, n_i fixed per sample (DESIGN.md section 1)."""
    s_tn = _per_sample(sigma_tn, x0).to(torch.float64 if x0.dtype == torch.float64 else torch.float32)
    return (x0.to(s_tn.dtype) + s_tn * noise.to(s_tn.dtype)).to(x0.dtype)


# ------------------------------------------------------------------------------- rectified flow (docs/flow.md)

def flow_loss_reference(velocity, z_t, x_tn, t, sigma_tn) -> torch.Tensor:
    """Per-sample ambient rectified-flow loss [B], transcribed from the paper's VE form (docs/flow.md).

    z_t = (1 - t) x_t maps the VE sample x_t at s = t/(1-t); the velocity implies the x0 estimate D = z_t - t v;
    x_tn_hat = alpha D + (1 - alpha) x_t (eq. 2.2), weighted by lambda_amb = 1/alpha^2 (eq. D.1) and by 1/t^2
    (flow matching's weight in x0 units: |v - (eps - x0)|^2 = |D - x0|^2 / t^2). Promoted dtype of the inputs.
    """
    t = _per_sample(t, velocity).to(velocity.dtype)
    s_tn = _per_sample(sigma_tn, velocity).to(velocity.dtype)
    s_t = t / (1 - t)  # VE level of RF time t
    x_t = z_t / (1 - t)
    denoised = z_t - t * velocity
    alpha = precond.ambient_alpha(s_t, s_tn)
    x_tn_hat = alpha * denoised + (1 - alpha) * x_t  # eq. 2.2
    weight = precond.ambient_weight(s_t, s_tn) / t**2
    return (weight * (x_tn_hat - x_tn) ** 2).flatten(1).mean(dim=1)


def flow_matching_reference(velocity, x0, noise) -> torch.Tensor:
    """The standard flow-matching loss mean((v - (eps - x0))^2) per sample: what sigma_tn = 0 must reproduce."""
    return ((velocity - (noise - x0)) ** 2).flatten(1).mean(dim=1)


def flow_noising_reference(x_tn, t, sigma_tn, noise) -> torch.Tensor:
    """z_t = (1 - t) (x_tn + sqrt(s^2 - sigma_tn^2) eps), s = t/(1-t): the network input of an annotated sample."""
    t = _per_sample(t, x_tn).to(x_tn.dtype)
    s_tn = _per_sample(sigma_tn, x_tn).to(x_tn.dtype)
    s_t = t / (1 - t)
    return (1 - t) * (x_tn + (s_t**2 - s_tn**2).sqrt() * noise)
