"""The compact UNet and its encoder half (reused by the noise classifier of the annotation step)."""
from __future__ import annotations

import pytest
import torch

from ambient_fast.networks import UNet, UNetEncoder


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one thread is faster, and much faster on a machine whose cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_encoder_returns_pooled_features_and_depends_on_noise_level():
    torch.manual_seed(0)
    encoder = UNetEncoder(3, 16, model_channels=16, channel_mult=(1, 2), num_blocks=1)
    for block in encoder.blocks:  # residual branches start at zero (identity blocks); give them weights
        torch.nn.init.normal_(block.conv1.weight, std=0.1)
    x = torch.randn(4, 3, 16, 16)
    features = encoder(x, torch.zeros(4))
    assert features.shape == (4, encoder.out_features) == (4, 32)
    assert not torch.allclose(features, encoder(x, torch.full((4,), 1.0)))
    features.sum().backward()  # trains end to end
    smooth = UNetEncoder(3, 16, model_channels=16, channel_mult=(1, 2), fourier_scale=1.0)
    assert smooth.embedding.fourier.freqs.abs().max() < encoder.embedding.fourier.freqs.abs().max() / 4
    assert encoder.conv_in.weight.grad.abs().sum() > 0


def test_unet_output_shape_starts_at_zero_and_learns():
    torch.manual_seed(0)
    net = UNet(3, 8, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), label_dim=5)
    x = torch.randn(6, 3, 8, 8)
    labels = torch.randint(0, 5, (6,))
    out = net(x, torch.randn(6), labels)
    assert out.shape == x.shape and out.abs().max() == 0  # zero-initialised output layer: D = c_skip x at start
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    target = torch.randn_like(x)
    first = (net(x, torch.zeros(6), labels) - target).square().mean().item()
    for _ in range(20):
        loss = (net(x, torch.zeros(6), labels) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.7 * first


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="divisible"):
        UNet(3, 10, channel_mult=(1, 2, 2))
    net = UNet(3, 8, model_channels=16, channel_mult=(1, 2), label_dim=3)
    with pytest.raises(ValueError, match="class_labels"):
        net(torch.randn(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        net(torch.randn(2, 1, 8, 8), torch.zeros(2), torch.zeros(2, dtype=torch.long))
