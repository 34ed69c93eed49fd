"""The EDM Heun sampler reproduces a Gaussian toy distribution through its exact denoiser; guidance; outputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ambient_fast.sampling import edm_sigmas, heun_sample, image_grid, save_outputs
from test_networks_unet import one_thread  # noqa: F401  (autouse fixture: one thread)


def gaussian_denoiser(mean, cov):
    """Exact D(x, sigma) = E[x0 | x] for x0 ~ N(mean, cov): mean + cov (cov + sigma^2 I)^-1 (x - mean)."""
    eye = torch.eye(mean.numel(), dtype=torch.float64)

    def denoise(x, sigma, class_labels=None):
        flat = x.double().reshape(x.shape[0], -1)
        out = []
        for s in sigma.double().unique():
            gain = cov @ torch.linalg.inv(cov + s**2 * eye)
            out.append(mean + (flat - mean) @ gain.T)
        assert len(out) == 1  # the sampler evaluates one level per call
        return out[0].reshape(x.shape).float()

    return denoise


def test_heun_reproduces_gaussian_mean_and_covariance():
    generator = torch.Generator().manual_seed(0)
    d = 4
    a = torch.randn(d, d, dtype=torch.float64, generator=generator)
    cov = a @ a.T * 0.2 + 0.05 * torch.eye(d, dtype=torch.float64)
    mean = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    # start from the exact marginal at sigma_max (mean + 80 z): EDM's x_0 = 80 z drops the data mean, which
    # leaves a bias of about mean * 0.02 after the ODE -- a property of the start, not of the integrator
    noise = torch.randn(20000, d, 1, 1, generator=generator) + (mean / 80.0).float().view(1, d, 1, 1)
    samples = heun_sample(gaussian_denoiser(mean, cov), noise, num_steps=40).double().reshape(-1, d)
    torch.testing.assert_close(samples.mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), cov, atol=0.03, rtol=0.05)
    # too few steps are measurably worse: the test can tell a good integrator from a bad one
    coarse = heun_sample(gaussian_denoiser(mean, cov), noise, num_steps=2).double().reshape(-1, d)
    assert (torch.cov(coarse.T) - cov).abs().max() > 0.1


def test_sigma_schedule_endpoints_and_rho():
    sigmas = edm_sigmas(5, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    assert sigmas[0].item() == pytest.approx(80.0) and sigmas[-2].item() == pytest.approx(0.002) and sigmas[-1] == 0
    assert (sigmas[:-1].diff() < 0).all()


def test_guidance_extrapolates_away_from_the_guide():
    mean, cov = torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    good = gaussian_denoiser(mean + 1.0, cov)
    guide = gaussian_denoiser(mean, cov)
    noise = torch.randn(4000, 2, 1, 1, generator=torch.Generator().manual_seed(1))
    plain = heun_sample(good, noise, num_steps=16).reshape(-1, 2).mean(0)
    guided = heun_sample(good, noise, num_steps=16, guide=guide, guidance=2.0).reshape(-1, 2).mean(0)
    assert plain.mean().item() == pytest.approx(1.0, abs=0.1)
    assert guided.mean().item() > 1.5
    with pytest.raises(ValueError, match="guide"):
        heun_sample(good, noise, guidance=2.0)


def test_outputs_png_grid_and_npz(tmp_path):
    samples = torch.rand(5, 3, 4, 4) * 2 - 1
    save_outputs(samples, torch.arange(5), png=tmp_path / "grid.png", npz=tmp_path / "out.npz")
    data = np.load(tmp_path / "out.npz")
    assert data["images"].shape == (5, 4, 4, 3) and data["labels"].tolist() == [0, 1, 2, 3, 4]
    assert image_grid(samples, min_width=0, separator=0).shape == (8, 12, 3)  # 2 rows x 3 columns
    from PIL import Image

    # enlarged x43 to >= 512 px wide, 2 px separators (test_figures.py checks the pixels)
    assert Image.open(tmp_path / "grid.png").size == (3 * 172 + 2 * 2, 2 * 172 + 2)
