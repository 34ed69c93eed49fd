"""crop(sigma) with each window normalised by the full noisy image's GroupNorm statistics (annotate/norm_statistics.py,
measure_crop_size(norm_statistics="full")): replay against an independent float64 normalisation, the default
measurement unchanged, networks without GroupNorm unaffected, other spatial normalisations refused. Seconds."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ambient_fast.annotate.crop_size import measure_crop_size
from ambient_fast.annotate.noisy_crops import noisy_crops
from ambient_fast.annotate.norm_statistics import HeldGroupNormStatistics
from ambient_fast.networks.unet import UNet

SIZE, WINDOW = 16, 8


def tiny_unet(dtype=torch.float64, seed=0) -> nn.Module:
    """The library's UNet, narrow (48 and 96 channels: 3 per GroupNorm group), every weight random (the zero-init
    output convolution would make the output 0)."""
    torch.manual_seed(seed)
    net = UNet(3, SIZE, model_channels=16, channel_mult=(1, 3), mid_attention=False).to(dtype).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=dtype) * 0.3)
    return net


def as_denoiser(net):
    return lambda x, sigma: net(x, torch.log(sigma) / 4)


def hand_group_norm(x, groups, weight, bias, eps, *, statistics):
    """GroupNorm in float64 written out, with the (mean, var) of `statistics` (a list): popped from its front when
    it is full (a replay), else computed from x by explicit sums and appended (a recording)."""
    n = x.shape[0]
    grouped = x.double().reshape(n, groups, -1)
    if statistics.get("replay"):
        mean, var = statistics["values"].pop(0)
    else:
        count = grouped.shape[-1]
        mean = grouped.sum(-1, keepdim=True) / count
        var = ((grouped - mean) ** 2).sum(-1, keepdim=True) / count
        statistics["values"].append((mean, var))
    y = ((grouped - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return y * weight.double().reshape(shape) + bias.double().reshape(shape)


def reference_window_output(net, full, window, sigma, monkeypatch):
    """The network on `window` with every GroupNorm using the full image's statistics, by replacing F.group_norm
    (which nn.GroupNorm calls) with hand_group_norm: record on `full`, replay on `window`."""
    statistics = {"values": [], "replay": False}
    monkeypatch.setattr(F, "group_norm", lambda x, g, w, b, eps: hand_group_norm(x, g, w, b, eps,
                                                                                 statistics=statistics))
    as_denoiser(net)(full, sigma)
    recorded = len(statistics["values"])
    statistics["replay"] = True
    out = as_denoiser(net)(window, sigma)
    monkeypatch.undo()
    assert recorded > 0 and not statistics["values"], "every recorded GroupNorm call replayed once"
    return out


def noisy_images(count=4, dtype=torch.float64, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, SIZE, SIZE, generator=generator, dtype=dtype)


@torch.no_grad()
def test_full_image_replay_is_the_plain_forward():
    net, full = tiny_unet(), noisy_images()
    sigma = torch.full((full.shape[0],), 0.3, dtype=torch.float64)
    held = HeldGroupNormStatistics()
    with held.record():
        recorded = as_denoiser(net)(full, sigma)
    plain = as_denoiser(net)(full, sigma)
    assert torch.equal(recorded, plain), "recording leaves the output as GroupNorm computes it"
    assert len(held.recorded) == sum(isinstance(m, nn.GroupNorm) for m in net.modules())
    with held.replay():
        replayed = as_denoiser(net)(full, sigma)
    torch.testing.assert_close(replayed, plain, rtol=1e-12, atol=1e-12)


@torch.no_grad()
def test_window_replay_matches_an_independent_float64_normalisation(monkeypatch):
    net, full = tiny_unet(), noisy_images()
    sigma = torch.full((full.shape[0],), 0.3, dtype=torch.float64)
    c0 = (SIZE - WINDOW) // 2
    window = full[:, :, c0:c0 + WINDOW, c0:c0 + WINDOW]
    held = HeldGroupNormStatistics()
    with held.record():
        as_denoiser(net)(full, sigma)
    with held.replay():
        replayed = as_denoiser(net)(window, sigma)
    expected = reference_window_output(net, full, window, sigma, monkeypatch)
    torch.testing.assert_close(replayed, expected, rtol=1e-10, atol=1e-10)
    own = as_denoiser(net)(window, sigma)  # the window's own statistics: what the option changes
    assert (own - expected).abs().max() > 1e-3


@torch.no_grad()
def test_replay_checks_its_calls():
    net, full = tiny_unet(), noisy_images()
    sigma = torch.full((full.shape[0],), 0.3, dtype=torch.float64)
    held = HeldGroupNormStatistics()
    with pytest.raises(RuntimeError, match="before record"), held.replay():
        pass
    with held.record():
        as_denoiser(net)(full, sigma)
    with pytest.raises(RuntimeError, match="batch of 2; recorded 4"), held.replay():
        as_denoiser(net)(full[:2], sigma[:2])
    with pytest.raises(RuntimeError, match="fewer GroupNorm calls"), held.replay():
        pass  # no network ran
    with pytest.raises(RuntimeError, match="more GroupNorm calls"), held.replay():
        as_denoiser(net)(full, sigma)
        as_denoiser(net)(full, sigma)

def reference_losses(denoiser, images, sigmas, *, patch, seed, contexts):
    """measure_crop_size's centre-patch losses [levels, contexts] written out: the library's noise, the centred
    windows, the squared error on the patch averaged over images."""
    images = images.float()
    size = images.shape[-1]
    noisy = noisy_crops(images, torch.arange(images.shape[0]), torch.tensor(sigmas, dtype=torch.float32), draws=1,
                        seed=seed).view(images.shape[0], len(sigmas), *images.shape[1:])
    p0 = (size - patch) // 2
    losses = torch.empty(images.shape[0], len(sigmas), len(contexts), dtype=torch.float64)
    for level, sigma in enumerate(sigmas):
        for column, context in enumerate(contexts):
            c0 = (size - context) // 2
            out = denoiser(noisy[:, level, :, c0:c0 + context, c0:c0 + context],
                           torch.full((images.shape[0],), torch.tensor(sigma, dtype=torch.float32).item()))
            error = out[:, :, p0 - c0:p0 - c0 + patch, p0 - c0:p0 - c0 + patch] - images[:, :, p0:p0 + patch,
                                                                                          p0:p0 + patch]
            losses[:, level, column] = error.double().pow(2).mean(dim=(1, 2, 3))
    return losses.mean(dim=0)  # per image first, as the library: the same rounding


@torch.no_grad()
def test_window_mode_is_the_plain_measurement_and_full_mode_differs_only_in_the_windows():
    net = tiny_unet(torch.float32)
    images = noisy_images(6, torch.float32, seed=2) * 0.5
    sigmas, contexts = [0.1, 0.5], [2, 6, 10, SIZE]
    window = measure_crop_size(as_denoiser(net), images, sigmas=sigmas, patch=2, seed=3, contexts=contexts)
    assert torch.equal(window.losses, reference_losses(as_denoiser(net), images, sigmas, patch=2, seed=3,
                                                       contexts=contexts))
    assert measure_crop_size(as_denoiser(net), images, sigmas=sigmas, patch=2, seed=3, contexts=contexts,
                             norm_statistics="window").losses.equal(window.losses), "the default"
    full = measure_crop_size(as_denoiser(net), images, sigmas=sigmas, patch=2, seed=3, contexts=contexts,
                             norm_statistics="full")
    assert torch.equal(full.losses[:, -1], window.losses[:, -1]), "the full image is the plain forward"
    assert not torch.allclose(full.losses[:, :-1], window.losses[:, :-1], rtol=1e-3)


def test_without_group_norm_both_modes_agree():
    """A convolution stack with a per-pixel LayerNorm over channels (local, like a DiT's): nothing to hold."""

    class PixelNorm(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.norm = nn.LayerNorm(channels)

        def forward(self, x):
            return self.norm(x.movedim(1, -1)).movedim(-1, 1)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), PixelNorm(8), nn.SiLU(), nn.Conv2d(8, 3, 3, padding=1))
    denoiser = lambda x, sigma: x - sigma.view(-1, 1, 1, 1) * net(x)  # noqa: E731
    images = noisy_images(5, torch.float32)
    window = measure_crop_size(denoiser, images, sigmas=[0.2, 1.0], patch=2)
    full = measure_crop_size(denoiser, images, sigmas=[0.2, 1.0], patch=2, norm_statistics="full")
    assert torch.equal(window.losses, full.losses) and window.table == full.table


