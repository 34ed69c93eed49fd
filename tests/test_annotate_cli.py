"""`ambient-fast annotate ...` end to end on tiny PNG folders: train, annotate (fast, dense), resume after a crash,
two ranks merged, --mode single sharded over two torchrun processes, an unreadable image skipped, quality
annotations, show; and clear errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from cli_errors import user_error
from PIL import Image

from ambient_fast import cli
from ambient_fast.annotate import resume
from ambient_fast.annotate.images import load_images
from ambient_fast.annotate.synthetic import blurred, random_fields
from ambient_fast.annotations import Annotations

SIZE = 8


def write_pngs(folder, images: torch.Tensor) -> None:
    folder.mkdir(parents=True)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, array in enumerate(pixels):
        Image.fromarray(array).save(folder / f"{i:04d}.png")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("annotate_cli")
    write_pngs(root / "clean", random_fields(torch.arange(64), resolution=SIZE))
    write_pngs(root / "corrupted", blurred(random_fields(torch.arange(64, 128), resolution=SIZE), 1.0))
    (root / "corrupted" / "broken.png").write_bytes(b"\x89PNG not really")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert cli.main(["annotate", "train-classifier", "--clean", str(root / "clean"), "--corrupted",
                     str(root / "corrupted"), "--out", str(root / "c.safetensors"), "--steps", "20", "--folds", "2",
                     "--model-channels", "8", "--channel-mult", "1,2", "--batch-size", "16", "--no-figure"]) == 0
    yield root
    torch.set_num_threads(threads)


def sigma_min_args(root, out, *extra):
    """The mechanics tested here (resume, ranks, modes) do not depend on the classifier's quality: a 20-step
    classifier is at chance, so go on per sample instead of stopping (tests/test_annotate_journey.py checks the
    stop)."""
    return ["annotate", "sigma-min", "--images", str(root / "corrupted"), "--classifier", str(root / "c.safetensors"),
            "--out", str(out), "--levels", "32", "--draws", "2", "--unit", "16", "--if-uninformative", "per-sample",
            *extra]


def uninterrupted_fast(root) -> Annotations:
    """The one-process, uninterrupted fast annotation the resumed and sharded runs must reproduce."""
    out = root / "fast.safetensors"
    if not out.exists():
        assert cli.main(sigma_min_args(root, out, "--mode", "fast")) == 0
    return Annotations.load(out)


def test_fast_annotation_file_and_unreadable_image(workspace, capsys):
    out = workspace / "fast.safetensors"
    assert cli.main(sigma_min_args(workspace, out, "--mode", "fast")) == 0
    annotations = Annotations.load(out)
    assert len(annotations) == 64 and "broken.png" not in annotations.keys
    assert "skipping unreadable image broken.png" in capsys.readouterr().err
    provenance = annotations.provenance["sigma_min"]
    assert provenance["method"] == "classifier-fast" and provenance["tau"] == pytest.approx(0.45)
    assert provenance["classifier"]["config"]["model_channels"] == 8 and provenance["forwards_per_image"] <= 64
    assert not resume.parts_dir(out).exists()  # merged and cleaned up


def test_resume_after_a_crash_skips_finished_samples(workspace, monkeypatch):
    from ambient_fast.annotate import sigma_min

    out = workspace / "resumed.safetensors"
    real_fast, calls = sigma_min.sigma_min_fast, []

    def crashing(predict, images, sample_ids, **kwargs):
        calls.append(len(sample_ids))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while annotating the second unit
        return real_fast(predict, images, sample_ids, **kwargs)

    monkeypatch.setattr(sigma_min, "sigma_min_fast", crashing)
    with pytest.raises(KeyboardInterrupt):
        cli.main(sigma_min_args(workspace, out, "--mode", "fast"))
    assert not out.exists() and (resume.parts_dir(out) / "rank0.safetensors").is_file()
    calls.clear()
    monkeypatch.setattr(sigma_min, "sigma_min_fast", lambda *a, **k: (calls.append(len(a[2])), real_fast(*a, **k))[1])
    assert cli.main(sigma_min_args(workspace, out, "--mode", "fast")) == 0
    assert sum(calls) == 64 - 16  # the first unit was not redone
    assert torch.equal(Annotations.load(out).sigma_min, uninterrupted_fast(workspace).sigma_min)


def test_two_ranks_merge_to_the_single_process_result(workspace, monkeypatch):
    out = workspace / "ranks.safetensors"
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert cli.main(sigma_min_args(workspace, out, "--mode", "fast")) == 0
        assert out.exists() == (rank == 1)  # the last rank to finish merges
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert torch.equal(Annotations.load(out).sigma_min, uninterrupted_fast(workspace).sigma_min)


def test_single_mode_under_torchrun_matches_one_process(workspace, tmp_path):
    """--mode single on 2 torchrun ranks (gloo): each scores its half of the set per probed level, the pooled means
    give the one-process level; rank 0 writes the file, rank 1 writes nothing."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    alone = tmp_path / "alone.safetensors"
    assert cli.main(sigma_min_args(workspace, alone, "--mode", "single")) == 0
    out = tmp_path / "ranks.safetensors"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "ambient_fast.cli", *sigma_min_args(workspace, out, "--mode", "single", "--threads", "1")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1 is done" in result.stderr and result.stderr.count(f"wrote {out}") == 1
    sharded, single = Annotations.load(out), Annotations.load(alone)
    assert torch.equal(sharded.sample_ids, single.sample_ids) and sharded.keys == single.keys
    assert torch.equal(sharded.sigma_min, single.sigma_min) and sharded.sigma_min.unique().numel() == 1
    assert sharded.provenance == single.provenance
    assert not resume.parts_dir(out).exists()


