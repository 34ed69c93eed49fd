"""Annotation: which noise levels each training sample may be used at (paper Sections 3.1, 3.2, 5, F.1).

noisy_crops      the classifier batch (crops x levels x draws) in one pass, noise keyed per sample
scoring          p[sample, level] from a classifier, in chunks of bounded size
classifier       the high-noise classifier c(x_s, s) = P(clean | x_s) and its training (eq. 3.1)
sigma_min        sigma_min per sample: dense grid (reference) and fast adaptive search; per-dataset (eq. 3.2)
crops            the crops classifier and sigma_max (eq. 3.4); crop_size measures crop(sigma)
quality          fixed annotations from quality scores (Sections 5, F.1)
images, resume   image folders / .npz input; resumable, rank-sharded runs
show, cli        summary + plot; the `ambient-fast annotate` subcommands
synthetic        generated smooth random fields and blurred versions (tests, benchmarks, demos)
See docs/annotation.md.
"""
from .noisy_crops import noisy_crops, noisy_crops_reference

__all__ = ["noisy_crops", "noisy_crops_reference"]
