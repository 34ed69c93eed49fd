"""All metrics of one generated set against named reference sets (the held-out test set, the training set), and
memorisation against the training set, each with bootstrap replicates for its interval (metrics.bootstrap).
Images are float [N, C, H, W] in [-1, 1]."""
from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .bootstrap import resample_counts
from .frechet import GaussianStatistics, frechet_distance, frechet_distance_replicates
from .kid import kid, kid_replicates, polynomial_kernel
from .nearest_neighbours import memorization
from .projection import DEFAULT_COMPONENTS, PCAFeatures
from .spectrum import spectrum_error, spectrum_error_replicates
from .sliced_wasserstein import SWDConfig, swd

KID_MAX_SAMPLES = 5000  # larger sets: KID from subsets only (no full kernel matrix), without bootstrap replicates


@dataclass
class EvaluationConfig:
    swd: SWDConfig = field(default_factory=SWDConfig)
    copy_fraction: float = 1 / 3
    feature_extractors: Sequence[Callable] = ()  # objects with .name, images -> [N, D] (see features.py)
    seed: int = 0
    # Frechet distance and KID also on the first k principal components of the reference named `pca_reference`
    # (else the first one), whitened (metrics.projection); 0: not computed.
    pca_components: int = DEFAULT_COMPONENTS
    pca_reference: str = "test"
    kid: bool = True
    bootstrap: int = 50  # replicates per metric (0: none); resamples of both generated and reference sets
    bootstrap_seed: int = 0  # the same resamples for every arm and training seed (paired)


def _pca(references: dict[str, torch.Tensor], config: EvaluationConfig, cache: dict) -> PCAFeatures | None:
    if not config.pca_components:
        return None
    name = config.pca_reference if config.pca_reference in references else next(iter(references))
    reference = references[name]
    key = ("pca", name, tuple(reference.shape), config.pca_components)
    if key not in cache:
        flat = reference[0].numel()
        components = min(config.pca_components, reference.shape[0] - 1, flat)
        pca = PCAFeatures.fit(reference, components=components)
        cache[key] = PCAFeatures(mean=pca.mean, axes=pca.axes, name="pca")  # one key whatever k: fd_pca, kid_pca
    return cache[key]


def _reference_counts(name: str, count: int, config: EvaluationConfig, cache: dict) -> torch.Tensor:
    key = ("counts", name, count, config.bootstrap, config.bootstrap_seed)
    if key not in cache:  # a seed of its own per reference name, fixed across arms and training seeds
        cache[key] = resample_counts(count, replicates=config.bootstrap,
                                     seed=config.bootstrap_seed + zlib.crc32(name.encode()))
    return cache[key]


def _feature_metrics(extractor, generated: torch.Tensor, name: str, reference: torch.Tensor, config, cache,
                     counts_generated, counts_reference) -> tuple[dict, dict]:
    key = (name, extractor.name, reference.shape[0])
    if key not in cache:
        features = extractor(reference).double()
        cache[key] = {"features": features, "statistics": GaussianStatistics.of(features)}
    entry = cache[key]
    features = extractor(generated).double()
    row = {f"fd_{extractor.name}": frechet_distance(GaussianStatistics.of(features), entry["statistics"])}
    replicates = {}
    if counts_generated is not None:
        replicates[f"fd_{extractor.name}"] = frechet_distance_replicates(features, counts_generated, entry["features"],
                                                                         counts_reference)
    if config.kid:
        if max(features.shape[0], reference.shape[0]) <= KID_MAX_SAMPLES:
            if "k_bb" not in entry:
                entry["k_bb"] = polynomial_kernel(entry["features"], entry["features"])
            kernels = (polynomial_kernel(features, features), entry["k_bb"],
                       polynomial_kernel(features, entry["features"]))
            row[f"kid_{extractor.name}"] = kid(features, entry["features"], seed=config.seed, kernels=kernels)
            if counts_generated is not None:
                replicates[f"kid_{extractor.name}"] = kid_replicates(kernels, counts_generated, counts_reference)
        else:
            row[f"kid_{extractor.name}"] = kid(features, entry["features"], seed=config.seed)
    return row, replicates


def evaluate(generated: torch.Tensor, *, references: dict[str, torch.Tensor], train: torch.Tensor | None = None,
             test: torch.Tensor | None = None, config: EvaluationConfig | None = None,
             reference_cache: dict | None = None) -> dict[str, dict]:
    """{reference name: {'fd_pixels', 'fd_pca', 'kid_pixels', 'kid_pca', 'fd_<extractor>', 'kid_<extractor>', 'swd',
    'swd_level<k>', 'spectrum_error', 'spectrum_high_freq', ..., 'bootstrap': {metric: [B replicates]}},
    'memorization': {..., 'bootstrap': {...}} when train and test are given}. KID is x 1e3. reference_cache: a dict
    kept across calls with the same references (several arms): their features, kernels, the PCA projection and the
    bootstrap resamples are made once."""
    from .features import PixelFeatures

    config = config or EvaluationConfig()
    cache = reference_cache if reference_cache is not None else {}
    pca = _pca(references, config, cache)
    extractors = [PixelFeatures(), *([pca] if pca is not None else []), *config.feature_extractors]
    counts_generated = (resample_counts(generated.shape[0], replicates=config.bootstrap, seed=config.bootstrap_seed)
                        if config.bootstrap else None)
    results: dict[str, dict] = {}
    for name, reference in references.items():
        if reference.shape[1:] != generated.shape[1:]:
            raise ValueError(f"reference {name!r} has images of shape {tuple(reference.shape[1:])}, generated "
                             f"{tuple(generated.shape[1:])}")
        counts_reference = _reference_counts(name, reference.shape[0], config, cache) if config.bootstrap else None
        row, replicates = {}, {}
        for extractor in extractors:
            values, boot = _feature_metrics(extractor, generated, name, reference, config, cache, counts_generated,
                                            counts_reference)
            row.update(values)
            replicates.update(boot)
        if config.bootstrap:
            values, boot = swd(generated, reference, config.swd, counts_a=counts_generated, counts_b=counts_reference)
            row.update(values)
            replicates.update(boot)
            replicates.update(spectrum_error_replicates(generated, reference, counts_generated, counts_reference))
        else:
            row.update(swd(generated, reference, config.swd))
        row.update(spectrum_error(generated, reference))
        if config.bootstrap:
            row["bootstrap"] = {metric: [float(v) for v in values] for metric, values in replicates.items()}
        results[name] = row
    if train is not None and test is not None:
        if config.bootstrap:
            counts_test = (_reference_counts("test", test.shape[0], config, cache))
            row, replicates = memorization(generated, train=train, test=test, copy_fraction=config.copy_fraction,
                                           seed=config.seed, counts_generated=counts_generated,
                                           counts_test=counts_test)
            row["bootstrap"] = {metric: [float(v) for v in values] for metric, values in replicates.items()}
        else:
            row = memorization(generated, train=train, test=test, copy_fraction=config.copy_fraction, seed=config.seed)
        results["memorization"] = row
    return results
