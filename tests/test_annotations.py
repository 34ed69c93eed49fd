"""The annotation table: file round trip, alignment to a dataset, and clear errors on any mismatch."""
from __future__ import annotations

import math

import pytest
import torch

from ambient_fast.annotations import AnnotationMismatchError, Annotations


def example() -> Annotations:
    return Annotations(
        sample_ids=[10, 11, 12, 13],
        sigma_min=[0.0, 0.4, math.inf, 1.2],
        sigma_max=[0.0, 0.0, 0.3, 0.1],
        keys=["a.png", "b.png", "c.png", "d.png"],
        quality=[0.9, 0.2, float("nan"), 0.1],
        source=[0, 0, 1, 0],
        sources=["photos", "synthetic"],
        provenance={"method": "test", "tau": 0.45},
    )


def test_round_trip(tmp_path):
    annotations = example()
    annotations.save(tmp_path / "a.safetensors")
    loaded = Annotations.load(tmp_path / "a.safetensors")
    for name in ("sample_ids", "sigma_min", "sigma_max", "source"):
        assert torch.equal(getattr(loaded, name), getattr(annotations, name)), name
    assert torch.equal(loaded.quality.isnan(), annotations.quality.isnan())
    assert loaded.keys == annotations.keys and loaded.sources == annotations.sources
    assert loaded.provenance == {"method": "test", "tau": 0.45}


def test_alignment_reorders_and_checks_keys():
    aligned = example().aligned_to([13, 10], keys=["d.png", "a.png"])
    assert aligned.sample_ids.tolist() == [13, 10]
    assert aligned.sigma_min.tolist() == [1.2, 0.0]
    with pytest.raises(AnnotationMismatchError, match="dataset changed since it was annotated"):
        example().aligned_to([13, 10], keys=["a.png", "d.png"])
    with pytest.raises(AnnotationMismatchError, match="1 of 2 dataset samples have no annotation"):
        example().aligned_to([10, 99])
    relaxed = example().aligned_to([10, 99], allow_missing=True)
    assert relaxed.sigma_min.tolist() == [0.0, 0.0] and relaxed.sigma_max.tolist() == [0.0, 0.0]


def test_usable_follows_the_donut():
    usable = example().usable(0.2)
    # clean; 0.2 < b*0.4; crops-only with s_max 0.3 > 0.2; 0.2 < b*1.2 and s_max 0.1 < 0.2.
    assert usable.tolist() == [True, False, True, False]


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(sigma_min=[0.0, -1.0, 0.0, 0.0]), ">= 0"),
        (dict(sigma_min=[0.0, float("nan"), 0.0, 0.0]), "sigma_min contains NaN"),
        (dict(sample_ids=[1, 1, 2, 3]), "unique"),
        (dict(keys=["a"]), "keys has 1 entries"),
        (dict(source=[0, 0, 5, 0]), "source indices"),
    ],
)
def test_bad_tables_are_named(change, match):
    fields = dict(sample_ids=[10, 11, 12, 13], sigma_min=[0.0] * 4, sigma_max=[0.0] * 4, source=[0] * 4, sources=["x"])
    fields.update(change)
    with pytest.raises(ValueError, match=match):
        Annotations(**fields)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError):
        Annotations.load(tmp_path / "missing.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable annotation file"):
        Annotations.load(tmp_path / "garbage.safetensors")
    example().save(tmp_path / "ok.safetensors")
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable annotation file"):
        Annotations.load(tmp_path / "truncated.safetensors")
