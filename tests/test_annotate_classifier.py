"""Classifier training is reproducible from its own seed and leaves the caller's global random state alone
(the public reference reseeds the global RNG: DESIGN.md pitfall 7); its translation augmentation and weight decay
against float64 / closed-form references."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ambient_fast.annotate.classifier import (ClassifierConfig, NoiseClassifier, TrainConfig, train_classifier,
                                              translated)
from ambient_fast.annotate.crops import CropsClassifierConfig, train_crops_classifier
from ambient_fast.networks import seeded


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


def test_translated_matches_a_float64_reflection_reference():
    images = torch.randn(7, 3, 6, 5, generator=torch.Generator().manual_seed(3))
    shifted = translated(images, 2, torch.Generator().manual_seed(11))
    offsets = torch.randint(0, 5, (2, 7), generator=torch.Generator().manual_seed(11))  # the same draws
    for i in range(7):
        padded = np.pad(images[i].double().numpy(), ((0, 0), (2, 2), (2, 2)), mode="reflect")
        top, left = int(offsets[0, i]), int(offsets[1, i])
        expected = torch.from_numpy(padded[:, top:top + 6, left:left + 5])
        torch.testing.assert_close(shifted[i].double(), expected, rtol=0, atol=0)
    assert len({(int(a), int(b)) for a, b in offsets.T}) > 1  # the images are not all shifted alike
    generator = torch.Generator().manual_seed(0)
    assert translated(images, 0, generator) is images and torch.equal(generator.get_state(),
                                                                      torch.Generator().manual_seed(0).get_state())
    with pytest.raises(ValueError, match="smaller than the image side"):
        translated(images, 5, generator)
    with pytest.raises(ValueError, match="translate_px"):
        TrainConfig(translate_px=-1)


def test_weight_decay_is_adamw_shrinkage_on_top_of_the_same_step():
    """One step from the same initialisation and batch: AdamW moves p by the Adam step and also by -lr * wd * p."""
    generator = torch.Generator().manual_seed(0)
    clean, corrupted = torch.randn(8, 3, 8, 8, generator=generator), torch.randn(8, 3, 8, 8, generator=generator)
    config = ClassifierConfig(img_resolution=8, model_channels=8, channel_mult=(1, 1))
    runs = {wd: train_classifier(clean, corrupted, config=config, train=TrainConfig(steps=1, batch_size=4, lr=1e-2,
                                                                                     weight_decay=wd, translate_px=1))[0]
            for wd in (0.0, 0.5)}
    initial = dict(seeded(0, lambda: NoiseClassifier(config)).named_parameters())
    decayed_parameters = dict(runs[0.5].named_parameters())
    for name, plain in runs[0.0].named_parameters():  # parameters only: buffers (Fourier frequencies) are not decayed
        decayed = decayed_parameters[name].detach()
        plain = plain.detach()
        torch.testing.assert_close(plain.double() - decayed.double(), 1e-2 * 0.5 * initial[name].detach().double(),
                                   rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_training_batches_reach_the_network_in_nchw_layout(monkeypatch, layout):
    """The shift augmentation gathers pixels in [N, H, W, C] order and users' npz images arrive as a permuted view:
    a channels-last batch sends CPU convolutions and GroupNorm down their slow NHWC path (measured 34% of a demo
    classifier's training time, docs/results.md). Every batch the network sees is NCHW-contiguous, whatever the
    augmentation or the layout of the images given."""
    seen = []
    forward = NoiseClassifier.forward

    def spy(self, x_noisy, sigma):
        seen.append(x_noisy.is_contiguous())
        return forward(self, x_noisy, sigma)

    monkeypatch.setattr(NoiseClassifier, "forward", spy)
    generator = torch.Generator().manual_seed(0)
    clean, corrupted = (torch.randn(8, 3, 8, 8, generator=generator).contiguous(memory_format=layout) for _ in range(2))
    config = ClassifierConfig(img_resolution=8, model_channels=8, channel_mult=(1, 1))
    for augment, shift in (("none", 0), ("dihedral", 0), ("dihedral", 2)):
        train_classifier(clean, corrupted, config=config,
                         train=TrainConfig(steps=2, batch_size=4, augment=augment, translate_px=shift))
    assert seen and all(seen), f"{seen.count(False)} of {len(seen)} training batches were not NCHW-contiguous"
