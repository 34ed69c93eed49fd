"""Per-source annotation (annotate/sources.py): a table source -> (sigma_min, sigma_max), per-sample rows for the
sources marked "per-sample", the usable data per source and level, and `annotate by-source` / `annotate show`."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from cli_errors import user_error

from ambient_fast import cli
from ambient_fast.annotate.sources import (ALL, PER_SAMPLE, SourceLevels, annotate_by_source, dataset_sources,
                                           load_source_table, usable_by_source)
from ambient_fast.annotations import Annotations
from ambient_fast.buffer import buffer_factor
from ambient_fast.data import FileDataset
from ambient_fast.data.streaming import ShardDataset, write_shards
from ambient_fast.errors import UserError

Image = pytest.importorskip("PIL.Image")


def three_sources(root, counts=(("clean", 4), ("synthetic", 3), ("web", 5))):
    rng = np.random.default_rng(0)
    for source, count in counts:
        (root / source).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / source / f"{i:03d}.png")
    return root


def write_table(path, table):
    path.write_text(json.dumps(table))
    return path


def test_the_table_file_is_read_and_checked(tmp_path):
    table = load_source_table(write_table(tmp_path / "t.json", {"a": {"sigma_min": 2}, "b": {"sigma_min": "inf",
                                                                  "sigma_max": 0.3}, "c": PER_SAMPLE}))
    assert table == {"a": SourceLevels(2.0, 0.0), "b": SourceLevels(math.inf, 0.3), "c": PER_SAMPLE}
    for bad, message in (([1, 2], "expected an object"), ({"a": 2}, "must be"), ({"a": {"sigma_max": 1}}, "must be"),
                         ({"a": {"sigma_min": -1}}, "sigma_min >= 0"), ({"a": {"sigma_min": 0, "sigma_max": "inf"}},
                                                                       "finite sigma_max"),
                         ({"a": {"sigma_min": "two"}}, "not a number"), ({"a": {"sigma_min": 0, "typo": 1}}, "must be")):
        with pytest.raises(UserError, match=message):
            load_source_table(write_table(tmp_path / "bad.json", bad))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        load_source_table(tmp_path / "broken.json")


def test_each_source_gets_its_row_of_the_table(tmp_path):
    data = FileDataset(three_sources(tmp_path / "data"))
    names, index = dataset_sources(data)
    assert names == ["clean", "synthetic", "web"] and index.tolist() == [0] * 4 + [1] * 3 + [2] * 5
    # The paper's text-to-image setting (Section 5): sigma_min = 2 for the synthetic source, 0 for the others.
    table = {"synthetic": SourceLevels(2.0, 0.0), "*": SourceLevels(0.0, 0.0), "web": SourceLevels(math.inf, 0.4)}
    out = annotate_by_source(data.sample_ids, data.keys, names, index, table)
    assert out.sigma_min.tolist() == [0.0] * 4 + [2.0] * 3 + [math.inf] * 5
    assert out.sigma_max.tolist() == [0.0] * 7 + [0.4] * 5
    assert out.sources == names and out.source.tolist() == index.tolist() and out.keys == data.keys
    assert out.provenance["samples_per_source"] == {"clean": 4, "synthetic": 3, "web": 5}
    assert data.annotations(out).sigma_min.tolist() == out.sigma_min.tolist()  # aligned with the dataset
    with pytest.raises(UserError, match=r"no entry for \['web'\]"):
        annotate_by_source(data.sample_ids, data.keys, names, index, {"clean": SourceLevels(0, 0),
                                                                      "synthetic": SourceLevels(2, 0)})
    with pytest.warns(UserWarning, match=r"names \['laion'\], which the data does not have"):
        annotate_by_source(data.sample_ids, data.keys, names, index, {**table, "laion": SourceLevels(1, 0)})


def test_per_sample_sources_take_the_classifier_rows_by_key(tmp_path):
    root = three_sources(tmp_path / "data")
    data = FileDataset(root)
    names, index = dataset_sources(data)
    # A classifier annotation made on the web/ folder alone: its keys lack the "web/" prefix.
    web = FileDataset(root / "web")
    levels = torch.tensor([0.0, 0.3, 1.5, math.inf, 0.7], dtype=torch.float64)
    per_sample = Annotations(web.sample_ids, levels, torch.full((5,), 0.1, dtype=torch.float64), keys=web.keys,
                             quality=torch.arange(5.0), provenance={"sigma_min": {"method": "dense"}})
    table = {"clean": SourceLevels(0, 0), "synthetic": SourceLevels(2, 0), "web": PER_SAMPLE}
    out = annotate_by_source(data.sample_ids, data.keys, names, index, table, per_sample)
    assert out.sigma_min.tolist() == [0.0] * 4 + [2.0] * 3 + levels.tolist()
    assert out.sigma_max.tolist() == [0.0] * 7 + [0.1] * 5
    assert torch.isnan(out.quality[:7]).all() and out.quality[7:].tolist() == [0, 1, 2, 3, 4]
    assert out.provenance["per_sample"] == {"sigma_min": {"method": "dense"}}
    # The same rows keyed as in the whole dataset ("web/000.png") match too.
    whole_keys = Annotations(data.sample_ids[7:], levels, torch.zeros(5, dtype=torch.float64), keys=data.keys[7:])
    assert annotate_by_source(data.sample_ids, data.keys, names, index, table, whole_keys).sigma_min.tolist() == \
        out.sigma_min.tolist()
    partial = Annotations(web.sample_ids[:3], levels[:3], torch.zeros(3, dtype=torch.float64), keys=web.keys[:3])
    with pytest.raises(UserError, match=r"no row for 2 of the 5 samples of \['web'\] \(first: \['web/003.png'"):
        annotate_by_source(data.sample_ids, data.keys, names, index, table, partial)
    with pytest.raises(UserError, match="give their annotation file"):
        annotate_by_source(data.sample_ids, data.keys, names, index, table)
    keyless = Annotations(web.sample_ids, levels, torch.zeros(5, dtype=torch.float64))
    with pytest.raises(UserError, match="has no keys"):
        annotate_by_source(data.sample_ids, data.keys, names, index, table, keyless)


def test_usable_by_source_follows_the_sampler_rule():
    rng = np.random.default_rng(4)
    n = 200
    sigma_min = np.where(rng.random(n) < 0.5, 0.0, np.exp(rng.uniform(-3, 2, n)))
    sigma_min[rng.random(n) < 0.1] = np.inf
    sigma_max = np.where(rng.random(n) < 0.3, np.exp(rng.uniform(-4, 0, n)), 0.0)
    source = rng.integers(0, 3, n)
    table = Annotations(torch.arange(n), sigma_min, sigma_max, source=source, sources=["a", "b", "c"])
    sigmas = (0.01, 0.1, 1.0, 3.0, 30.0)
    fractions = usable_by_source(table, sigmas, max_weight=4.0)
    b = buffer_factor(4.0)
    for k, name in enumerate(["a", "b", "c"]):
        members = source == k
        expected = [float(np.mean((s < sigma_max[members]) | (s > b * sigma_min[members]))) for s in sigmas]
        np.testing.assert_allclose(fractions[name], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fractions[ALL], [float(np.mean((s < sigma_max) | (s > b * sigma_min))) for s in sigmas],
                               rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="no source column"):
        usable_by_source(Annotations(torch.arange(n), sigma_min, sigma_max), sigmas)


def test_by_source_command_on_a_folder_and_its_shards(tmp_path, capsys):
    root = three_sources(tmp_path / "data")
    write_shards(FileDataset(root), tmp_path / "shards", sources_from_folders=True, samples_per_shard=5,
                 report=lambda _: None)
    table = write_table(tmp_path / "sources.json", {"synthetic": {"sigma_min": 2}, "*": {"sigma_min": 0}})
    for data, out in ((root, "folder.safetensors"), (tmp_path / "shards", "shards.safetensors")):
        assert cli.main(["annotate", "by-source", "--data", str(data), "--sources", str(table),
                         "--out", str(tmp_path / out)]) == 0
    printed = capsys.readouterr().out
    assert "synthetic        3" in printed and "wrote" in printed
    folder, shards = (Annotations.load(tmp_path / name) for name in ("folder.safetensors", "shards.safetensors"))
    assert folder.digest() == shards.digest() and folder.sources == shards.sources == ["clean", "synthetic", "web"]
    assert ShardDataset(tmp_path / "shards").annotations(tmp_path / "folder.safetensors").sigma_min.tolist() == \
        [0.0] * 4 + [2.0] * 3 + [0.0] * 5
    assert cli.main(["annotate", "show", str(tmp_path / "folder.safetensors")]) == 0
    shown = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in shown.splitlines() if line.split()[:1] in
            (["clean"], ["synthetic"], ["web"], [ALL])}
    b = buffer_factor(4.0)  # synthetic (sigma_min = 2) is usable only above b * 2; the columns are the report levels
    assert rows["synthetic"][0] == "3" and rows["synthetic"][1:] == \
        [f"{float(s > b * 2):.3f}" for s in (0.002, 0.02, 0.2, 0.5, 2.0, 5.0, 20.0)]
    assert rows["clean"][1:] == ["1.000"] * 7 and rows[ALL][0] == "12"
    # dataset info: the shard set's own sources, for a file without a source column too.
    Annotations(folder.sample_ids, folder.sigma_min, folder.sigma_max, keys=folder.keys).save(tmp_path / "plain.st")
    assert cli.main(["dataset", "info", str(tmp_path / "shards"), "--annotations", str(tmp_path / "plain.st")]) == 0
    assert rows["synthetic"] == capsys.readouterr().out.split("synthetic", 1)[1].split("\n")[0].split()
    user_error(capsys, ["annotate", "by-source", "--data", root, "--sources", table, "--out",
                        tmp_path / "folder.safetensors"], "exists; pass --force")


def test_by_source_command_with_per_sample_files(tmp_path, capsys):
    root = three_sources(tmp_path / "data")
    web = FileDataset(root / "web")
    half = [Annotations(web.sample_ids[part], torch.full((len(web.keys[part]),), level, dtype=torch.float64),
                        torch.zeros(len(web.keys[part]), dtype=torch.float64), keys=web.keys[part])
            for part, level in ((slice(0, 2), 0.5), (slice(2, 5), 0.25))]
    for i, table in enumerate(half):
        table.save(tmp_path / f"web{i}.safetensors")
    sources = write_table(tmp_path / "sources.json", {"clean": {"sigma_min": 0}, "synthetic": {"sigma_min": 2},
                                                      "web": PER_SAMPLE})
    assert cli.main(["annotate", "by-source", "--data", str(root), "--sources", str(sources), "--per-sample",
                     str(tmp_path / "web0.safetensors"), str(tmp_path / "web1.safetensors"),
                     "--out", str(tmp_path / "out.safetensors")]) == 0
    out = Annotations.load(tmp_path / "out.safetensors")
    assert out.sigma_min.tolist() == [0.0] * 4 + [2.0] * 3 + [0.5, 0.5, 0.25, 0.25, 0.25]
    user_error(capsys, ["annotate", "by-source", "--data", root, "--sources", sources, "--out", tmp_path / "o.st"],
               r"marks \['web'\] \"per-sample\": give their annotation file with --per-sample")
    plain = write_table(tmp_path / "plain.json", {"*": {"sigma_min": 0}})
    user_error(capsys, ["annotate", "by-source", "--data", root, "--sources", plain, "--per-sample",
                        tmp_path / "web0.safetensors", "--out", tmp_path / "o.st"], "no source of --sources")
    (root / "loose.png").write_bytes((root / "web" / "000.png").read_bytes())
    user_error(capsys, ["annotate", "by-source", "--data", root, "--sources", plain, "--out", tmp_path / "o.st"],
               "not in a source folder")