def test_single_mode_with_rank_variables_but_no_torchrun_is_a_clear_error(workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    user_error(capsys, sigma_min_args(workspace, tmp_path / "x.safetensors", "--mode", "single"), "needs torchrun")


def test_changed_settings_do_not_mix_with_old_parts(workspace, monkeypatch):
    out = workspace / "changed.safetensors"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    cli.main(sigma_min_args(workspace, out, "--mode", "fast"))
    with pytest.raises(ValueError, match="different run"):
        cli.main(sigma_min_args(workspace, out, "--mode", "fast", "--eps", "0.1"))


def test_dense_single_quality_and_show(workspace, tmp_path, capsys):
    dense = tmp_path / "dense.safetensors"
    assert cli.main(sigma_min_args(workspace, dense, "--mode", "dense")) == 0
    single = tmp_path / "single.safetensors"
    assert cli.main(sigma_min_args(workspace, single, "--mode", "single")) == 0
    assert Annotations.load(single).sigma_min.unique().numel() == 1
    quality = tmp_path / "quality.safetensors"
    assert cli.main(["annotate", "from-quality", "--images", str(workspace / "corrupted"), "--metric", "sharpness",
                     "--fraction", "0.5", "--sigma", "0.3", "--out", str(quality)]) == 0
    assert int((Annotations.load(quality).sigma_min == 0.3).sum()) == 32
    scores = tmp_path / "scores.csv"
    scores.write_text("key,score\n" + "".join(f"{i:04d}.png,{i}\n" for i in range(64)))
    assert cli.main(["annotate", "from-quality", "--images", str(workspace / "corrupted"), "--scores", str(scores),
                     "--fraction", "0.25", "--sigma", "1", "--out", str(quality), "--force"]) == 0
    loaded = Annotations.load(quality)
    assert (loaded.sigma_min[:16] == 1).all() and (loaded.sigma_min[16:] == 0).all()
    png = tmp_path / "show.png"
    assert cli.main(["annotate", "show", str(dense), "--png", str(png)]) == 0
    assert "samples: 64" in capsys.readouterr().out
    assert Image.open(png).size[0] > 100


def test_clear_errors(workspace, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_images(tmp_path / "nowhere")
    big = tmp_path / "big"
    write_pngs(big, torch.zeros(2, 3, 16, 16))
    user_error(capsys, ["annotate", "sigma-min", "--images", str(big), "--classifier", str(workspace / "c.safetensors"),
                        "--out", str(tmp_path / "x.safetensors")], "classifier expects")
    np.save(tmp_path / "few.npy", np.arange(3.0))
    user_error(capsys, ["annotate", "from-quality", "--images", str(workspace / "corrupted"), "--scores",
                        str(tmp_path / "few.npy"), "--out", str(tmp_path / "q.safetensors")], "3 scores for 64 images")


def test_crops_pipeline_commands(workspace, tmp_path, monkeypatch):
    """train-crops -> measure-crop-size (a denoiser factory named module:function) -> sigma-max on top of a
    sigma_min file (--base keeps its sigma_min)."""
    import sys
    import types

    crops = tmp_path / "crops.safetensors"
    assert cli.main(["annotate", "train-crops", "--target", str(workspace / "clean"), "--other",
                     str(workspace / "corrupted"), "--out", str(crops), "--crop-sizes", "2,4", "--steps", "10",
                     "--batch-size", "16", "--model-channels", "8"]) == 0
    module = types.ModuleType("toy_denoisers")
    module.identity = lambda scale="1": (lambda x, sigma: x * float(scale))
    monkeypatch.setitem(sys.modules, "toy_denoisers", module)
    table = tmp_path / "table.json"
    assert cli.main(["annotate", "measure-crop-size", "--denoiser", "toy_denoisers:identity", "--denoiser-arg", "1",
                     "--images", str(workspace / "clean"), "--sigmas", "0.1,0.5", "--out", str(table)]) == 0
    assert json.loads(table.read_text())["crop"] == [2, 2]  # the identity needs no context at all
    out = tmp_path / "both.safetensors"
    base = uninterrupted_fast(workspace)
    assert cli.main(["annotate", "sigma-max", "--images", str(workspace / "corrupted"), "--classifier", str(crops),
                     "--crop-table", str(table), "--base", str(workspace / "fast.safetensors"), "--out", str(out)]) == 0
    both = Annotations.load(out)
    assert torch.equal(both.sigma_min, base.sigma_min)
    assert set(both.sigma_max.tolist()) <= {0.0, 0.5}
    assert "sigma_max" in both.provenance and "sigma_min" in both.provenance


def test_bare_cuda_means_this_ranks_gpu_under_torchrun(monkeypatch):
    from ambient_fast.annotate.cli import resolve_device

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("cuda") == torch.device("cuda") and resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # an explicit index is kept
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_retrained_classifier_under_the_same_path_does_not_mix_with_old_parts(workspace, tmp_path, monkeypatch):
    """The resume fingerprint names the classifier by its content digest, not its path."""
    import shutil

    classifier = tmp_path / "c.safetensors"
    shutil.copy(workspace / "c.safetensors", classifier)
    out = tmp_path / "out.safetensors"
    args = [*sigma_min_args(workspace, out, "--mode", "fast")]
    args[args.index("--classifier") + 1] = str(classifier)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(args) == 0 and not out.exists()  # rank 0's half is done, parts kept
    assert cli.main(["annotate", "train-classifier", "--clean", str(workspace / "clean"), "--corrupted",
                     str(workspace / "corrupted"), "--out", str(classifier), "--force", "--steps", "5", "--folds", "2",
                     "--model-channels", "8", "--channel-mult", "1,2", "--batch-size", "16", "--no-figure"]) == 0
    with pytest.raises(ValueError, match="different run"):
        cli.main(args)


def test_paper_rule_and_in_sample_scoring_are_kept_for_comparison(workspace, tmp_path):
    out = tmp_path / "paper.safetensors"
    assert cli.main(sigma_min_args(workspace, out, "--mode", "fast", "--rule", "paper", "--scoring", "in-sample")) == 0
    provenance = Annotations.load(out).provenance["sigma_min"]
    assert provenance["rule"] == "paper" and provenance["scoring"] == "in-sample" and provenance["usable_from"] is None


def test_train_classifier_with_workers_writes_the_same_classifiers(workspace, tmp_path):
    """--workers 2 trains the two folds side by side in spawned processes: the checkpoint's tensors and report are
    those of the one-at-a-time run (the module fixture's, one thread)."""
    from ambient_fast.annotate.crossfit import load_classifier_set

    out = tmp_path / "workers.safetensors"
    assert cli.main(["annotate", "train-classifier", "--clean", str(workspace / "clean"), "--corrupted",
                     str(workspace / "corrupted"), "--out", str(out), "--steps", "20", "--folds", "2",
                     "--model-channels", "8", "--channel-mult", "1,2", "--batch-size", "16", "--no-figure",
                     "--threads", "1", "--workers", "2"]) == 0
    sequential, parallel = load_classifier_set(workspace / "c.safetensors"), load_classifier_set(out)
    assert parallel.report == sequential.report and parallel.calibration == sequential.calibration
    for a, b in zip(sequential.models, parallel.models, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_uint8_images_become_nchw_contiguous():
    """[N, H, W, C] uint8 -> [N, C, H, W] in [-1, 1], NCHW in memory: a permuted view would send the classifier's
    CPU convolutions down their slow channels-last path."""
    from ambient_fast.annotate.images import from_uint8

    array = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    images = from_uint8(array)
    assert images.is_contiguous() and images.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(images.double().numpy(), array.transpose(0, 3, 1, 2) / 127.5 - 1, rtol=0, atol=1e-6)
