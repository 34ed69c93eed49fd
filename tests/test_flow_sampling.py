"""The rectified-flow sampler and the sigma <-> t / VP maps (ambient_fast/flow_sampling.py, docs/flow.md): exact
maps, convergence to the exact sample for Gaussian data (Euler order 1, Heun order 2), Euler equal to EDM's Euler on
the mapped levels, and the ambient loss's optimum at the clean data's velocity when only noisy data is seen."""
from __future__ import annotations

import math

import pytest
import torch

import ambient_fast
from ambient_fast import flow_sampling as fs
from ambient_fast.reference import flow_noising_reference
from ambient_fast.sampling import edm_sigmas, heun_sample

MU, C = 0.5, 0.8  # data x0 ~ N(MU, C^2) per coordinate


def gaussian_denoiser(z, t):
    """E[x0 | z_t = z] for x0 ~ N(MU, C^2), z_t = (1 - t) x0 + t eps (float64)."""
    keep = 1 - t
    return MU + keep * C**2 / (keep**2 * C**2 + t**2) * (z - keep * MU)


def gaussian_velocity(z, t, class_labels=None):
    """The exact velocity E[eps - x0 | z_t = z] = (z - E[x0 | z]) / t, computed in float64."""
    t = t.double().view(-1, *([1] * (z.dim() - 1)))
    z = z.double()
    return ((z - gaussian_denoiser(z, t)) / t).float()


def test_maps_between_parameterisations():
    sigma = torch.tensor([0.0, 0.002, 0.5, 1.0, 80.0, float("inf")], dtype=torch.float64)
    t = fs.t_from_sigma(sigma)
    torch.testing.assert_close(t, torch.tensor([0.0, 0.002 / 1.002, 1 / 3, 0.5, 80 / 81, 1.0], dtype=torch.float64))
    torch.testing.assert_close(fs.sigma_from_t(t[:-1]), sigma[:-1], rtol=1e-14, atol=0)
    a, b = fs.vp_from_sigma(sigma[:-1])
    torch.testing.assert_close(a**2 + b**2, torch.ones_like(a))  # variance preserving
    torch.testing.assert_close(fs.sigma_from_vp(a[1:], b[1:]), sigma[1:-1], rtol=1e-14, atol=0)
    assert fs.vp_from_sigma(float("inf")) == (0.0, 1.0) and fs.t_from_sigma(float("inf")) == 1.0
    assert [float(v) for v in fs.vp_from_sigma(sigma[-1:])] == [0.0, 1.0]
    # The RF sample is the VE sample scaled by 1 - t; the VP one scaled by a.
    x0, eps = torch.randn(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for s in (0.3, 2.0):
        tt = fs.t_from_sigma(s)
        torch.testing.assert_close((1 - tt) * x0 + tt * eps, (1 - tt) * (x0 + s * eps))
    # SD3's shift is a scaling of sigma.
    times = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    torch.testing.assert_close(fs.sigma_from_t(fs.shift_times(times, 3.0)), 3.0 * fs.sigma_from_t(times))


def test_flow_times():
    times = fs.flow_times(4)
    torch.testing.assert_close(times, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    shifted = fs.flow_times(4, shift=3.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0 and bool((shifted[1:] < shifted[:-1]).all())
    assert bool((shifted[1:-1] > times[1:-1]).all())  # more time spent at high noise
    with pytest.raises(ValueError, match="num_steps"):
        fs.flow_times(0)


def exact_sample(noise):
    return MU + C * noise.double()  # the flow of Gaussian data is linear: z_t = (1-t) MU + sqrt((1-t)^2 C^2 + t^2) eps


@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2)])
def test_convergence_order_on_gaussian_data(method, order):
    """The exact velocity of Gaussian data: the error against the exact sample shrinks by 2^order per halving of
    the step (Heun's last step to t = 0 is Euler's, O(h^2) locally, so the global order stays 2)."""
    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    errors = []
    for steps in (16, 32, 64):
        sample = fs.flow_sample(gaussian_velocity, noise, num_steps=steps, method=method)
        errors.append((sample.double() - exact_sample(noise)).abs().max().item())
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(2**order * 0.7 < r < 2**order * 1.4 for r in ratios), (errors, ratios)
    assert errors[-1] < (0.06 if order == 1 else 6e-4)  # measured at 64 steps: 0.054 and 4.5e-4


