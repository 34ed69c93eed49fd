"""Annotation on an EDM2 latent dataset sees what the trainer feeds the network: the stored posterior [mean, std]
(8 channels) becomes a standardised 4-channel posterior sample, in the trainer's units (sigma_data = 0.5)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ambient_fast.annotate.images import LatentReading, load_images
from ambient_fast.data import FileDataset, posterior_noise, standardise_latents
from ambient_fast.train.config import SD_VAE_LATENT_MEAN, SD_VAE_LATENT_STD, TrainConfig
from ambient_fast.train.loop import _latent_standardiser

COUNT, SIZE = 6, 8


def write_latents(folder, *, count: int = COUNT, posterior_std: float = 0.3, seed: int = 0) -> None:
    """EDM2-style .npy latents: posterior means with the SD VAE's per-channel statistics, and a posterior std."""
    generator = np.random.default_rng(seed)
    mu, sd = np.array(SD_VAE_LATENT_MEAN, np.float32), np.array(SD_VAE_LATENT_STD, np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        mean = mu[:, None, None] + sd[:, None, None] * generator.standard_normal((4, SIZE, SIZE), np.float32)
        std = np.full((4, SIZE, SIZE), posterior_std, np.float32) * generator.uniform(0.5, 1.5, (4, 1, 1)).astype(np.float32)
        np.save(folder / f"{i:08d}.npy", np.concatenate([mean, std]).astype(np.float32))


def stored_moments(folder) -> torch.Tensor:
    dataset = FileDataset(folder)
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def test_load_images_gives_the_trainers_tensors_bit_for_bit(tmp_path, monkeypatch):
    write_latents(tmp_path / "latents")
    data = load_images(tmp_path / "latents")
    moments = stored_moments(tmp_path / "latents")
    noise = posterior_noise(torch.arange(COUNT), (4, SIZE, SIZE))  # the annotation's one draw per sample id

    def the_annotation_draw(shape, **_):  # the trainer's fresh draw, replaced by the annotation's
        assert tuple(shape) == tuple(noise.shape)
        return noise

    monkeypatch.setattr(torch, "randn", the_annotation_draw)
    trainer_x0 = _latent_standardiser(TrainConfig(), 2 * 4, torch.device("cpu"))(moments, 1234)
    monkeypatch.undo()
    assert data.images.shape == (COUNT, 4, SIZE, SIZE) and data.images.dtype == torch.float32
    assert torch.equal(data.images, trainer_x0)
    assert data.space == "latents: standardised, 4 channels"
    assert data.sample_ids.tolist() == list(range(COUNT)) and data.keys[0] == "00000000.npy"


def test_latents_are_standardised_to_sigma_data(tmp_path):
    """Posterior means with the SD VAE's statistics come out with mean 0 and std 0.5 per channel."""
    write_latents(tmp_path, count=64, posterior_std=1e-3)
    images = load_images(tmp_path).images
    per_channel = images.transpose(0, 1).reshape(4, -1)
    assert per_channel.mean(dim=1).abs().max() < 0.02, per_channel.mean(dim=1)
    assert (per_channel.std(dim=1) - 0.5).abs().max() < 0.02, per_channel.std(dim=1)


def test_the_posterior_sample_is_fixed_per_sample_id(tmp_path):
    write_latents(tmp_path / "latents")
    first, again = load_images(tmp_path / "latents"), load_images(tmp_path / "latents")
    assert torch.equal(first.images, again.images)
    moments = stored_moments(tmp_path / "latents")
    mean_only = standardise_latents(moments, torch.zeros(COUNT, 4, SIZE, SIZE), latent_mean=SD_VAE_LATENT_MEAN,
                                    latent_std=SD_VAE_LATENT_STD)
    assert (first.images - mean_only).abs().mean() > 0.01  # a posterior sample, as in training, not the mean
    other_seed = load_images(tmp_path / "latents", latents=LatentReading(seed=1))
    assert not torch.equal(first.images, other_seed.images)
    (tmp_path / "latents" / "00000002.npy").write_bytes(b"\x93NUMPY garbage")  # unreadable: skipped, ids kept
    fewer = load_images(tmp_path / "latents", report=lambda *_: None)
    assert fewer.sample_ids.tolist() == [0, 1, 3, 4, 5]
    assert torch.equal(fewer.images, first.images[[0, 1, 3, 4, 5]])  # keyed by id, not by position


def test_the_training_configs_statistics_are_used(tmp_path):
    write_latents(tmp_path / "latents")
    mean, std = (0.0, 1.0, 2.0, 3.0), (1.0, 2.0, 3.0, 4.0)
    data = load_images(tmp_path / "latents", latents=LatentReading(latent_mean=mean, latent_std=std))
    expected = standardise_latents(stored_moments(tmp_path / "latents"), posterior_noise(torch.arange(COUNT), (4, SIZE, SIZE)),
                                   latent_mean=mean, latent_std=std)
    assert torch.equal(data.images, expected)
    with pytest.raises(ValueError, match="8 channels.*3 / 3 entries"):
        load_images(tmp_path / "latents", latents=LatentReading(latent_mean=(0.0,) * 3, latent_std=(1.0,) * 3))


def test_image_folders_are_pixels(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    data = load_images(tmp_path / "images")
    assert data.space == "pixels" and data.images.shape == (1, 3, 4, 4)
