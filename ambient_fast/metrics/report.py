"""All metrics of one generated set against named reference sets (the held-out test set, the training set), and
memorisation against the training set. Images are float [N, C, H, W] in [-1, 1]."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .frechet import GaussianStatistics, frechet_distance
from .nearest_neighbours import memorization
from .spectrum import spectrum_error
from .sliced_wasserstein import SWDConfig, swd


@dataclass
class EvaluationConfig:
    swd: SWDConfig = field(default_factory=SWDConfig)
    copy_fraction: float = 1 / 3
    feature_extractors: Sequence[Callable] = ()  # objects with .name, images -> [N, D] (see features.py)
    seed: int = 0


def evaluate(generated: torch.Tensor, *, references: dict[str, torch.Tensor], train: torch.Tensor | None = None,
             test: torch.Tensor | None = None, config: EvaluationConfig | None = None,
             reference_cache: dict | None = None) -> dict[str, dict]:
    """{reference name: {'fd_pixels', 'fd_<extractor>', 'swd', 'swd_level<k>', 'spectrum_error',
    'spectrum_high_freq', ...}, 'memorization': {...} when train and test are given}. reference_cache: a dict kept
    across calls with the same references (several arms): their feature statistics are computed once."""
    from .features import PixelFeatures

    config = config or EvaluationConfig()
    cache = reference_cache if reference_cache is not None else {}
    extractors = [PixelFeatures(), *config.feature_extractors]
    results: dict[str, dict] = {}
    for name, reference in references.items():
        if reference.shape[1:] != generated.shape[1:]:
            raise ValueError(f"reference {name!r} has images of shape {tuple(reference.shape[1:])}, generated "
                             f"{tuple(generated.shape[1:])}")
        row = {}
        for extractor in extractors:
            key = (name, extractor.name, reference.shape[0])
            if key not in cache:
                cache[key] = GaussianStatistics.of(extractor(reference))
            row[f"fd_{extractor.name}"] = frechet_distance(GaussianStatistics.of(extractor(generated)), cache[key])
        row.update(swd(generated, reference, config.swd))
        row.update(spectrum_error(generated, reference))
        results[name] = row
    if train is not None and test is not None:
        results["memorization"] = memorization(generated, train=train, test=test, copy_fraction=config.copy_fraction,
                                               seed=config.seed)
    return results
