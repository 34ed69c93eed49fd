"""Radial power spectrum of an image set and its error against a reference, in decades (log10 of power ratios).

Natural images have a power-law spectrum (power ~ 1/f^2); blur multiplies it by |K(f)|^2, which removes power at
high frequency. Comparing a generated set's spectrum band by band with the reference's shows blur that leaks into
samples (negative high-frequency error) or excess noise (positive), which global metrics can hide (DESIGN.md
section 6). Each image channel has its mean removed and a Hann window applied so that the image border does not
add a cross of spurious high-frequency power; both sets get the same treatment, so the ratio is fair."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

HIGH_FREQUENCY_CYCLES_PER_PX = 0.25  # half the Nyquist frequency: the part blur removes first


@dataclass(frozen=True)
class RadialSpectrum:
    frequency: torch.Tensor  # [K] band centres, cycles per pixel (1/N .. 1/2)
    power: torch.Tensor  # [K] mean power per band (float64)


def _band_power_per_image(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(band centres [K] in cycles per pixel, mean power per image and band float64 [B, K], channels averaged)."""
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be square [B, C, N, N], got shape {tuple(images.shape)}")
    size = images.shape[-1]
    x = images.double().cpu()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    window = torch.hann_window(size, periodic=False, dtype=torch.float64)
    power = torch.fft.fft2(x * torch.outer(window, window)).abs().pow(2).mean(dim=1)  # [B, N, N]
    frequencies = torch.fft.fftfreq(size, dtype=torch.float64)
    radius = torch.sqrt(frequencies[:, None] ** 2 + frequencies[None, :] ** 2)
    band = torch.round(radius * size).long()  # band k holds radii in [(k - 1/2)/N, (k + 1/2)/N)
    bands = torch.arange(1, size // 2 + 1)
    per_image = torch.stack([power[:, band == k].mean(dim=1) for k in bands], dim=1)
    return bands.double() / size, per_image


def radial_power_spectrum(images: torch.Tensor) -> RadialSpectrum:
    frequency, per_image = _band_power_per_image(images)
    return RadialSpectrum(frequency=frequency, power=per_image.mean(dim=0))


def _summaries(log_ratio: torch.Tensor, frequency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMS over bands, mean over bands above HIGH_FREQUENCY_CYCLES_PER_PX) of log ratios [..., K]."""
    return log_ratio.pow(2).mean(dim=-1).sqrt(), log_ratio[..., frequency > HIGH_FREQUENCY_CYCLES_PER_PX].mean(dim=-1)


def spectrum_error(images: torch.Tensor, reference: torch.Tensor) -> dict[str, float | list[float]]:
    """log10(power / reference power) per band; 'spectrum_error': its RMS over bands (decades, >= 0);
    'spectrum_high_freq': its mean over bands above 0.25 cycles/px (signed: < 0 means missing detail, i.e. blur)."""
    generated, target = radial_power_spectrum(images), radial_power_spectrum(reference)
    log_ratio = torch.log10(generated.power.clamp_min(1e-30) / target.power.clamp_min(1e-30))
    rms, high = _summaries(log_ratio, generated.frequency)
    return {
        "spectrum_error": rms.item(),
        "spectrum_high_freq": high.item(),
        "spectrum_log_ratio": log_ratio.tolist(),
        "spectrum_frequency": generated.frequency.tolist(),
    }


def spectrum_error_replicates(images: torch.Tensor, reference: torch.Tensor, counts_a: torch.Tensor,
                              counts_b: torch.Tensor) -> dict[str, np.ndarray]:
    """{'spectrum_error', 'spectrum_high_freq'}: float64 [B] for bootstrap counts per image [B, N] of each set
    (the band powers are means over images, so a resample is a weighted mean)."""
    frequency, power_a = _band_power_per_image(images)
    _, power_b = _band_power_per_image(reference)
    mean_a = counts_a.double() @ power_a / counts_a.sum(dim=1, keepdim=True).double()
    mean_b = counts_b.double() @ power_b / counts_b.sum(dim=1, keepdim=True).double()
    rms, high = _summaries(torch.log10(mean_a.clamp_min(1e-30) / mean_b.clamp_min(1e-30)), frequency)
    return {"spectrum_error": rms.numpy(), "spectrum_high_freq": high.numpy()}
