"""Metrics with known answers: the Frechet closed form, ~0 for identical sets, blur seen as missing
high-frequency power, a memorised set flagged, SWD growing with a distribution shift."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cli_errors import user_error
from scipy import linalg

from ambient_fast.corruptions import AdditiveNoise, GaussianBlur
from ambient_fast.metrics import (
    GaussianStatistics, PixelFeatures, SWDConfig, TorchScriptFeatures, WeightsNotFoundError, dinov2_features, evaluate,
    frechet_distance, frechet_distance_of, inception_features, memorization, radial_power_spectrum, spectrum_error, swd,
)
from ambient_fast.metrics import features as features_module


def power_law_images(count: int, *, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Gaussian random fields with power ~ 1/f^2 (the natural-image law), 3 correlated channels, in about [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    white = torch.randn(count, 1, size, size, generator=generator, dtype=torch.float64)
    frequency = torch.fft.fftfreq(size, dtype=torch.float64)
    radius = torch.sqrt(frequency[:, None] ** 2 + frequency[None, :] ** 2).clamp_min(1 / size)
    field = torch.fft.ifft2(torch.fft.fft2(white) / radius).real
    field = field / field.std(dim=(1, 2, 3), keepdim=True) * 0.4
    tint = torch.rand(count, 3, 1, 1, generator=generator, dtype=torch.float64) * 0.4 + 0.8
    return (field * tint).clamp(-1, 1).float()


def test_frechet_matches_the_closed_form_for_given_gaussians():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    cov_a, cov_b = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mean_a, mean_b = rng.normal(size=5), rng.normal(size=5)
    expected = ((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real)
    got = frechet_distance(GaussianStatistics(mean_a, cov_a, 0), GaussianStatistics(mean_b, cov_b, 0))
    assert got == pytest.approx(expected, rel=1e-8)
    # Diagonal covariances commute: sum (sqrt(a) - sqrt(b))^2 plus the mean term.
    diagonal = frechet_distance(GaussianStatistics(np.zeros(3), np.diag([1.0, 4.0, 9.0]), 0),
                                GaussianStatistics(np.ones(3), np.diag([4.0, 4.0, 1.0]), 0))
    assert diagonal == pytest.approx(3 + 1 + 0 + 4)


def test_frechet_of_samples_converges_to_the_closed_form():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(200_000, 3, generator=generator, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5])
    b = torch.randn(200_000, 3, generator=generator, dtype=torch.float64) + torch.tensor([1.0, 0.0, 0.0])
    expected = 1.0 + (1 - 1) ** 2 + (2 - 1) ** 2 + (0.5 - 1) ** 2
    assert frechet_distance_of(a, b) == pytest.approx(expected, abs=0.03)
    assert frechet_distance_of(a, a) == pytest.approx(0.0, abs=1e-9)


def test_identical_sets_give_zero():
    images = power_law_images(256)
    results = evaluate(images, references={"same": images})["same"]
    assert results["fd_pixels"] == pytest.approx(0.0, abs=1e-4)  # of a total variance of about 100
    assert results["spectrum_error"] == pytest.approx(0.0, abs=1e-12)
    assert results["swd"] == pytest.approx(0.0, abs=1e-9)


def test_blurred_copy_has_missing_high_frequency_power():
    images = power_law_images(256)
    sigma = 0.5
    blurred = GaussianBlur(sigma_px=sigma).apply(images, sample_ids=torch.arange(256), seed=0)
    result = spectrum_error(blurred, images)
    assert result["spectrum_high_freq"] < -0.3
    frequency = torch.tensor(result["spectrum_frequency"], dtype=torch.float64)
    # A Gaussian blur multiplies power by exp(-(2 pi f sigma)^2); the Hann window smears it a little.
    analytic = -((2 * math.pi * frequency * sigma) ** 2) / math.log(10)
    low = frequency <= 0.25
    np.testing.assert_allclose(np.array(result["spectrum_log_ratio"])[low.numpy()], analytic[low].numpy(), atol=0.08)
    noisy = AdditiveNoise(sigma=0.2).apply(images, sample_ids=torch.arange(256), seed=0)
    assert spectrum_error(noisy, images)["spectrum_high_freq"] > 0.1, "added noise is excess high-frequency power"


def test_power_law_images_have_the_natural_image_slope():
    spectrum = radial_power_spectrum(power_law_images(256))
    slope = np.polyfit(np.log10(spectrum.frequency.numpy()[1:6]), np.log10(spectrum.power.numpy()[1:6]), 1)[0]
    assert -2.6 < slope < -1.4


def test_memorised_set_is_flagged_and_fresh_data_is_not():
    data = power_law_images(600, seed=3)
    train, test, fresh = data[:400], data[400:500], data[500:]
    copies = train[:100] + 0.01 * torch.randn(100, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    flagged = memorization(copies, train=train, test=test)
    assert flagged["copy_fraction"] == 1.0 and flagged["nn_train_ratio"] < 0.1
    novel = memorization(fresh, train=train, test=test)
    assert novel["copy_fraction"] <= 0.05 and 0.8 < novel["nn_train_ratio"] < 1.25
    assert 0.8 < novel["diversity_ratio"] < 1.25
    collapsed = memorization(fresh[:1].expand(100, -1, -1, -1) + 0.01 * torch.randn(100, 3, 16, 16), train=train, test=test)
    assert collapsed["diversity_ratio"] < 0.1


def test_swd_grows_with_the_distribution_shift():
    images, other = power_law_images(256, seed=4), power_law_images(256, seed=5)
    config = SWDConfig(descriptors_per_image=16, projections=64)
    distances = [swd(other, AdditiveNoise(sigma=s).apply(images, sample_ids=torch.arange(256), seed=0), config)["swd"]
                 for s in (0.0, 0.3, 0.6, 1.2)]
    # Independent sets of 256 images sit at a sampling floor (about 60 here); the shift adds to it.
    assert distances == sorted(distances) and distances[-1] > 1.4 * distances[0]
    levels = swd(images, GaussianBlur(sigma_px=1.0).apply(images, sample_ids=torch.arange(256), seed=0), config)
    assert levels["swd_level0"] > levels["swd_level1"], "blur changes the finest band most"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, still how the FID networks ship
def test_torchscript_features_and_missing_weights(tmp_path, monkeypatch):
    class Pool(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    path = tmp_path / "net.pt"
    torch.jit.script(Pool()).save(str(path))
    extractor = TorchScriptFeatures(path=str(path), name="pool", resolution_px=8, input_range="uint8",
                                    trust_torchscript=True)
    images = torch.zeros(3, 3, 16, 16)
    torch.testing.assert_close(extractor(images), torch.full((3, 3), 127.5, dtype=torch.float64))
    assert PixelFeatures()(images).shape == (3, 768)

    monkeypatch.delenv(features_module.INCEPTION_ENV, raising=False)
    monkeypatch.delenv(features_module.DINOV2_ENV, raising=False)
    monkeypatch.setattr(features_module, "_CLEAN_FID_CACHE", tmp_path / "absent.pt")
    monkeypatch.setattr(features_module, "_TORCH_FIDELITY_CACHE", tmp_path / "absent.pth")
    with pytest.raises(WeightsNotFoundError, match="never downloaded"):
        inception_features()
    with pytest.raises(WeightsNotFoundError, match="DINOv2"):
        dinov2_features(str(tmp_path / "nothing.pt"))
    monkeypatch.setenv(features_module.INCEPTION_ENV, str(path))
    assert inception_features(trust_torchscript=True).name == "inception"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_weights_run_only_with_an_explicit_opt_in(tmp_path, monkeypatch, capsys):
    """torch.jit.load runs code stored in the file: without trust_torchscript=True (CLI --trust-torchscript, or
    ${AMBIENT_FAST_TRUST_TORCHSCRIPT}=1) the file is refused before it is opened, with the risk stated."""
    from ambient_fast import cli
    from ambient_fast.metrics.features import TRUST_ENV, UntrustedWeightsError

    class Pool(torch.nn.Module):
        def forward(self, x, return_features: bool = False):
            return x.mean(dim=(2, 3))

    path = tmp_path / "net.pt"
    torch.jit.script(Pool()).save(str(path))
    monkeypatch.delenv(TRUST_ENV, raising=False)
    original_load = torch.jit.load

    def refuse_load(*args, **kwargs):
        raise AssertionError("torch.jit.load was called without the opt-in")

    monkeypatch.setattr(torch.jit, "load", refuse_load)
    for make in (lambda **kw: TorchScriptFeatures(path=str(path), name="pool", resolution_px=8, **kw),
                 lambda **kw: inception_features(str(path), **kw), lambda **kw: dinov2_features(str(path), **kw)):
        with pytest.raises(UntrustedWeightsError, match=r"runs the code stored in it.*trust_torchscript=True.*--trust-torchscript"):
            make()
    monkeypatch.setattr(torch.jit, "load", original_load)
    assert inception_features(str(path), trust_torchscript=True).name == "inception"
    monkeypatch.setenv(TRUST_ENV, "1")
    assert dinov2_features(str(path)).name == "dinov2"
    monkeypatch.delenv(TRUST_ENV)

    images = tmp_path / "images.npz"
    np.savez(images, samples=np.random.default_rng(0).uniform(-1, 1, (8, 3, 16, 16)).astype(np.float32))
    command = ["eval", "--generated", str(images), "--test", str(images), "--inception", str(path)]
    user_error(capsys, command, r"^error: .*runs the code stored in it.*--trust-torchscript")
    assert cli.main(command + ["--trust-torchscript"]) == 0
    assert "fd_inception=" in capsys.readouterr().out
    assert cli.main(["eval", "--help"]) == 0
    assert "runs code" in " ".join(capsys.readouterr().out.split())


# --- KID, the PCA projection and the bootstrap replicates (metrics.kid / projection / bootstrap) ---


def _direct_mmd2(a: np.ndarray, b: np.ndarray) -> float:
    """The unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3, pair by pair in float64 (Binkowski et al. 2018)."""
    k = lambda x, y: (x @ y / a.shape[1] + 1) ** 3  # noqa: E731
    m, n = len(a), len(b)
    within_a = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    within_b = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    cross = sum(k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)
    return within_a + within_b - 2 * cross


def test_kid_matches_the_direct_formula_and_its_subsets():
    from ambient_fast.metrics.kid import kid

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(12, 5)), rng.normal(size=(15, 5)) * 1.5 + 0.3
    # Equal sizes no larger than the subset: one exact value.
    assert kid(a, b[:12]) == pytest.approx(1e3 * _direct_mmd2(a, b[:12]), rel=1e-12)
    # Subsets of 6: the mean over the subsets' own direct values.
    generator = torch.Generator().manual_seed(4)
    got = kid(a, b, subsets=3, subset_size=6, seed=4)
    rows = [(torch.rand(3, n, generator=generator).argsort(dim=1)[:, :6]) for n in (12, 15)]
    expected = np.mean([_direct_mmd2(a[rows[0][s].numpy()], b[rows[1][s].numpy()]) for s in range(3)])
    assert got == pytest.approx(1e3 * expected, rel=1e-12)


def test_kid_is_unbiased_and_fd_is_not():
    """Two samples of one distribution: KID averages 0 (within its standard error), FD stays above 0."""
    from ambient_fast.metrics.kid import kid

    generator = torch.Generator().manual_seed(5)
    scale = torch.linspace(0.5, 2.0, 8, dtype=torch.float64)
    values, fds = [], []
    for _ in range(40):
        a = torch.randn(50, 8, generator=generator, dtype=torch.float64) * scale
        b = torch.randn(60, 8, generator=generator, dtype=torch.float64) * scale
        values.append(kid(a, b))
        fds.append(frechet_distance_of(a, b))
    values = np.array(values)
    assert abs(values.mean()) < 3 * values.std(ddof=1) / math.sqrt(len(values))
    assert np.mean(fds) > 10 * np.std(fds, ddof=1) / math.sqrt(len(fds))  # FD's bias: many standard errors above 0
    shifted = kid(torch.randn(50, 8, generator=generator, dtype=torch.float64) + 1.0,
                  torch.randn(60, 8, generator=generator, dtype=torch.float64))
    assert shifted > values.mean() + 4 * values.std(ddof=1)


def test_replicates_equal_the_metric_of_the_resampled_sets():
    """Each bootstrap replicate (weights per sample) equals the metric of the sets with the samples repeated."""
    from ambient_fast.metrics.bootstrap import resample_counts
    from ambient_fast.metrics.frechet import frechet_distance_replicates
    from ambient_fast.metrics.kid import kid_replicates, polynomial_kernel

    rng = np.random.default_rng(6)
    counts_a, counts_b = resample_counts(40, replicates=3, seed=0), resample_counts(30, replicates=3, seed=1)
    assert (counts_a.sum(dim=1) == 40).all() and counts_a.dtype == torch.int64
    for dimension in (4, 60):  # both routes of the trace term: [D, D] and the samples' Gram matrix
        a, b = rng.normal(size=(40, dimension)), rng.normal(size=(30, dimension)) * 1.3 + 0.1
        replicates = frechet_distance_replicates(a, counts_a, b, counts_b)
        for k in range(3):
            repeated_a, repeated_b = np.repeat(a, counts_a[k], axis=0), np.repeat(b, counts_b[k], axis=0)
            assert replicates[k] == pytest.approx(frechet_distance_of(repeated_a, repeated_b), rel=1e-7)
        ones = np.ones((1, 40)), np.ones((1, 30))
        assert frechet_distance_replicates(a, ones[0], b, ones[1])[0] == pytest.approx(frechet_distance_of(a, b), rel=1e-7)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    kernels = (polynomial_kernel(ta, ta), polynomial_kernel(tb, tb), polynomial_kernel(ta, tb))
    ones = torch.ones(1, 40, dtype=torch.int64), torch.ones(1, 30, dtype=torch.int64)
    assert kid_replicates(kernels, *ones)[0] == pytest.approx(1e3 * _direct_mmd2(a, b), rel=1e-10)
    # A resample: pairs of distinct samples weighted by their counts (a copy never pairs with itself).
    w = counts_a[0].double().numpy()
    k_aa = kernels[0].numpy()
    mask = 1 - np.eye(40)
    within = (np.outer(w, w) * k_aa * mask).sum() / (np.outer(w, w) * mask).sum()
    v = counts_b[0].double().numpy()
    within_b = (np.outer(v, v) * kernels[1].numpy() * (1 - np.eye(30))).sum() / (np.outer(v, v) * (1 - np.eye(30))).sum()
    cross = w @ kernels[2].numpy() @ v / (w.sum() * v.sum())
    assert kid_replicates(kernels, counts_a[:1], counts_b[:1])[0] == pytest.approx(1e3 * (within + within_b - 2 * cross),
                                                                                    rel=1e-10)


def test_swd_spectrum_and_memorisation_replicates_of_unit_weights_are_the_estimates():
    from ambient_fast.metrics.bootstrap import resample_counts
    from ambient_fast.metrics.spectrum import spectrum_error_replicates

    a, b = power_law_images(64, seed=1), power_law_images(64, seed=2) * 0.8
    ones = torch.ones(1, 64, dtype=torch.int64)
    config = SWDConfig(bootstrap_repeats=4)
    values, replicates = swd(a, b, config, counts_a=ones, counts_b=ones)
    assert values == swd(a, b, config)
    for key in values:
        assert replicates[key][0] == pytest.approx(values[key], rel=1e-5)  # integral |F_a - F_b| = sorted differences
    counts = resample_counts(64, replicates=2, seed=3)
    spectrum = spectrum_error_replicates(a, b, counts, ones.expand(2, -1))
    repeated = spectrum_error(torch.repeat_interleave(a, counts[1], dim=0), b)
    assert spectrum["spectrum_high_freq"][1] == pytest.approx(repeated["spectrum_high_freq"], rel=1e-10)
    train, test = power_law_images(100, seed=4), power_law_images(50, seed=5)
    plain = memorization(a, train=train, test=test)
    values, replicates = memorization(a, train=train, test=test, counts_generated=ones,
                                      counts_test=torch.ones(1, 50, dtype=torch.int64))
    assert values == plain
    for key in ("nn_train_ratio", "copy_fraction", "copy_fraction_test"):
        assert replicates[key][0] == pytest.approx(plain[key], rel=1e-12)


def test_pca_projection_whitens_its_reference_and_is_fixed_after_fitting():
    from ambient_fast.metrics.projection import PCAFeatures

    reference = power_law_images(300, seed=7)
    pca = PCAFeatures.fit(reference, components=16)
    features = pca(reference)
    torch.testing.assert_close(torch.cov(features.T), torch.eye(16, dtype=torch.float64), atol=1e-8, rtol=0)
    # Axes: the 16 leading eigenvectors of the reference's covariance (float64 reference: numpy's eigh).
    x = reference.reshape(300, -1).double().numpy()
    values, vectors = np.linalg.eigh(np.cov(x, rowvar=False))
    expected = (x - x.mean(axis=0)) @ vectors[:, ::-1][:, :16] / np.sqrt(values[::-1][:16])
    np.testing.assert_allclose(np.abs(features.numpy()), np.abs(expected), atol=1e-6)
    other = power_law_images(20, seed=8)
    torch.testing.assert_close(PCAFeatures.fit(reference, components=16)(other), pca(other), rtol=0, atol=0)
    with pytest.raises(ValueError, match="components"):
        PCAFeatures.fit(reference[:10], components=16)


def test_t_quantiles_and_intervals():
    from scipy import stats

    from ambient_fast.metrics.bootstrap import combined_interval, percentile_interval, t_quantile_975

    for dof in (1, 2, 5, 30):
        assert t_quantile_975(dof) == pytest.approx(stats.t.ppf(0.975, dof), abs=6e-4)
    replicates = np.arange(101, dtype=np.float64)  # quantiles 2.5 and 97.5, median 50
    assert percentile_interval(replicates) == pytest.approx((2.5, 97.5))
    assert percentile_interval(replicates, estimate=40.0) == pytest.approx((-7.5, 87.5))  # moved to the estimate
    mean, low, high = combined_interval([1.0, 2.0, 3.0], None)
    assert (mean, high - mean) == pytest.approx((2.0, 4.303 * 1.0 / math.sqrt(3)), rel=1e-3)
    mean, low, high = combined_interval([5.0], [list(replicates)])
    assert (mean, low, high) == pytest.approx((5.0, -42.5, 52.5))
    assert all(math.isnan(v) for v in combined_interval([5.0], None)[1:])
