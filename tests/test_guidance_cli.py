"""`ambient-fast generate` for caption-conditioned runs: --captions (a file of embeddings or a shard set) and
classifier-free --guidance, and the one-line refusals (captions missing, unwanted, of the wrong width or too few;
guidance for a run that never trained the null condition)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_errors import user_error
from safetensors.torch import save_file
from test_train_dit import QUIET, captioned_shards, dit_config

import ambient_fast.sampling as sampling
from ambient_fast import cli
from ambient_fast.data import TensorDataset
from ambient_fast.data.streaming import ShardDataset
from ambient_fast.networks import DiT
from ambient_fast.train import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A captioned, class-conditional flow DiT trained with condition dropout 0.3, one without dropout, and a
    plain DiT without captions (3 steps each), plus caption files."""
    root = tmp_path_factory.mktemp("guidance_cli")
    shards, embedding, mask = captioned_shards(root)
    dataset = ShardDataset(shards)
    threads = torch.get_num_threads()
    try:
        train(dit_config(objective="flow", **{"network.condition_dropout": 0.3}), run_dir=root / "dropout",
              dataset=dataset, **QUIET)
        train(dit_config(), run_dir=root / "plain", dataset=dataset, **QUIET)
        train(dit_config(), run_dir=root / "uncaptioned", dataset=TensorDataset(torch.zeros(8, 3, 8, 8)), **QUIET)
    finally:
        torch.set_num_threads(threads)
    np.savez(root / "prompts.npz", embedding=embedding[:3], mask=mask[:3])
    save_file({"embedding": torch.from_numpy(embedding[:2]), "mask": torch.from_numpy(mask[:2])},
              root / "prompts.safetensors")
    np.save(root / "wide.npy", np.zeros((3, 2, 7), np.float32))
    return root


def generate(run, *extra, out):
    return cli.main(["generate", str(run), "--steps", "2", "--device", "cpu", "--cpu-threads", "1", "--npz",
                     str(out), *map(str, extra)])


def test_guided_generation_feeds_the_captions_and_their_null_in_one_batch(runs, tmp_path, monkeypatch, capsys):
    seen, guidances = [], []
    forward, classifier_free = DiT.forward, sampling.classifier_free

    def recording(self, x_in, c_noise, class_labels=None, **kwargs):
        seen.append(kwargs.get("caption_mask"))
        return forward(self, x_in, c_noise, class_labels, **kwargs)

    monkeypatch.setattr(DiT, "forward", recording)
    monkeypatch.setattr(sampling, "classifier_free",
                        lambda m, **k: guidances.append(k["guidance"]) or classifier_free(m, **k))
    threads = torch.get_num_threads()
    try:
        assert generate(runs / "dropout", "--captions", runs / "prompts.npz", "--guidance", 2.5, "--class-label", 1,
                        out=tmp_path / "guided.npz") == 0
        assert "guidance 2.5 (classifier-free), captions from" in capsys.readouterr().out
        assert guidances == [2.5] and all(m.shape == (6, 3) for m in seen)  # one forward of 2 x 3 samples
        real = torch.tensor([[True, True, False]] * 3)  # captioned_shards: the third token is padding
        assert all(torch.equal(m[:3], real) and not m[3:].any() for m in seen)  # the captions, then their null
        seen.clear()
        assert generate(runs / "dropout", "--captions", runs / "prompts.npz", "--class-label", 1,
                        out=tmp_path / "unguided.npz") == 0
        assert all(m.shape == (3, 3) for m in seen)
        assert generate(runs / "dropout", "--captions", runs / "prompts.safetensors", out=tmp_path / "st.npz") == 0
        assert generate(runs / "plain", "--captions", runs / "shards", "--num", 4,
                        out=tmp_path / "shards.npz") == 0
    finally:
        torch.set_num_threads(threads)
    guided, unguided = (np.load(tmp_path / f"{name}.npz")["samples"] for name in ("guided", "unguided"))
    assert guided.shape == unguided.shape == (3, 3, 8, 8) and np.isfinite(guided).all()
    assert np.abs(guided - unguided).max() > 1e-3
    assert np.load(tmp_path / "st.npz")["samples"].shape[0] == 2  # one sample per caption by default
    assert np.load(tmp_path / "shards.npz")["samples"].shape[0] == 4


def test_generate_refuses_what_does_not_fit_the_run(runs, tmp_path, capsys):
    npz = runs / "prompts.npz"
    user_error(capsys, ["generate", runs / "dropout", "--device", "cpu"], r"caption-conditioned.*--captions")
    user_error(capsys, ["generate", runs / "uncaptioned", "--captions", npz, "--device", "cpu"], "no caption branch")
    user_error(capsys, ["generate", runs / "dropout", "--captions", runs / "wide.npy", "--device", "cpu"],
               r"7 wide.*caption_dim=5")
    user_error(capsys, ["generate", runs / "dropout", "--captions", npz, "--num", 5, "--device", "cpu"],
               r"3 captions for --num 5")
    user_error(capsys, ["generate", runs / "dropout", "--captions", tmp_path / "missing.npz", "--device", "cpu"],
               "cannot read")
    user_error(capsys, ["generate", runs / "plain", "--captions", npz, "--guidance", 2, "--device", "cpu"],
               "condition_dropout")
