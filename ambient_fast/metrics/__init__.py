"""Evaluation metrics: Frechet distances with pluggable features (pixels anywhere; a fixed whitened PCA projection;
Inception-v3 FID and DINOv2 FD from local weights only), KID (unbiased), sliced Wasserstein distance on
Laplacian-pyramid patches, radial power-spectrum error, memorisation and diversity against the training set; each
with bootstrap replicates for its interval (bootstrap.py)."""
from .report import EvaluationConfig, evaluate
from .features import PixelFeatures, TorchScriptFeatures, WeightsNotFoundError, dinov2_features, inception_features
from .bootstrap import combined_interval, percentile_interval, resample_counts
from .frechet import GaussianStatistics, frechet_distance, frechet_distance_of, frechet_distance_replicates
from .kid import kid, kid_replicates
from .projection import PCAFeatures
from .nearest_neighbours import memorization, nearest_neighbour_distance
from .spectrum import RadialSpectrum, radial_power_spectrum, spectrum_error
from .sliced_wasserstein import SWDConfig, laplacian_pyramid, swd

__all__ = [
    "EvaluationConfig", "GaussianStatistics", "PCAFeatures", "PixelFeatures", "RadialSpectrum", "SWDConfig",
    "TorchScriptFeatures", "WeightsNotFoundError", "combined_interval", "dinov2_features", "evaluate",
    "frechet_distance", "frechet_distance_of", "frechet_distance_replicates", "inception_features", "kid",
    "kid_replicates", "laplacian_pyramid", "memorization", "nearest_neighbour_distance", "percentile_interval",
    "radial_power_spectrum", "resample_counts", "spectrum_error", "swd",
]
