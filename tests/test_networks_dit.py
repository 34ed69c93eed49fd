"""The MicroDiT-style text-conditioned DiT: shapes, parameter counts of every preset, adaLN-zero start, conditioning,
patch masking, expert-choice routing, torch.compile without graph breaks, and learning."""
from __future__ import annotations

import pytest
import torch

from ambient_fast import precond
from ambient_fast.networks import DIT_PRESETS, DiT, Precond
from ambient_fast.networks.dit_ffn import ExpertChoiceMoE
from ambient_fast.networks.dit_mask import kept_count, patch_keep_mask, pixel_keep_mask, random_keep
from ambient_fast.networks.dit_presets import DiTSize
from ambient_fast.data import TensorDataset
from ambient_fast.train import preset, train
from ambient_fast.train.build import build_network, parameter_count
from test_networks_unet import one_thread  # noqa: F401  (autouse fixture: one thread)

CAPTION_DIM = DIT_PRESETS["dit-tiny"].caption_dim


def tiny(label_dim: int = 10, **kwargs) -> DiT:
    torch.manual_seed(0)
    return DiT(4, 16, size="dit-tiny", label_dim=label_dim, **kwargs)


def randomise(net: torch.nn.Module) -> torch.nn.Module:
    """Give the zero-initialised weights (adaLN-zero, output layers) values, so that every path carries signal."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return net


def inputs(batch: int = 3, length: int = 6, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 16, 16, generator=generator)
    caption = torch.randn(batch, length, CAPTION_DIM, generator=generator)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[:, length - 2:] = False  # padding at the end of every caption
    return x, torch.randn(batch, generator=generator) * 0.5, torch.arange(batch) % 10, caption, mask


def expected_parameters(size: DiTSize, *, img_channels: int, label_dim: int, caption_dim: int) -> int:
    """Closed-form count from the layer shapes (written independently of the modules)."""
    d, p, e = size.dim, size.patch_size, size.num_experts
    mixer = size.mixer_dim if size.mixer_depth else d
    total = img_channels * p * p * d + d  # patch embedding (conv + bias)
    total += 256 * d + d + d * d + d  # noise MLP on 256 Fourier features
    total += label_dim * d  # label embedding, no bias
    if caption_dim:
        mlp = lambda n_in: n_in * d + d + d + d * d + d  # noqa: E731  Linear, LN weight, Linear
        total += mlp(caption_dim) + mlp(d)  # token projection, pooled projection
        total += 2 * d + 4 * d * d + 3 * d * size.ffn_width(d, 4.0, moe=False)  # refinement block (2 LN, attn, SwiGLU)
    if mixer != d:
        total += d + d * mixer + mixer + mixer * d  # LN + Linear into and out of the mixer

    def block(w: int, attn: int, ratio: float, moe: bool) -> int:
        n = 4 * w * attn + 6 * w * d + 6 * w  # q, k, v, out projections; adaLN modulation from dim
        if caption_dim:
            n += w + w * w + 2 * w * d + w * w  # LN weight, q, kv from the dim-wide caption tokens, out
        hidden = size.ffn_width(w, ratio, moe=moe)
        return n + (e * 2 * w * hidden + w * e if moe else 3 * w * hidden)

    total += sum(block(mixer, mixer, size.mixer_mlp_ratio, size.is_moe(i, size.mixer_depth, last_dense=False))
                 for i in range(size.mixer_depth))
    total += sum(block(d, size.qkv_width(i), size.mlp_ratio_at(i), size.is_moe(i, size.depth, last_dense=True))
                 for i in range(size.depth))
    return total + 2 * d * d + 2 * d + d * p * p * img_channels + p * p * img_channels  # final adaLN + linear


@pytest.mark.parametrize("name", sorted(DIT_PRESETS))
def test_parameter_counts_of_every_preset_on_the_meta_device(name):
    size = DIT_PRESETS[name]
    counts = []
    for label_dim, caption_dim in ((0, size.caption_dim), (1000, 0)):  # text-conditioned; class-conditional
        with torch.device("meta"):  # shapes only: nothing allocated, fast even at 1.17B
            net = DiT(4, 64 if size.dim > 64 else 16, size=name, label_dim=label_dim, caption_dim=caption_dim)
        assert all(p.is_meta for p in net.parameters())
        counts.append(parameter_count(net))
        assert counts[-1] == expected_parameters(size, img_channels=4, label_dim=label_dim, caption_dim=caption_dim)
    count = counts[0]
    if name == "microdit-1.1b":
        # MicroDiffusion README: "a 1.16 billion parameter sparse transformer"; Ambient-o F.3: "~1.1B"
        assert count == pytest.approx(1.16e9, rel=0.01)
        assert sum(isinstance(b.ffn, ExpertChoiceMoE) for b in net.blocks) == 13  # every other one, not the last
        assert [b.attn.qkv.out_features // 3 for b in net.blocks][::9] == [512, 768, 896, 1024]  # layer-wise widths
    if name == "dit-tiny":
        assert count < 1_000_000


def test_shapes_zero_start_and_the_precond_protocol():
    net = tiny()
    x, c_noise, labels, caption, mask = inputs()
    out = net(x, c_noise, labels, caption=caption, caption_mask=mask)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.abs().max() == 0  # the final layer starts at zero
    wrapped = Precond(tiny(caption_dim=0), label_dim=10)  # the trainer's form: no caption branch
    sigma = torch.full((3,), 0.7)
    torch.testing.assert_close(wrapped(x, sigma, labels), precond.c_skip(sigma[0]) * x)  # D = c_skip x at start
    with pytest.raises(ValueError, match="caption"):
        wrapped.net(x, c_noise, labels, caption=caption)
    with pytest.raises(ValueError, match=r"\[B, L, 32\]"):
        net(x, c_noise, labels, caption=caption[..., :8])
    with pytest.raises(ValueError, match="class-conditional"):
        net(x, c_noise, None)
    with pytest.raises(ValueError, match="expected input"):
        net(x[:, :, :8], c_noise, labels)


def test_adaln_zero_makes_every_block_start_as_the_identity():
    net = tiny()
    seen = []
    for block in (*net.mixer, *net.blocks):
        block.register_forward_hook(lambda _m, args, out: seen.append(torch.equal(args[0], out)))
    x, c_noise, labels, caption, mask = inputs()
    net(x, c_noise, labels, caption=caption, caption_mask=mask)
    assert seen == [True] * (len(net.mixer) + len(net.blocks)) and len(seen) == 6
    randomise(net)
    seen.clear()
    net(x, c_noise, labels, caption=caption, caption_mask=mask)
    assert not any(seen)  # the hooks can fail


def test_caption_noise_level_and_label_reach_the_output():
    net = randomise(tiny())
    x, c_noise, labels, caption, mask = inputs()
    base = net(x, c_noise, labels, caption=caption, caption_mask=mask)

    def differs(**changes):
        args = dict(x_in=x, c_noise=c_noise, class_labels=labels, caption=caption, caption_mask=mask) | changes
        return (net(**args) - base).abs().amax(dim=(1, 2, 3))  # per sample

    edited = caption.clone()
    edited[1, 0] += 1.0  # a real token of sample 1
    change = differs(caption=edited)
    assert change[1] > 1e-3 and change[0] == 0 and change[2] == 0  # only that sample's output moves
    assert differs(c_noise=c_noise + 0.5).min() > 1e-3
    assert differs(class_labels=(labels + 1) % 10).min() > 1e-3
    dropped = mask.clone()
    dropped[:, 0] = False
    assert differs(caption_mask=dropped).min() > 1e-3
    padded = caption.clone()
    padded[:, -2:] = torch.randn(3, 2, CAPTION_DIM)  # values under the mask's padding are never read
    torch.testing.assert_close(net(x, c_noise, labels, caption=padded, caption_mask=mask), base, rtol=0, atol=1e-6)
    # an empty caption (all padding: CFG's null caption) is the network without text, and differs from a real one
    empty = net(x, c_noise, labels, caption=caption, caption_mask=torch.zeros_like(mask))
    torch.testing.assert_close(empty, net(x, c_noise, labels), rtol=0, atol=1e-6)
    assert (empty - base).abs().max() > 1e-3


def test_patch_mask_is_seeded_exact_and_zero_at_dropped_patches():
    assert kept_count(256, 0.75) == 64 and kept_count(100, 0.9) == 10 and kept_count(4, 0.99) == 1
    with pytest.raises(ValueError, match="mask_ratio"):
        kept_count(64, 1.0)
    keep = random_keep(3, 64, mask_ratio=0.75, generator=torch.Generator().manual_seed(5))
    assert keep.shape == (3, 16) and keep.dtype == torch.int64
    assert torch.equal(keep, random_keep(3, 64, mask_ratio=0.75, generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(keep, random_keep(3, 64, mask_ratio=0.75, generator=torch.Generator().manual_seed(6)))
    assert all(len(set(row.tolist())) == 16 and row.tolist() == sorted(row.tolist()) for row in keep)
    assert not torch.equal(keep[0], keep[1])  # each sample its own subset
    assert patch_keep_mask(keep, 64).sum(1).tolist() == [16, 16, 16]

    net = randomise(tiny())
    tokens = []
    net.blocks[0].register_forward_pre_hook(lambda _m, args: tokens.append(args[0].shape[1]))
    net.mixer[0].register_forward_pre_hook(lambda _m, args: tokens.append(args[0].shape[1]))
    x, c_noise, labels, caption, mask = inputs()
    out = net(x, c_noise, labels, caption=caption, caption_mask=mask, keep=keep)
    assert tokens == [64, 16]  # the mixer sees all 8 x 8 patches, the backbone the 16 kept ones
    pixels = pixel_keep_mask(keep, grid=net.grid, patch_size=2)
    assert pixels.shape == (3, 1, 16, 16) and pixels.sum() == 3 * 16 * 4
    assert torch.equal(out.abs().amax(dim=1, keepdim=True) > 0, pixels.bool())  # zero exactly at dropped patches
    # with a patch mixer, the kept patches see the dropped ones; an edit of a dropped patch reaches them
    row, col = divmod(int(patch_keep_mask(keep, 64)[0].logical_not().nonzero()[0]), 8)
    edited = x.clone()
    edited[0, :, 2 * row:2 * row + 2, 2 * col:2 * col + 2] += 1.0
    assert (net(edited, c_noise, labels, caption=caption, caption_mask=mask, keep=keep) - out)[0].abs().max() > 1e-4


def _moe_reference(moe: ExpertChoiceMoE, x: torch.Tensor) -> torch.Tensor:
    """y_t = sum over experts e that chose t of P[t, e] FFN_e(x_t), one sample and one expert at a time, float64."""
    x = x.double()
    probs = (x @ moe.gate.weight.double().t()).softmax(-1)  # [B, T, E]
    k = moe.tokens_per_expert(x.shape[1])
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for e in range(moe.num_experts):
            for t in probs[b, :, e].topk(k).indices.tolist():
                hidden = torch.nn.functional.gelu(x[b, t] @ moe.w1[e].double())
                out[b, t] += probs[b, t, e] * (hidden @ moe.w2[e].double())
    return out


def test_expert_choice_routing_matches_the_formula_and_conserves_tokens():
    torch.manual_seed(0)
    moe = ExpertChoiceMoE(8, 12, num_experts=4, capacity=2.0)
    x = torch.randn(2, 10, 8)
    assert moe.tokens_per_expert(10) == 5  # capacity * T / E
    torch.testing.assert_close(moe(x).double(), _moe_reference(moe, x), rtol=1e-5, atol=1e-6)
    weight, index = moe.route(x)
    assert weight.shape == index.shape == (2, 4, 5)  # E * k = capacity * T slots filled
    chosen = torch.zeros(2, 10).scatter_add(1, index.flatten(1), weight.flatten(1))
    assert (chosen <= 1 + 1e-6).all()  # a token's weights are a part of its router distribution
    # capacity = E: every expert takes every token, the weights sum to 1, and it is the dense mixture of experts
    full = ExpertChoiceMoE(8, 12, num_experts=4, capacity=4.0)
    weight, index = full.route(x)
    torch.testing.assert_close(torch.zeros(2, 10).scatter_add(1, index.flatten(1), weight.flatten(1)), torch.ones(2, 10))
    torch.testing.assert_close(full(x).double(), _moe_reference(full, x), rtol=1e-5, atol=1e-6)


def test_compiles_as_one_graph():
    net = randomise(tiny()).eval()
    x, c_noise, labels, caption, mask = inputs()
    keep = random_keep(3, 64, mask_ratio=0.5, generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)  # fullgraph: any graph break raises
    for kwargs in (dict(keep=keep), {}):
        torch.testing.assert_close(compiled(x, c_noise, labels, caption=caption, caption_mask=mask, **kwargs),
                                   net(x, c_noise, labels, caption=caption, caption_mask=mask, **kwargs))


def test_training_steps_on_masked_patches_reduce_the_loss():
    """EDM loss on the kept patches only (the MicroDiffusion recipe: mean over kept pixels), 50% masking."""
    net = tiny()
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 4, 16, 16, generator=generator).cumsum(-1) * 0.2  # smooth, learnable structure
    caption, labels = torch.randn(8, 5, CAPTION_DIM, generator=generator), torch.arange(8) % 10
    sigma = (torch.randn(8, generator=generator) * 1.2 - 1.2).exp()
    noise = torch.randn(x0.shape, generator=generator)
    x_t = x0 + sigma.view(-1, 1, 1, 1) * noise

    def loss(keep=None):
        s = sigma.view(-1, 1, 1, 1)
        raw = net(precond.c_in(s) * x_t, precond.c_noise(sigma), labels, caption=caption, keep=keep)
        per_element = precond.edm_weight(s) * (precond.c_skip(s) * x_t + precond.c_out(s) * raw - x0) ** 2
        if keep is None:
            return per_element.mean()
        kept = pixel_keep_mask(keep, grid=net.grid, patch_size=2)
        return ((per_element * kept).sum((1, 2, 3)) / (kept.sum((1, 2, 3)) * 4)).mean()

    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    with torch.no_grad():
        before = loss().item()
    for step in range(40):
        keep = random_keep(8, 64, mask_ratio=0.5, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss(keep).backward()
        optimizer.step()
    with torch.no_grad():
        after = loss().item()
    assert after < 0.7 * before, (before, after)


def test_trainer_config_selects_the_dit():
    config = preset("dit-tiny-cpu")
    assert config.network.arch == "dit" and config.network.dit_size == "dit-tiny"
    net = build_network(config.network, img_channels=4, img_resolution=16, label_dim=10, seed=3)
    again = build_network(config.network, img_channels=4, img_resolution=16, label_dim=10, seed=3)
    assert isinstance(net, DiT) and net.caption is None and net.label_dim == 10
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    big = preset("microdit-1.1b")
    assert big.network.dit_size == "microdit-1.1b" and big.ref_lr == 2.4e-4 and big.batch_size == 2048
    with pytest.raises(ValueError, match="network.dit_size must be one of"):
        preset("dit-tiny-cpu", **{"network.dit_size": "dit-huge"})


def test_the_trainer_trains_the_dit_preset(tmp_path):
    images = torch.linspace(-1, 1, 16).expand(16, 3, 16, 16) * torch.linspace(0.2, 1, 16).view(16, 1, 1, 1)
    config = preset("dit-tiny-cpu", total_steps=3, batch_size=8, log_every=1, checkpoint_every=3, snapshot_every=3,
                    cpu_threads=1)
    messages = []
    losses = train(config, run_dir=tmp_path, dataset=TensorDataset(images.contiguous()), log=messages.append)["losses"]
    assert len(losses) == 3 and all(0 < loss < 10 for loss in losses)
    assert any("network: dit, 0.38M parameters" in m for m in messages)


@pytest.mark.gpu
def test_on_cuda_bf16_and_inductor_agree_with_fp32():
    """Skipped without CUDA. MicroDiT_Tiny_2 (200M) on 4x32x32 latents with 75% masking: bf16 autocast within 5%
    (relative L2) of fp32, backward finite; dit-tiny compiled by Inductor (fullgraph) matches eager."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    net = randomise(DiT(4, 32, size="microdit-tiny")).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(8, 4, 32, 32, device=device, generator=generator)
    caption = torch.randn(8, 77, 1024, device=device, generator=generator)
    mask = torch.arange(77, device=device) < torch.randint(1, 78, (8, 1), device=device, generator=generator)
    keep = random_keep(8, 256, mask_ratio=0.75, device=device)
    c_noise = torch.randn(8, device=device, generator=generator) * 0.5
    reference = net(x, c_noise, caption=caption, caption_mask=mask, keep=keep)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = net(x, c_noise, caption=caption, caption_mask=mask, keep=keep)
    assert (low.float() - reference).norm() / reference.norm() < 0.05
    low.float().square().mean().backward()
    assert all(p.grad is None or p.grad.isfinite().all() for p in net.parameters())

    small = randomise(tiny()).to(device).eval()
    x, c_noise, labels, caption, mask = (t.to(device) for t in inputs())
    torch._dynamo.reset()
    compiled = torch.compile(small, fullgraph=True)
    torch.testing.assert_close(compiled(x, c_noise, labels, caption=caption, caption_mask=mask),
                               small(x, c_noise, labels, caption=caption, caption_mask=mask), rtol=1e-2, atol=1e-3)
