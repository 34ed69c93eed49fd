"""The EDM2 magnitude-preserving layers keep unit magnitudes; the network runs, learns and follows the protocol."""
from __future__ import annotations

import math

import pytest
import torch

from ambient_fast.networks import Precond
from ambient_fast.networks.edm2 import EDM2_IMG512, EDM2UNet, MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize
from test_networks_unet import one_thread  # noqa: F401  (autouse fixture: one thread)


def rms(x):
    return x.float().square().mean().sqrt().item()


def test_mp_layers_keep_unit_magnitude():
    torch.manual_seed(0)
    a, b = torch.randn(64, 96, 8, 8), torch.randn(64, 32, 8, 8)
    assert rms(mp_silu(a)) == pytest.approx(1, abs=0.02)
    assert rms(mp_sum(a, a.roll(1, 0), t=0.3)) == pytest.approx(1, abs=0.02)
    cat = mp_cat(a, b, t=0.3)
    assert rms(cat) == pytest.approx(1, abs=0.02)
    # b's share of the squared magnitude is t^2 / ((1 - t)^2 + t^2)
    assert cat[:, 96:].square().sum() / cat.square().sum() == pytest.approx(0.09 / 0.58, rel=0.03)
    assert rms(MPFourier(256)(torch.randn(512))) == pytest.approx(1, abs=0.05)
    assert rms(normalize(3 * a)) == pytest.approx(1, abs=1e-3)
    conv = MPConv(96, 48, (3, 3))
    # unit-norm weights over fan_in: unit output (away from the zero-padded border)
    assert rms(conv(a)[:, :, 1:-1, 1:-1]) == pytest.approx(1, abs=0.05)


def test_forced_weight_normalisation_keeps_stored_weights_on_the_sphere():
    torch.manual_seed(0)
    layer = MPConv(16, 8, (3, 3))
    optimizer = torch.optim.SGD(layer.parameters(), lr=10.0)
    for _ in range(3):
        layer(torch.randn(4, 16, 5, 5)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    layer(torch.randn(1, 16, 5, 5))  # the training-mode forward renormalises before use
    row_rms = layer.weight.flatten(1).square().mean(1).sqrt()
    torch.testing.assert_close(row_rms, torch.ones(8), atol=1e-3, rtol=0)
    layer.eval()
    before = layer.weight.clone()
    layer(torch.randn(1, 16, 5, 5))
    assert torch.equal(before, layer.weight)  # evaluation never writes


def test_activations_stay_unit_magnitude_through_the_network():
    torch.manual_seed(0)
    net = EDM2UNet(4, 16, model_channels=32, channel_mult=(1, 2), num_blocks=2, attn_resolutions=(8,), label_dim=10)
    magnitudes = []
    for name, module in net.named_modules():
        if name.count(".") == 1 and name.startswith(("enc.", "dec.")):
            module.register_forward_hook(lambda _m, _i, out: magnitudes.append(rms(out)))
    x = torch.randn(16, 4, 16, 16)
    raw, logvar = net(x, torch.randn(16) * 0.5, torch.randint(0, 10, (16,)))
    assert raw.shape == x.shape and logvar.shape == (16,)
    assert raw.abs().max() == 0  # out_gain starts at 0 (as the paper's learned output gain)
    assert len(magnitudes) == len(net.enc) + len(net.dec)
    assert all(0.5 < m < 1.6 for m in magnitudes), magnitudes


def test_precond_wrapper_trains_edm2_with_logvar():
    torch.manual_seed(0)
    net = Precond(EDM2UNet(3, 8, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=()), label_dim=0)
    x, sigma = torch.randn(8, 3, 8, 8), torch.full((8,), 0.5)
    raw, logvar = net.raw(x, sigma)
    assert raw.shape == x.shape and logvar.shape == (8,)
    denoised = net(x, sigma)
    torch.testing.assert_close(denoised, 0.5 * x)  # F = 0 at start: D = c_skip x = 0.25 / 0.5 x
    assert set(EDM2_IMG512) == {"xs", "s", "m", "l", "xl", "xxl"}
    assert [EDM2_IMG512[k].model_channels for k in ("xs", "s", "m", "l", "xl", "xxl")] == [128, 192, 256, 320, 384, 448]
    assert math.isclose(EDM2_IMG512["xxl"].ref_lr, 0.0065)


def test_img512_presets_have_the_paper_parameter_counts():
    """EDM2 (Karras et al. 2024) Table 2: XS 125M, S 280M, M 498M, L 777M, XL 1119M, XXL 1523M parameters for
    64x64x4 latents, 1000 classes. Built on the meta device: no memory, no time."""
    expected = {"xs": 125, "s": 280, "m": 498, "l": 777, "xl": 1119, "xxl": 1523}
    for size, millions in expected.items():
        with torch.device("meta"):
            net = EDM2UNet(4, 64, EDM2_IMG512[size].model_channels, (1, 2, 3, 4), 3, attn_resolutions=(16, 8), label_dim=1000)
        assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(millions, abs=0.6), size
