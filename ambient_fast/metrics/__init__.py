"""Evaluation metrics: Frechet distances with pluggable features (pixels anywhere; Inception-v3 FID and DINOv2
FD from local weights only), sliced Wasserstein distance on Laplacian-pyramid patches, radial power-spectrum
error, memorisation and diversity against the training set."""
from .report import EvaluationConfig, evaluate
from .features import PixelFeatures, TorchScriptFeatures, WeightsNotFoundError, dinov2_features, inception_features
from .frechet import GaussianStatistics, frechet_distance, frechet_distance_of
from .nearest_neighbours import memorization, nearest_neighbour_distance
from .spectrum import RadialSpectrum, radial_power_spectrum, spectrum_error
from .sliced_wasserstein import SWDConfig, laplacian_pyramid, swd

__all__ = [
    "EvaluationConfig", "GaussianStatistics", "PixelFeatures", "RadialSpectrum", "SWDConfig", "TorchScriptFeatures",
    "WeightsNotFoundError", "dinov2_features", "evaluate", "frechet_distance", "frechet_distance_of",
    "inception_features", "laplacian_pyramid", "memorization", "nearest_neighbour_distance", "radial_power_spectrum",
    "spectrum_error", "swd",
]
