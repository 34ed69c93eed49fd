"""All metrics of one generated set against named reference sets (the held-out test set, the training set), and
memorisation against the training set. Images are float [N, C, H, W] in [-1, 1]."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .frechet import frechet_distance_of
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
             test: torch.Tensor | None = None, config: EvaluationConfig | None = None) -> dict[str, dict]:
    """{reference name: {'fd_pixels', 'fd_<extractor>', 'swd', 'swd_level<k>', 'spectrum_error',
    'spectrum_high_freq', ...}, 'memorization': {...} when train and test are given}."""
    from .features import PixelFeatures

    config = config or EvaluationConfig()
    extractors = [PixelFeatures(), *config.feature_extractors]
    generated_features = {e.name: e(generated) for e in extractors}
    results: dict[str, dict] = {}
    for name, reference in references.items():
        if reference.shape[1:] != generated.shape[1:]:
            raise ValueError(f"reference {name!r} has images of shape {tuple(reference.shape[1:])}, generated "
                             f"{tuple(generated.shape[1:])}")
        row = {f"fd_{e.name}": frechet_distance_of(generated_features[e.name], e(reference)) for e in extractors}
        row.update(swd(generated, reference, config.swd))
        row.update(spectrum_error(generated, reference))
        results[name] = row
    if train is not None and test is not None:
        results["memorization"] = memorization(generated, train=train, test=test, copy_fraction=config.copy_fraction,
                                               seed=config.seed)
    return results
