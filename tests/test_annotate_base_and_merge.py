"""`annotate sigma-max` without and with --base (Section 3.2: out-of-distribution images get sigma_min = inf; a base
file that does not cover the images is refused unless --allow-missing), and `annotate merge`."""
from __future__ import annotations

import json
import math

import pytest
import torch
from cli_errors import user_error
from PIL import Image

from ambient_fast import cli
from ambient_fast.annotate.synthetic import random_fields
from ambient_fast.annotations import Annotations

SIZE = 8


def write_pngs(folder, images: torch.Tensor) -> None:
    folder.mkdir(parents=True)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, array in enumerate(pixels):
        Image.fromarray(array).save(folder / f"{i:04d}.png")


@pytest.fixture(scope="module")
def crops_workspace(tmp_path_factory):
    """Target and other images, a briefly trained crops classifier and a crop(sigma) table."""
    root = tmp_path_factory.mktemp("sigma_max")
    write_pngs(root / "target", random_fields(torch.arange(16), resolution=SIZE))
    write_pngs(root / "other", random_fields(torch.arange(16, 32), resolution=SIZE).flip(-1) * 0.5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert cli.main(["annotate", "train-crops", "--target", str(root / "target"), "--other", str(root / "other"),
                     "--out", str(root / "crops.safetensors"), "--crop-sizes", "2,4", "--steps", "4",
                     "--batch-size", "8", "--model-channels", "4", "--channel-mult", "1"]) == 0
    (root / "table.json").write_text(json.dumps({"sigma": [0.1, 0.5], "crop": [2, 4]}))
    yield root
    torch.set_num_threads(threads)


def sigma_max_args(root, out, *extra):
    return ["annotate", "sigma-max", "--images", str(root / "other"), "--classifier", str(root / "crops.safetensors"),
            "--crop-table", str(root / "table.json"), "--tau", "0.0", "--out", str(out), *extra]


def test_sigma_max_without_base_makes_the_images_usable_only_below_sigma_max(crops_workspace):
    out = crops_workspace / "ood.safetensors"
    assert cli.main(sigma_max_args(crops_workspace, out)) == 0
    annotations = Annotations.load(out)
    # Section 3.2: out-of-distribution images are never noisy data (sigma_min = inf), only crops below sigma_max.
    assert torch.isinf(annotations.sigma_min).all()
    assert (annotations.sigma_max == 0.5).all()  # tau = 0: every crop size passes
    assert not annotations.usable(1.0).any() and annotations.usable(0.05).all()


def test_sigma_max_keeps_the_base_sigma_min(crops_workspace, tmp_path):
    keys = [f"{i:04d}.png" for i in range(16)]
    base = Annotations(torch.arange(16), torch.linspace(0, 1.5, 16, dtype=torch.float64), torch.zeros(16), keys=keys)
    base.save(tmp_path / "base.safetensors")
    out = tmp_path / "both.safetensors"
    assert cli.main(sigma_max_args(crops_workspace, out, "--base", str(tmp_path / "base.safetensors"))) == 0
    assert torch.equal(Annotations.load(out).sigma_min, base.sigma_min)


def test_a_base_that_misses_images_is_refused_unless_allowed(crops_workspace, tmp_path, capsys):
    keys = [f"{i:04d}.png" for i in range(16)]
    partial = Annotations(torch.arange(8), torch.full((8,), 0.4, dtype=torch.float64), torch.zeros(8), keys=keys[:8])
    partial.save(tmp_path / "partial.safetensors")
    out = tmp_path / "out.safetensors"
    user_error(capsys, sigma_max_args(crops_workspace, out, "--base", str(tmp_path / "partial.safetensors")),
               r"8 of 16 dataset samples have no annotation.*--allow-missing")
    assert not out.exists()
    assert cli.main(sigma_max_args(crops_workspace, out, "--base", str(tmp_path / "partial.safetensors"),
                                   "--allow-missing")) == 0
    assert "annotations: annotated 8 of 16 samples (8 missing -> clean, 0 extra ids ignored)" in capsys.readouterr().err
    assert Annotations.load(out).sigma_min.tolist() == [0.4] * 8 + [0.0] * 8  # the missing ones are clean


def test_merge_command(tmp_path, capsys):
    first = Annotations([0, 2], [0.0, 0.5], [0.0, 0.0], keys=["a", "c"])
    second = Annotations([1], [2.0], [0.0], keys=["b"], source=[0], sources=["synthetic"])
    first.save(tmp_path / "first.safetensors")
    second.save(tmp_path / "second.safetensors")
    out = tmp_path / "merged.safetensors"
    args = ["annotate", "merge", str(tmp_path / "first.safetensors"), str(tmp_path / "second.safetensors"),
            "--out", str(out)]
    assert cli.main(args) == 0
    assert "merged 2 files: 3 samples" in capsys.readouterr().out
    merged = Annotations.load(out)
    assert merged.sample_ids.tolist() == [0, 1, 2] and merged.sigma_min.tolist() == [0.0, 2.0, 0.5]
    user_error(capsys, args, "exists.*--force")
    assert cli.main([*args, "--force"]) == 0
    Annotations([2], [0.9], [0.0], keys=["c"]).save(tmp_path / "clash.safetensors")
    user_error(capsys, ["annotate", "merge", str(tmp_path / "first.safetensors"), str(tmp_path / "clash.safetensors"),
                        "--out", str(tmp_path / "never.safetensors")], "sample id 2")
    assert not (tmp_path / "never.safetensors").exists() and math.isfinite(merged.sigma_min.sum())


def test_annotation_outputs_are_not_overwritten_without_force(tmp_path):
    """from-quality (like sigma-max, train-crops and measure-crop-size) refuses an existing --out: an earlier
    annotation is work that a repeated command must not lose; --force overwrites."""
    import numpy as np

    from ambient_fast import cli
    from ambient_fast.annotations import Annotations

    scores = tmp_path / "scores.npy"
    np.save(scores, np.arange(10.0))
    out = tmp_path / "q.safetensors"
    args = ["annotate", "from-quality", "--scores", str(scores), "--fraction", "0.5", "--sigma", "0.3", "--out", str(out)]
    assert cli.main(args) == 0
    before = out.read_bytes()
    assert cli.main([*args[:-2], "--sigma", "0.7", "--out", str(out)]) == 2
    assert out.read_bytes() == before
    assert cli.main([*args[:-2], "--sigma", "0.7", "--out", str(out), "--force"]) == 0
    assert float(Annotations.load(out).sigma_min.max()) == 0.7
