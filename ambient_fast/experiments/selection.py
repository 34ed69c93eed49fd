"""Which corrupted samples an annotation admits at low noise, and what that does to the high frequencies the model
sees (DESIGN.md section 6). At level s the usable set mixes clean samples with the corrupted ones whose sigma_min
is low enough; if the classifier gives low sigma_min mostly to images that were smooth before blurring (blur
changes them little), the admitted set is short of detail twice over:

  selection  mean log10 high-frequency power of the admitted samples' clean originals vs all clean originals
  leak       mean log10 high-frequency power of the admitted (corrupted) samples vs their own originals

both in decades, < 0 = less detail; plus the corrupted share of the usable set at that level."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..buffer import buffer_factor
from ..metrics.spectrum import HIGH_FREQUENCY_CYCLES_PER_PX

DIAGNOSTIC_LEVELS = (0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class SelectionRow:
    sigma: float
    corrupted_share: float  # of the usable set
    admitted: int  # corrupted samples usable at sigma
    selection_decades: float  # NaN when none is admitted
    leak_decades: float


def high_frequency_power(images: torch.Tensor) -> torch.Tensor:
    """Per image: log10 of the mean power above 0.25 cycles/px (mean removed per channel), float64 [N]."""
    x = images.double()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    frequencies = torch.fft.fftfreq(x.shape[-1], dtype=torch.float64)
    radius = torch.sqrt(frequencies[:, None] ** 2 + frequencies[None, :] ** 2)
    power = torch.fft.fft2(x).abs().pow(2).mean(dim=1)  # [N, H, W], channels averaged
    return torch.log10(power[:, radius > HIGH_FREQUENCY_CYCLES_PER_PX].mean(dim=1).clamp_min(1e-30))


def selection_diagnostic(originals: torch.Tensor, corrupted: torch.Tensor, is_clean: torch.Tensor,
                         sigma_min: torch.Tensor, *, max_weight: float = 4.0,
                         levels: tuple[float, ...] = DIAGNOSTIC_LEVELS) -> list[SelectionRow]:
    """originals: clean images [N, ...]; corrupted: the training images as used (clean ones unchanged);
    sigma_min [N] the annotation (0 for clean samples)."""
    b = buffer_factor(max_weight)
    power_original = high_frequency_power(originals)
    power_used = high_frequency_power(corrupted)
    all_mean = power_original.mean()
    rows = []
    for sigma in levels:
        usable = sigma > b * sigma_min
        admitted = usable & ~is_clean
        count = int(admitted.sum())
        share = count / max(int(usable.sum()), 1)
        selection = float(power_original[admitted].mean() - all_mean) if count else float("nan")
        leak = float((power_used[admitted] - power_original[admitted]).mean()) if count else float("nan")
        rows.append(SelectionRow(sigma, share, count, selection, leak))
    return rows