def test_euler_equals_edm_euler_on_mapped_levels():
    """Euler in t on z = (1 - t) x and EDM's Euler in sigma on x are the same steps (both exact for a constant
    x0 estimate), so on the EDM schedule mapped to t they give the same sample."""
    noise = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    sigmas = edm_sigmas(12)
    flow = fs.flow_sample(gaussian_velocity, noise, times=fs.times_from_sigmas(sigmas), method="euler")
    denoise = fs.denoiser_from_velocity(gaussian_velocity)
    x = noise.double() * sigmas[0]
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):  # EDM Algorithm 1 without Heun
        level = torch.full((x.shape[0],), sigma, dtype=torch.float32)
        x = x + (sigma_next - sigma) * (x - denoise(x.float(), level).double()) / sigma
    torch.testing.assert_close(flow, x.float(), rtol=1e-5, atol=1e-5)


def test_edm_sampler_with_a_velocity_network():
    """denoiser_from_velocity runs a velocity network in the EDM sampler; both samplers reach the exact sample."""
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(3))
    edm = heun_sample(fs.denoiser_from_velocity(gaussian_velocity), noise, num_steps=48)
    flow = fs.flow_sample(gaussian_velocity, noise, times=fs.times_from_sigmas(edm_sigmas(48)))
    # EDM stops at sigma_max = 80 (t = 80/81), not at pure noise: its start is off by O(1/80) of the data.
    for sample in (edm, flow):
        assert (sample.double() - exact_sample(noise)).abs().max().item() < 0.03


def test_velocity_and_denoiser_wrappers_invert_each_other():
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    roundtrip = fs.velocity_from_denoiser(fs.denoiser_from_velocity(gaussian_velocity))
    torch.testing.assert_close(roundtrip(z, t), gaussian_velocity(z, t), rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_named():
    noise = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="method must be"):
        fs.flow_sample(gaussian_velocity, noise, method="rk4")
    with pytest.raises(ValueError, match="decreasing"):
        fs.flow_sample(gaussian_velocity, noise, times=torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        fs.flow_sample(gaussian_velocity, noise, times=torch.tensor([2.0, 0.0]))


@pytest.mark.parametrize("sigma_tn,unbiased", [(1.0, True), (0.0, False)])
def test_ambient_loss_is_minimised_by_the_clean_velocity(sigma_tn, unbiased):
    """Only noisy data x_tn = x0 + 1.0 n is seen. The ambient loss (sigma_tn = 1, the annotation) has zero expected
    gradient at the clean data's exact velocity; treating x_tn as clean (sigma_tn = 0) does not (bias > 10 SE)."""
    generator = torch.Generator().manual_seed(5)
    count, t, annotation = 200_000, 0.7, 1.0
    x0 = MU + C * torch.randn(count, 1, generator=generator, dtype=torch.float64)
    x_tn = x0 + annotation * torch.randn(count, 1, generator=generator, dtype=torch.float64)
    z_t = flow_noising_reference(x_tn, torch.tensor(t, dtype=torch.float64), annotation,
                                 torch.randn(count, 1, generator=generator, dtype=torch.float64))
    # v*(z) is affine in z for Gaussian data: the loss's gradient w.r.t. a change a z + b of the velocity, at the
    # exact velocity, is (mean(g z), mean(g)) with g = d loss_i / d v_i = 2 (v_i - u_i) from the op's backward.
    velocity = gaussian_velocity(z_t, torch.full((count,), t, dtype=torch.float64)).double().requires_grad_()
    ambient_fast.flow_loss(velocity, z_t, x_tn, t, sigma_tn).sum().backward()
    terms = torch.stack([velocity.grad.flatten() * z_t.flatten(), velocity.grad.flatten()])
    z_scores = (terms.mean(dim=1).abs() / (terms.std(dim=1) / math.sqrt(count))).tolist()
    if unbiased:
        assert max(z_scores) < 5, z_scores
    else:
        assert max(z_scores) > 10, z_scores