@pytest.mark.parametrize("norm, name", [(nn.InstanceNorm2d(3, affine=True), "InstanceNorm2d"),
                                        (nn.LayerNorm([3, SIZE, SIZE]), "LayerNorm"),
                                        (nn.BatchNorm2d(3).train(), "BatchNorm2d")])
def test_other_spatial_normalisations_are_refused(norm, name):
    net = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), norm)
    denoiser = lambda x, sigma: net(x)  # noqa: E731
    images = noisy_images(2, torch.float32)
    with pytest.raises(ValueError, match=rf"handles GroupNorm only; {name}\("):
        measure_crop_size(denoiser, images, sigmas=[0.5], patch=2, norm_statistics="full")
    with pytest.raises(ValueError, match="norm_statistics must be one of"):
        measure_crop_size(denoiser, images, sigmas=[0.5], patch=2, norm_statistics="image")
    if name != "LayerNorm":  # a LayerNorm over a fixed H, W cannot see a window at all
        measure_crop_size(denoiser, images, sigmas=[0.5], patch=2)  # "window": as before, nothing refused


def test_batch_norm_with_running_statistics_is_local():
    net = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3).eval())
    images = noisy_images(3, torch.float32)
    window = measure_crop_size(lambda x, s: net(x), images, sigmas=[0.5], patch=2)
    full = measure_crop_size(lambda x, s: net(x), images, sigmas=[0.5], patch=2, norm_statistics="full")
    assert torch.equal(window.losses, full.losses)
    assert math.isfinite(float(full.losses.sum()))
