"""Classifier training is reproducible from its own seed and leaves the caller's global random state alone
(the public reference reseeds the global RNG: DESIGN.md pitfall 7)."""
from __future__ import annotations

import torch

from ambient_fast.annotate.classifier import ClassifierConfig, TrainConfig, train_classifier
from ambient_fast.annotate.crops import CropsClassifierConfig, train_crops_classifier


def test_training_does_not_touch_the_global_generator():
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(8, 3, 8, 8, generator=generator)
    corrupted = torch.randn(8, 3, 8, 8, generator=generator) * 0.5
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    config = ClassifierConfig(img_resolution=8, model_channels=8, channel_mult=(1, 1))
    first, _ = train_classifier(clean, corrupted, config=config, train=TrainConfig(steps=2, batch_size=4, seed=5))
    train_crops_classifier(clean, corrupted, config=CropsClassifierConfig(crop_sizes=(4,), model_channels=8, channel_mult=(1,)),
                           train=TrainConfig(steps=2, batch_size=4, seed=5))
    assert torch.equal(torch.rand(3), expected), "classifier training changed the global random state"
    second, _ = train_classifier(clean, corrupted, config=config, train=TrainConfig(steps=2, batch_size=4, seed=5))
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)  # same seed, same classifier
