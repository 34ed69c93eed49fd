"""The CLI journey of the README: a folder of images and the list of those the user trusts -> annotations for the
whole folder -> a trained model -> samples, in four commands; and the refusal to mislead when the classifier
cannot tell the sets apart (two samples of one distribution)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_errors import user_error

from ambient_fast import cli
from ambient_fast.annotate.synthetic import blurred, random_fields
from ambient_fast.annotations import Annotations

Image = pytest.importorskip("PIL.Image")
SIZE = 8


def write_pngs(folder, images: torch.Tensor, first: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    names = []
    for i, array in enumerate(pixels):
        Image.fromarray(array).save(folder / f"{first + i:04d}.png")
        names.append(f"{first + i:04d}.png")
    return names


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CLASSIFIER = ["--steps", "200", "--folds", "3", "--model-channels", "8", "--channel-mult", "1,2", "--lr", "3e-3",
              "--uniform-fraction", "0.5", "--levels", "64", "--report-draws", "2", "--no-figure"]


def test_folder_and_trusted_list_to_a_trained_model(tmp_path, capsys):
    """data/good/ holds 120 clean images, data/web/ 120 blurred ones (plus 20 more clean ones the user did not
    check): train-classifier -> sigma-min -> train -> generate, then show."""
    data = tmp_path / "data"
    write_pngs(data / "good", random_fields(torch.arange(120), resolution=SIZE))
    write_pngs(data / "web", blurred(random_fields(torch.arange(120, 240), resolution=SIZE), 1.0))
    write_pngs(data / "web", random_fields(torch.arange(240, 260), resolution=SIZE), first=120)
    classifier, annotations = tmp_path / "clf.safetensors", tmp_path / "ann.safetensors"

    assert cli.main(["annotate", "train-classifier", "--images", str(data), "--trusted", "good", "--out",
                     str(classifier), *CLASSIFIER]) == 0
    report = capsys.readouterr().out
    assert "held-out report (out-of-fold, 3 fold(s)" in report and "informative at low noise: yes" in report

    assert cli.main(["annotate", "sigma-min", "--images", str(data), "--classifier", str(classifier), "--out",
                     str(annotations), "--draws", "2"]) == 0
    table = Annotations.load(annotations)
    assert len(table) == 260 and table.keys[0] == "good/0000.png"
    good = torch.tensor([key.startswith("good/") for key in table.keys])
    assert torch.all(table.sigma_min[good] == 0)  # trusted: the paper's union with (x0, 0)
    web_blurred = torch.tensor([key.startswith("web/") and int(key[4:8]) < 120 for key in table.keys])
    web_sharp = torch.tensor([key.startswith("web/") and int(key[4:8]) >= 120 for key in table.keys])
    assert torch.isfinite(table.sigma_min).all()  # capped at the chance level: no image silently filtered
    # the unchecked sharp images look clean at lower noise than the blurred ones
    assert float(table.sigma_min[web_sharp].median()) < float(table.sigma_min[web_blurred].median())
    provenance = table.provenance["sigma_min"]
    assert provenance["rule"] == "calibrated" and provenance["scoring"] == "out-of-fold"
    assert len(provenance["classifier"]["digest"]) == 16 and provenance["report"]["folds"] == 3

    run = tmp_path / "run"
    settings = ["total_steps=4", "batch_size=16", "log_every=1", "snapshot_every=0", "checkpoint_every=4",
                "lr_rampup_steps=0", "cpu_threads=1", "network.model_channels=8", "network.channel_mult=[1]"]
    assert cli.main(["train", "--preset", "tiny-cpu", "--data", str(data), "--annotations", str(annotations),
                     "--run-dir", str(run), "--device", "cpu", *[a for s in settings for a in ("--set", s)]]) == 0
    assert "annotated 260 of 260" in capsys.readouterr().out
    npz = tmp_path / "samples.npz"
    assert cli.main(["generate", str(run), "--num", "4", "--steps", "4", "--png", str(tmp_path / "grid.png"),
                     "--npz", str(npz), "--device", "cpu"]) == 0
    assert np.isfinite(np.load(npz)["samples"]).all()

    assert cli.main(["annotate", "show", str(annotations)]) == 0
    shown = capsys.readouterr().out
    assert "samples: 260" in shown and "held-out report" in shown
    assert cli.main(["annotate", "show", str(classifier), "--png", str(tmp_path / "report.png")]) == 0
    assert "3 noise classifier(s)" in capsys.readouterr().out and (tmp_path / "report.svg").is_file()


def test_trusted_lists_in_text_and_json(tmp_path):
    from ambient_fast.annotate.trusted import trusted_mask

    keys = ["a/1.png", "a/2.png", "b/3.png"]
    listing = tmp_path / "trusted.txt"
    listing.write_text("# checked by hand\na/2.png\n\nb/3.png\n")
    assert trusted_mask(keys, str(listing)).tolist() == [False, True, True]
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"a/1.png": True, "a/2.png": False, "b/3.png": False}))
    assert trusted_mask(keys, str(labels)).tolist() == [True, False, False]
    (tmp_path / "a").mkdir()
    assert trusted_mask(keys, "a", root=tmp_path).tolist() == [True, True, False]
    listing.write_text("a/2.png\nc/typo.png\n")
    with pytest.raises(ValueError, match="1 of 2 names are not images of the dataset"):
        trusted_mask(keys, str(listing))


def test_same_distribution_stops_or_gives_one_level(tmp_path, capsys):
    """Two samples of one distribution: the report says the classifier is at chance, sigma-min stops by default
    (nothing written), and --if-uninformative single gives one level, no per-sample spread."""
    data = tmp_path / "data"
    write_pngs(data / "good", random_fields(torch.arange(60), resolution=SIZE))
    write_pngs(data / "more", random_fields(torch.arange(60, 120), resolution=SIZE))
    classifier, out = tmp_path / "clf.safetensors", tmp_path / "ann.safetensors"
    assert cli.main(["annotate", "train-classifier", "--images", str(data), "--trusted", "good", "--out",
                     str(classifier), *CLASSIFIER]) == 0
    args = ["annotate", "sigma-min", "--images", str(data), "--classifier", str(classifier), "--out", str(out),
            "--draws", "2"]
    user_error(capsys, args, "at chance at low noise.*Nothing was written")
    assert not out.exists()
    assert cli.main([*args, "--if-uninformative", "single"]) == 0
    table = Annotations.load(out)
    more = torch.tensor([key.startswith("more/") for key in table.keys])
    assert table.sigma_min[more].unique().numel() == 1 and torch.all(table.sigma_min[~more] == 0)
    assert table.provenance["sigma_min"]["fallback"] == "uninformative classifier: single"
    user_error(capsys, [*args, "--if-uninformative", "single"], "exists; pass --force")


def test_train_classifier_errors_before_any_work(tmp_path, capsys):
    data = tmp_path / "data"
    write_pngs(data / "good", random_fields(torch.arange(4), resolution=SIZE))
    user_error(capsys, ["annotate", "train-classifier", "--images", str(data), "--out",
                        str(tmp_path / "c.safetensors")], "--images needs --trusted")
    user_error(capsys, ["annotate", "train-classifier", "--images", str(data), "--trusted", "good", "--out",
                        str(tmp_path / "c.safetensors")], "every image of .* is trusted")
    listing = tmp_path / "list.txt"
    listing.write_text("good/0000.png\nbad.png\n")
    user_error(capsys, ["annotate", "train-classifier", "--images", str(data), "--trusted", str(listing), "--out",
                        str(tmp_path / "c.safetensors")], "not images of the dataset")
    (tmp_path / "c.safetensors").write_bytes(b"")
    user_error(capsys, ["annotate", "train-classifier", "--images", str(data), "--trusted", "good", "--out",
                        str(tmp_path / "c.safetensors")], "exists; pass --force")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors", "data", "list.txt"]  # nothing else made


def test_train_classifier_resumes_after_a_kill_and_cleans_up(tmp_path, monkeypatch, capsys):
    from ambient_fast.annotate import crossfit

    data = tmp_path / "data"
    write_pngs(data / "good", random_fields(torch.arange(12), resolution=SIZE))
    write_pngs(data / "web", blurred(random_fields(torch.arange(12, 24), resolution=SIZE), 1.0))
    out = tmp_path / "clf.safetensors"
    args = ["annotate", "train-classifier", "--images", str(data), "--trusted", "good", "--out", str(out),
            "--steps", "6", "--folds", "2", "--model-channels", "8", "--channel-mult", "1,2", "--batch-size", "8",
            "--levels", "16", "--checkpoint-every", "2", "--no-figure"]
    real, calls = crossfit.train_classifier, []

    def killed_in_the_second_fold(*a, **k):
        calls.append(k["train"].seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(crossfit, "train_classifier", killed_in_the_second_fold)
    with pytest.raises(KeyboardInterrupt):
        cli.main(args)
    assert not out.exists() and (tmp_path / "clf.safetensors.parts" / "fold0.safetensors").is_file()
    monkeypatch.setattr(crossfit, "train_classifier", real)
    assert cli.main(args) == 0
    assert out.is_file() and not (tmp_path / "clf.safetensors.parts").exists()
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    user_error(capsys, [*args[:7], str(blocked / "clf.safetensors"), *args[8:]], "cannot write")
