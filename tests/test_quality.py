"""Fixed annotations from quality scores: ranks are the inverse permutation (hand-checked), the bottom fraction
gets the level, score files in three formats, built-in scores that move the right way, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ambient_fast.annotate.quality import (ClipIQA, annotations_from_quality, bottom_fraction_sigma_min,
                                           high_frequency_energy, jpeg_blockiness, laplacian_variance, load_scores,
                                           per_source_sigma_min, ranks)
from ambient_fast.annotate.synthetic import blurred, random_fields
from ambient_fast.corruptions import JPEG


def test_ranks_are_the_inverse_permutation_hand_checked():
    scores = [0.9, 0.1, 0.5, 0.3, 0.7]
    # sorted ascending: 0.1 (sample 1), 0.3 (3), 0.5 (2), 0.7 (4), 0.9 (0); argsort = [1, 3, 2, 4, 0]
    assert ranks(scores).tolist() == [4, 0, 2, 1, 3]
    sigma_min = bottom_fraction_sigma_min(scores, fraction=0.4, sigma=0.2)
    assert sigma_min.tolist() == [0.0, 0.2, 0.0, 0.2, 0.0]  # the two worst: samples 1 and 3
    # What the public reference's argsort-as-rank would have marked: samples 0 and 4, the two best.
    wrong = np.argsort(scores) < 2
    assert wrong.tolist() == [True, False, False, False, True]


def test_ties_and_fraction_edges():
    assert ranks([1.0, 1.0, 0.0]).tolist() == [1, 2, 0]
    assert bottom_fraction_sigma_min([3.0, 1.0, 2.0], fraction=0.0, sigma=1.0).tolist() == [0, 0, 0]
    assert bottom_fraction_sigma_min([3.0, 1.0, 2.0], fraction=1.0, sigma=1.0).tolist() == [1, 1, 1]
    assert bottom_fraction_sigma_min(list(range(10)), fraction=0.9, sigma=1.0).sum() == 9  # 0.9 * 10 exactly
    with pytest.raises(ValueError, match="fraction"):
        bottom_fraction_sigma_min([1.0], fraction=1.5, sigma=1.0)
    with pytest.raises(ValueError, match="NaN at index 1"):
        ranks([1.0, float("nan")])


def test_per_source_levels():
    source = torch.tensor([0, 1, 1, 2])
    levels = per_source_sigma_min(source, ["real", "synthetic", "web"], {"synthetic": 2.0})
    assert levels.tolist() == [0.0, 2.0, 2.0, 0.0]
    with pytest.raises(ValueError, match="not in the dataset"):
        per_source_sigma_min(source, ["real", "synthetic", "web"], {"cartoons": 2.0})


def test_annotations_record_quality_and_provenance(tmp_path):
    annotations = annotations_from_quality(torch.tensor([10, 11, 12]), [0.5, 0.1, 0.9], fraction=0.34, sigma=0.2,
                                           metric="sharpness", file="scores.npy")
    assert annotations.sigma_min.tolist() == [0.0, 0.2, 0.0]
    annotations.save(tmp_path / "a.safetensors")
    loaded = type(annotations).load(tmp_path / "a.safetensors")
    assert loaded.quality.tolist() == [0.5, 0.1, 0.9]
    assert loaded.provenance["metric"] == "sharpness" and loaded.provenance["fraction"] == 0.34


def test_score_files(tmp_path):
    np.save(tmp_path / "s.npy", np.array([1.0, 2.0]))
    assert load_scores(tmp_path / "s.npy")[1].tolist() == [1.0, 2.0]
    (tmp_path / "s.csv").write_text("key,score\na.png,0.5\nb.png,0.25\n")
    assert load_scores(tmp_path / "s.csv") == (["a.png", "b.png"], pytest.approx([0.5, 0.25]))
    (tmp_path / "plain.csv").write_text("0.5\n0.75\n")
    keys, values = load_scores(tmp_path / "plain.csv")
    assert keys is None and values.tolist() == [0.5, 0.75]
    (tmp_path / "s.json").write_text(json.dumps({"x.png": 3, "y.png": 1}))
    assert load_scores(tmp_path / "s.json")[0] == ["x.png", "y.png"]
    (tmp_path / "bad.csv").write_text("key,score,extra\na.png,1,2\n")
    with pytest.raises(ValueError, match="key,score"):
        load_scores(tmp_path / "bad.csv")
    (tmp_path / "empty.csv").write_text("key,score\n")
    with pytest.raises(ValueError, match="no scores"):
        load_scores(tmp_path / "empty.csv")
    (tmp_path / "s.txt").write_text("1")
    with pytest.raises(ValueError, match="unsupported"):
        load_scores(tmp_path / "s.txt")
    with pytest.raises(FileNotFoundError):
        load_scores(tmp_path / "missing.npy")


def test_builtin_scores_rank_corrupted_images_lower():
    ids = torch.arange(16)
    clean = random_fields(ids, resolution=32)
    blur = blurred(clean, 1.0)
    assert (laplacian_variance(blur) < laplacian_variance(clean)).all()
    assert (high_frequency_energy(blur) < high_frequency_energy(clean)).all()
    compressed = JPEG(quality=10).apply(clean, sample_ids=ids, seed=0)
    assert jpeg_blockiness(compressed).mean() < jpeg_blockiness(clean).mean() - 0.05


def test_clip_iqa_without_local_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        ClipIQA(tmp_path / "no-such-clip")
