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
    aligned = example().aligned_to([13, 10, 12, 11], keys=["d.png", "a.png", "c.png", "b.png"])
    assert aligned.sample_ids.tolist() == [13, 10, 12, 11]
    assert aligned.sigma_min.tolist() == [1.2, 0.0, math.inf, 0.4]
    with pytest.raises(AnnotationMismatchError, match="dataset changed since it was annotated"):
        example().aligned_to([13, 10, 12, 11], keys=["a.png", "d.png", "c.png", "b.png"])
    with pytest.raises(AnnotationMismatchError, match="1 of 5 dataset samples have no annotation"):
        example().aligned_to([10, 11, 12, 13, 99])
    relaxed = example().aligned_to([10, 99], allow_missing=True)
    assert relaxed.sigma_min.tolist() == [0.0, 0.0] and relaxed.sigma_max.tolist() == [0.0, 0.0]


ALL_IDS, ALL_KEYS = [10, 11, 12, 13], ["a.png", "b.png", "c.png", "d.png"]


def test_extra_ids_are_refused_unless_allowed():
    # The dataset lacks id 13 (and id 12): the file describes other data, or the dataset lost files.
    with pytest.raises(AnnotationMismatchError,
                       match=r"2 annotated ids are not in the dataset \(first ids: \[12, 13\]\).*allow-missing"):
        example().aligned_to([10, 11], keys=["a.png", "b.png"])
    relaxed = example().aligned_to([10, 11], keys=["a.png", "b.png"], allow_missing=True)
    assert relaxed.sample_ids.tolist() == [10, 11] and relaxed.sigma_min.tolist() == [0.0, 0.4]


def test_a_file_without_keys_is_refused_when_the_dataset_names_its_samples():
    keyless = example()
    keyless.keys = None
    with pytest.raises(AnnotationMismatchError, match="no keys"):
        keyless.aligned_to(ALL_IDS, keys=ALL_KEYS)
    assert keyless.aligned_to(ALL_IDS, keys=ALL_KEYS, allow_missing=True).keys == ALL_KEYS
    assert keyless.aligned_to(ALL_IDS).keys is None  # a dataset without names: ids are all there is to check


def test_coverage_line_counts_missing_and_extra_samples():
    lines = []
    example().aligned_to([10, 11, 99], keys=["a.png", "b.png", "z.png"], allow_missing=True, report=lines.append)
    assert lines == ["annotations: annotated 2 of 3 samples (1 missing -> clean, 2 extra ids ignored)"]
    lines.clear()
    example().aligned_to(ALL_IDS, keys=ALL_KEYS, report=lines.append)
    assert lines == ["annotations: annotated 4 of 4 samples (0 missing -> clean, 0 extra ids ignored)"]


def test_samples_that_are_never_trained_on_need_no_row():
    # needed=False: an unreadable file is excluded from training, and `annotate` writes no row for it.
    aligned = example().aligned_to([10, 11, 12, 13, 14], needed=torch.tensor([True, True, True, True, False]))
    assert aligned.sample_ids.tolist() == [10, 11, 12, 13, 14]


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


def part(ids, sigma_min, keys, **extra) -> Annotations:
    return Annotations(ids, sigma_min, [0.0] * len(ids), keys=keys, **extra)


def test_merge_joins_disjoint_tables_sorted_by_id():
    classified = part([3, 0], [0.5, 0.0], ["d", "a"], quality=[0.1, 0.9], provenance={"method": "classifier"})
    synthetic = part([1, 2], [2.0, 2.0], ["b", "c"], source=[0, 0], sources=["synthetic"],
                     provenance={"method": "source-level"})
    photos = part([4], [0.0], ["e"], source=[0], sources=["photos"])
    merged = Annotations.merge([classified, synthetic, photos])
    assert merged.sample_ids.tolist() == [0, 1, 2, 3, 4] and merged.keys == ["a", "b", "c", "d", "e"]
    assert merged.sigma_min.tolist() == [0.0, 2.0, 2.0, 0.5, 0.0]
    assert merged.quality[[0, 3]].tolist() == [0.9, 0.1] and merged.quality[[1, 2, 4]].isnan().all()
    names = [merged.sources[i] for i in merged.source.tolist()]
    assert names == ["unspecified", "synthetic", "synthetic", "unspecified", "photos"]  # unified by name
    assert merged.provenance == {"merged": [{"method": "classifier"}, {"method": "source-level"}, {}]}


def test_merge_refuses_overlaps_and_inconsistent_keys():
    a = part([0, 1], [0.0, 0.3], ["a", "b"])
    assert Annotations.merge([a, part([1], [0.3], ["b"])]).sample_ids.tolist() == [0, 1]  # identical rows: fine
    with pytest.raises(ValueError, match=r"sample id 1 .* differently in first and second"):
        Annotations.merge([a, part([1], [0.7], ["b"])], names=["first", "second"])
    with pytest.raises(ValueError, match="keys in some files but not in others"):
        Annotations.merge([a, part([2], [0.0], None)])
    with pytest.raises(ValueError, match="key 'b' names sample id 1 .* and sample id 2"):
        Annotations.merge([a, part([2], [0.0], ["b"])])
    with pytest.raises(ValueError, match="nothing to merge"):
        Annotations.merge([])
