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
