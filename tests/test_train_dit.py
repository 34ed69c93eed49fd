"""The DiT in the trainer: patch masking (network.mask_ratio: the loss over the kept patches, float64 references
for both objectives, no host read, one compiled graph) and caption embeddings of a shard set fed to its caption
branch (recorded in the checkpoint, rebuilt by `generate`)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo
from gpu_guards import no_sync_after_first_step
from test_networks_dit import randomise
from test_no_host_sync import no_host_reads

from ambient_fast import precond
from ambient_fast.data import TensorDataset
from ambient_fast.data.dataset import FileDataset
from ambient_fast.data.streaming import ShardDataset, write_shards
from ambient_fast.networks import DiT, Precond, Velocity
from ambient_fast.networks.dit_mask import pixel_keep_mask, random_keep
from ambient_fast.reference import ambient_loss_reference, flow_loss_reference
from ambient_fast.sampling import load_model
from ambient_fast.train import loop, preset, train
from ambient_fast.train.config import ConfigError
from ambient_fast.train.flow_step import FlowTrainingStep
from ambient_fast.train.loop import AUTOCAST, TrainingStep, compile_step

QUIET = dict(log=lambda *_: None)


def dit(label_dim=0, caption_dim=0):
    torch.manual_seed(0)
    return randomise(DiT(3, 8, size="dit-tiny", label_dim=label_dim, caption_dim=caption_dim))


def case(seed=0, batch=4):
    generator = torch.Generator().manual_seed(seed)
    x_tn = torch.randn(batch, 3, 8, 8, generator=generator)
    sigma_tn = torch.tensor([0.0, 0.2, 0.0, 1.0])[:batch]
    sigma_t = sigma_tn * 1.3 + torch.exp(torch.randn(batch, generator=generator) - 0.5)
    x_t = x_tn + (sigma_t**2 - sigma_tn**2).sqrt().view(-1, 1, 1, 1) * torch.randn(x_tn.shape, generator=generator)
    keep = random_keep(batch, 16, mask_ratio=0.75, generator=torch.Generator().manual_seed(seed + 1))
    return x_t, x_tn, sigma_t, sigma_tn, keep


def kept(tensor, keep):
    """[B, kept pixels]: the pixels of the kept patches (every sample keeps as many)."""
    mask = pixel_keep_mask(keep, grid=(4, 4), patch_size=2).bool().expand_as(tensor)
    return tensor[mask].view(tensor.shape[0], -1)


@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_the_masked_step_is_the_loss_over_the_kept_patches(objective):
    """In float64 from the network's own output: the per-sample loss on the kept patches' pixels alone (eq. 2.2 / D.1,
    EDM or flow form), batch mean; the dropped patches get no gradient."""
    x_t, x_tn, sigma_t, sigma_tn, keep = case()
    net = dit()
    if objective == "edm":
        step = TrainingStep(Precond(net), precision="fp32")
        raw, _ = step.precond.raw(x_t, sigma_t, None, keep=keep)
        s, view = sigma_t.double(), (-1, 1, 1, 1)
        denoised = (precond.c_skip(s, 0.5).view(view) * x_t.double() + precond.c_out(s, 0.5).view(view) * raw.double())
        expected = ambient_loss_reference(kept(denoised, keep), kept(x_t.double(), keep), kept(x_tn.double(), keep),
                                          s, sigma_tn.double()).mean()
    else:
        step = FlowTrainingStep(Velocity(net), precision="fp32", autocast_dtypes=AUTOCAST)
        t = sigma_t.double() / (1 + sigma_t.double())
        z = (1 - t).view(-1, 1, 1, 1) * x_t.double()
        v = step.velocity.raw(z.float(), t.float(), None, keep=keep).double()
        expected = flow_loss_reference(kept(v, keep), kept(z, keep), kept(x_tn.double(), keep), t,
                                       sigma_tn.double()).mean()
    loss = step(x_t, x_tn, sigma_t, sigma_tn, None, keep=keep)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)
    assert 0 < float(loss.detach()) < 100


def test_the_masked_flow_step_compiles_as_one_graph():
    torch._dynamo.reset()
    x_t, x_tn, sigma_t, sigma_tn, keep = case(seed=2)
    step = FlowTrainingStep(Velocity(dit()), precision="fp32", autocast_dtypes=AUTOCAST)
    explained = torch._dynamo.explain(step)(x_t, x_tn, sigma_t, sigma_tn, None, keep=keep)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    torch._dynamo.reset()
    eager = step(x_t, x_tn, sigma_t, sigma_tn, None, keep=keep)
    compiled = compile_step(step, backend="aot_eager")(x_t, x_tn, sigma_t, sigma_tn, None, keep=keep)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=0)
    torch._dynamo.reset()


def dit_config(**overrides):
    return preset("dit-tiny-cpu", total_steps=3, batch_size=8, log_every=1, checkpoint_every=3, snapshot_every=0,
                  lr_rampup_steps=0, cpu_threads=1, **overrides)


def test_masked_training_reads_nothing_and_resumes_with_the_same_patches(tmp_path, monkeypatch):
    images = torch.linspace(-1, 1, 8).expand(16, 3, 8, 8) * torch.linspace(0.2, 1, 16).view(16, 1, 1, 1)
    dataset = TensorDataset(images.contiguous())
    config = dit_config(objective="flow", **{"network.mask_ratio": 0.5})
    step_call = loop.Stepper.__call__

    def guarded_step(self, step, batch):
        with no_host_reads():
            step_call(self, step, batch)

    monkeypatch.setattr(loop.Stepper, "__call__", guarded_step)
    messages = []
    whole = train(config, run_dir=tmp_path / "whole", dataset=dataset, log=messages.append)["losses"]
    assert any("50% of patches masked" in m for m in messages)
    train(config.replace(checkpoint_every=1), run_dir=tmp_path / "split", dataset=dataset, stop_after=1, **QUIET)
    rest = train(config.replace(checkpoint_every=1), run_dir=tmp_path / "split", dataset=dataset, **QUIET)["losses"]
    assert np.allclose(rest, whole[1:], rtol=1e-6, atol=0)
    unmasked = train(dit_config(objective="flow"), run_dir=tmp_path / "unmasked", dataset=dataset, **QUIET)["losses"]
    assert unmasked[0] != whole[0]
    with pytest.raises(ConfigError, match="mask_ratio"):
        preset("tiny-cpu", **{"network.mask_ratio": 0.5})
    with pytest.raises(ConfigError, match="mask_ratio"):
        dit_config(**{"network.mask_ratio": 1.0})


def test_caption_embeddings_of_a_shard_set_reach_the_dit(tmp_path, monkeypatch):
    from test_train_resume import write_png_dataset

    source = FileDataset(write_png_dataset(tmp_path / "png", n=12, size=8))
    rng = np.random.default_rng(0)
    embedding = rng.standard_normal((12, 3, 5)).astype(np.float32)
    mask = np.ones((12, 3), bool)
    mask[:, 2] = False
    write_shards(source, tmp_path / "shards", captions=(embedding, mask), samples_per_shard=6, report=lambda _: None)
    seen = []
    forward = DiT.forward

    def recording(self, x_in, c_noise, class_labels=None, **kwargs):
        seen.append(kwargs.get("caption"))
        return forward(self, x_in, c_noise, class_labels, **kwargs)

    monkeypatch.setattr(DiT, "forward", recording)
    messages = []
    train(dit_config(), run_dir=tmp_path / "run", dataset=ShardDataset(tmp_path / "shards"), log=messages.append)
    assert any("captions: 5-wide embeddings" in m for m in messages)
    assert len(seen) == 3 and all(c is not None and c.shape == (8, 3, 5) for c in seen)
    rows = {tuple(np.round(r, 5)) for r in embedding[:, 0]}
    assert all(tuple(np.round(r, 5)) in rows for r in seen[0][:, 0].numpy())  # the samples' own embeddings
    model, meta = load_model(tmp_path / "run", ema_std="raw")
    assert meta["caption_dim"] == 5 and model.net.caption is not None
    without = preset("dit-tiny-cpu", **{"network.captions": False})
    assert without.network.captions is False


def captioned_shards(root, n=16, labels=True):
    """A shard set of n 8x8 PNGs with 5-wide caption embeddings (3 tokens, the last one padding) and, optionally,
    labels 0..2 from dataset.json; returns (path, embedding, mask)."""
    import json

    from test_train_resume import write_png_dataset

    folder = write_png_dataset(root / "png", n=n, size=8)
    if labels:
        (folder / "dataset.json").write_text(json.dumps(
            {"labels": [[f"img{i:08d}.png", i % 3] for i in range(n)]}))
    rng = np.random.default_rng(0)
    embedding = rng.standard_normal((n, 3, 5)).astype(np.float32)
    mask = np.ones((n, 3), bool)
    mask[:, 2] = False
    write_shards(FileDataset(folder), root / "shards", captions=(embedding, mask), samples_per_shard=8,
                 report=lambda _: None)
    return root / "shards", embedding, mask


def test_condition_dropout_gives_the_drawn_samples_the_null_condition_without_host_reads_and_resumes(tmp_path,
                                                                                                     monkeypatch):
    """network.condition_dropout = 0.5: exactly the samples drawn by dropped_samples from the slice's seed see an
    empty caption and a zero label vector (the others their own), nothing is read from the device in a step, a
    resumed run computes the same losses, and the default 0 leaves captions and labels as they were."""
    from ambient_fast.train.condition_dropout import dropped_samples
    from ambient_fast.train.feed import chunk_seed

    shards, _, mask = captioned_shards(tmp_path)
    dataset = ShardDataset(shards)
    seen = []
    forward = DiT.forward

    def recording(self, x_in, c_noise, class_labels=None, **kwargs):
        seen.append((class_labels, kwargs.get("caption_mask")))
        return forward(self, x_in, c_noise, class_labels, **kwargs)

    step_call = loop.Stepper.__call__

    def guarded_step(self, step, batch):
        with no_host_reads():
            step_call(self, step, batch)

    monkeypatch.setattr(DiT, "forward", recording)
    monkeypatch.setattr(loop.Stepper, "__call__", guarded_step)
    config = dit_config(objective="flow", **{"network.condition_dropout": 0.5})
    messages = []
    whole = train(config, run_dir=tmp_path / "whole", dataset=dataset, log=messages.append)["losses"]
    assert any("condition dropout 0.5" in m for m in messages)
    for step, (labels, caption_mask) in enumerate(seen):
        drop = dropped_samples(8, probability=0.5, seed=chunk_seed(config.seed, step, 0) + 3, device="cpu")
        assert torch.equal(~caption_mask.any(dim=1), drop)  # every real caption keeps its first token
        assert torch.equal(caption_mask[~drop], torch.from_numpy(mask[: int((~drop).sum())]))
        assert labels.shape == (8, 3) and torch.equal(labels.sum(dim=1) == 0, drop)
    assert 0 < sum(int((~m.any(dim=1)).sum()) for _, m in seen) < 24
    seen.clear()
    train(config.replace(checkpoint_every=1), run_dir=tmp_path / "split", dataset=dataset, stop_after=1, **QUIET)
    rest = train(config.replace(checkpoint_every=1), run_dir=tmp_path / "split", dataset=dataset, **QUIET)["losses"]
    assert rest == whole[1:]
    seen.clear()
    monkeypatch.setattr(loop.Stepper, "__call__", step_call)  # the DiT's F.one_hot of int labels reads on a CPU
    plain = train(dit_config(objective="flow"), run_dir=tmp_path / "plain", dataset=dataset, **QUIET)["losses"]
    assert all(labels.dim() == 1 and torch.equal(m, torch.from_numpy(mask[:8])) for labels, m in seen)
    assert plain != whole


def test_condition_dropout_is_checked():
    with pytest.raises(ConfigError, match="condition_dropout"):
        dit_config(**{"network.condition_dropout": 1.0})
    with pytest.raises(ConfigError, match="no condition to drop"):
        train(dit_config(**{"network.condition_dropout": 0.1}), run_dir="/nonexistent/unused",
              dataset=TensorDataset(torch.zeros(8, 3, 8, 8)), **QUIET)


@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_the_step_with_dropped_conditions_is_one_graph_with_eager_gradients(objective):
    """The Stepper hands the step float label vectors and a caption mask with empty rows: still one graph."""
    from test_train_step import assert_one_graph_with_eager_gradients

    from ambient_fast.train.condition_dropout import drop_conditions

    torch._dynamo.reset()
    x_t, x_tn, sigma_t, sigma_tn, keep = case(seed=3)
    net = dit(label_dim=3, caption_dim=5)
    generator = torch.Generator().manual_seed(4)
    condition = {"caption": torch.randn(4, 3, 5, generator=generator),
                 "caption_mask": torch.ones(4, 3, dtype=torch.bool)}
    labels, condition = drop_conditions(torch.tensor([0, 1, 2, 1]), condition, torch.tensor([True, False, False, True]),
                                        label_dim=3)
    step = (FlowTrainingStep(Velocity(net, label_dim=3), precision="fp32", autocast_dtypes=AUTOCAST)
            if objective == "flow" else TrainingStep(Precond(net, label_dim=3), precision="fp32"))
    assert_one_graph_with_eager_gradients(step, (x_t, x_tn, sigma_t, sigma_tn, labels, condition["caption"],
                                                 condition["caption_mask"], keep))
    torch._dynamo.reset()


@pytest.mark.gpu
def test_on_cuda_the_compiled_class_conditional_step_with_condition_dropout_never_synchronises(tmp_path, monkeypatch):
    """Skipped without CUDA. A class-conditional DiT, objective flow, network.condition_dropout 0.5 (the draw and
    the null labels made on the device), Inductor fullgraph: after the first (compiling) step no step synchronises
    (torch.cuda.set_sync_debug_mode "error"), and the losses are finite."""
    from test_train import smooth_images

    no_sync_after_first_step(monkeypatch)
    torch._dynamo.reset()
    config = preset("dit-tiny-cpu", objective="flow", compile=True, total_steps=4, batch_size=16, log_every=4,
                    checkpoint_every=4, snapshot_every=0, lr_rampup_steps=0, **{"network.condition_dropout": 0.5})
    dataset = TensorDataset(smooth_images(32, size=16), labels=torch.arange(32) % 3)
    result = train(config, run_dir=tmp_path, dataset=dataset, device="cuda", **QUIET)
    torch._dynamo.reset()
    assert len(result["losses"]) == 4 and np.isfinite(result["losses"]).all()
