"""Shard sets (data/streaming.py): the converter's round trip, determinism, rank sharding, mid-epoch resume, the
ambient sampler served from shards, training on shards, and the errors a user meets."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from cli_errors import user_error

from ambient_fast import cli
from ambient_fast.annotations import AnnotationMismatchError, Annotations
from ambient_fast.data import AmbientSampler, CorruptSampleError, FileDataset, open_dataset
from ambient_fast.data.streaming import ShardDataset, load_captions, write_shards
from ambient_fast.errors import UserError
from ambient_fast.train.feed import StepBatches, loader

Image = pytest.importorskip("PIL.Image")
wds = pytest.importorskip("webdataset")


def image_folder(root, n=11, size=8, seed=0):
    """PNGs in two source folders (clean/, web/), labelled in dataset.json."""
    rng = np.random.default_rng(seed)
    names = [f"{'web' if i % 3 == 0 else 'clean'}/img{i:04d}.png" for i in range(n)]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name)
    (root / "dataset.json").write_text(json.dumps({"labels": [[name, i % 4] for i, name in enumerate(names)]}))
    return root


def latent_zip(path, n=9, seed=1):
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(n):
            buffer = io.BytesIO()
            np.save(buffer, rng.standard_normal((8, 4, 4)).astype(np.float32))
            archive.writestr(f"{i:05d}.npy", buffer.getvalue())
    return path


def assert_same_items(a, b):
    assert len(a) == len(b) and a.keys == b.keys and a.label_dim == b.label_dim
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert (x["sample_id"], x["key"], x["label"]) == (y["sample_id"], y["key"], y["label"])
        assert torch.equal(x["image"], y["image"])


def test_round_trip_images_with_captions_and_sources(tmp_path):
    source = FileDataset(image_folder(tmp_path / "src"))
    rng = np.random.default_rng(2)
    embedding = rng.standard_normal((len(source), 3, 5)).astype(np.float16)
    mask = rng.random((len(source), 3)) > 0.4
    index = write_shards(source, tmp_path / "shards", sources_from_folders=True, captions=(embedding, mask),
                         samples_per_shard=4, report=lambda _: None)
    assert [s["samples"] for s in index["shards"]] == [4, 4, 3] and index["sources"] == ["clean", "web"]
    shards = ShardDataset(tmp_path / "shards")
    assert_same_items(source, shards)
    for i in range(len(source)):
        item = shards[i]
        assert item["source"] == item["key"].split("/")[0]
        assert torch.equal(item["caption"], torch.from_numpy(embedding[i].astype(np.float32)))
        assert item["caption_mask"].dtype == torch.bool and torch.equal(item["caption_mask"], torch.from_numpy(mask[i]))
    # The shards are plain WebDataset tars: the field's own reader sees every sample, in id order, with its fields.
    read = list(wds.WebDataset(shards.shard_paths, shardshuffle=False))
    assert [r["__key__"] for r in read] == [f"{i:09d}" for i in range(len(source))]
    assert all(set(r) - {"__key__", "__url__", "__local_path__"} == {"png", "json", "caption.npy", "caption_mask.npy"}
               for r in read)
    assert [json.loads(r["json"])["key"] for r in read] == source.keys
    assert read[5]["png"] == (tmp_path / "src" / source.keys[5]).read_bytes()  # the source file's bytes, unchanged


def test_round_trip_latent_zip_and_byte_identical_rewrite(tmp_path):
    source = FileDataset(latent_zip(tmp_path / "latents.zip"))
    for name in ("a", "b"):
        write_shards(source, tmp_path / name, source_name="imagenet", samples_per_shard=5, report=lambda _: None)
    a, b = ShardDataset(tmp_path / "a"), ShardDataset(tmp_path / "b")
    assert a.is_latent and a.sources == ["imagenet"] and not a.has_captions and "caption" not in a[0]
    assert_same_items(source, a)
    assert [s["sha256"] for s in a.index["shards"]] == [s["sha256"] for s in b.index["shards"]]
    assert isinstance(open_dataset(tmp_path / "a"), ShardDataset)  # what the trainer opens for --data


def noisy_annotations(dataset, seed=0):
    """A third of the samples noisy (sigma_min in [0.1, 1]), the rest clean, keyed like the dataset."""
    g = torch.Generator().manual_seed(seed)
    sigma_min = torch.where(torch.arange(len(dataset)) % 3 == 0, 0.1 + 0.9 * torch.rand(len(dataset), generator=g), 0.0)
    return Annotations(dataset.sample_ids, sigma_min.double(), torch.zeros(len(dataset), dtype=torch.float64),
                       keys=dataset.keys)


def run_steps(dataset, table, *, steps, start_state=None, chunks=(0,), num_chunks=1, batch_size=4, num_workers=0):
    """What the trainer does: sampler -> StepBatches -> DataLoader over the dataset. Returns the loaded batches
    and the sampler state after the last step."""
    sampler = AmbientSampler(table.sigma_min, table.sigma_max, batch_size=batch_size, seed=7)
    if start_state is not None:
        sampler.load_state_dict(start_state)
    batches = StepBatches(sampler, total_steps=sampler.step + steps, num_chunks=num_chunks, chunks=list(chunks))
    loaded = [{k: batch[k] for k in ("image", "sample_id", "sigma_t", "sigma_tn", "step", "source")}
              for batch in loader(dataset, batches, num_workers=num_workers, pin_memory=False)]
    return loaded, batches.state_after(sampler.step - 1)


def test_sampler_on_shards_is_deterministic_and_matches_the_folder(tmp_path):
    folder = FileDataset(image_folder(tmp_path / "src"))
    write_shards(folder, tmp_path / "shards", sources_from_folders=True, samples_per_shard=3, report=lambda _: None)
    table = noisy_annotations(folder)
    first, _ = run_steps(ShardDataset(tmp_path / "shards"), table, steps=6)
    again, _ = run_steps(ShardDataset(tmp_path / "shards"), table, steps=6)
    for x, y in zip(first, again):
        assert torch.equal(x["sample_id"], y["sample_id"]) and torch.equal(x["image"], y["image"])
        assert torch.equal(x["sigma_t"], y["sigma_t"])
    assert {s for batch in first for s in batch["source"]} == {"clean", "web"}
    # The ambient rule holds on what was loaded: a noisy sample only above b * sigma_min, predicted at sigma_min.
    sigma_min = table.sigma_min.float()
    for batch in first:
        noisy = sigma_min[batch["sample_id"]] > 0
        assert torch.equal(batch["sigma_tn"][noisy], sigma_min[batch["sample_id"]][noisy])
        assert (batch["sigma_t"][noisy] > batch["sigma_tn"][noisy]).all()


def test_two_ranks_cover_each_sample_exactly_once_per_epoch(tmp_path):
    source = FileDataset(image_folder(tmp_path / "src", n=12))
    write_shards(source, tmp_path / "shards", sources_from_folders=True, samples_per_shard=5, report=lambda _: None)
    table = Annotations.clean(source.sample_ids, keys=source.keys)  # all usable everywhere: no sample is passed over
    steps = 2 * len(source) // 4  # two epochs of a global batch of 4, in 2 slices of 2
    ranks = [run_steps(ShardDataset(tmp_path / "shards"), table, steps=steps, chunks=[rank], num_chunks=2,
                       num_workers=2 * rank)[0] for rank in (0, 1)]  # rank 1 through two loader worker processes
    per_step = len(source) // 4
    for epoch in range(2):
        ids = [i for rank in ranks for batch in rank[epoch * per_step:(epoch + 1) * per_step]
               for i in batch["sample_id"].tolist()]
        assert sorted(ids) == list(range(len(source)))  # every sample once, on exactly one rank
    for a, b in zip(*ranks):
        assert not set(a["sample_id"].tolist()) & set(b["sample_id"].tolist())
        assert a["step"] == b["step"] and a["image"].shape == (2, 3, 8, 8)


def test_mid_epoch_resume_equals_the_uninterrupted_run(tmp_path):
    source = FileDataset(image_folder(tmp_path / "src"))
    write_shards(source, tmp_path / "shards", sources_from_folders=True, samples_per_shard=4, report=lambda _: None)
    table = noisy_annotations(source, seed=3)
    whole, _ = run_steps(ShardDataset(tmp_path / "shards"), table, steps=9)  # 36 draws: past three epochs of 11
    head, state = run_steps(ShardDataset(tmp_path / "shards"), table, steps=3)
    assert 0 < state["cursor"] < len(source)  # stopped in the middle of an epoch
    tail, _ = run_steps(ShardDataset(tmp_path / "shards"), table, steps=6, start_state=json.loads(json.dumps(state)))
    assert len(head + tail) == len(whole)
    for x, y in zip(head + tail, whole):
        assert x["step"] == y["step"] and torch.equal(x["sample_id"], y["sample_id"])
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["sigma_t"], y["sigma_t"])


def test_annotations_of_the_folder_apply_to_its_shards(tmp_path):
    source = FileDataset(image_folder(tmp_path / "src"))
    write_shards(source, tmp_path / "shards", samples_per_shard=4, report=lambda _: None)
    table = noisy_annotations(source)
    table.save(tmp_path / "ann.safetensors")
    aligned = ShardDataset(tmp_path / "shards").annotations(tmp_path / "ann.safetensors")
    assert torch.equal(aligned.sigma_min, table.sigma_min)
    other = Annotations(table.sample_ids, table.sigma_min, table.sigma_max, keys=list(reversed(table.keys)))
    with pytest.raises(AnnotationMismatchError, match="the dataset changed"):
        ShardDataset(tmp_path / "shards").annotations(other)


def test_training_on_shards_equals_training_on_the_folder(tmp_path):
    from ambient_fast.train.config import preset
    from ambient_fast.train.loop import train

    write_shards(FileDataset(image_folder(tmp_path / "src", n=16)), tmp_path / "shards", samples_per_shard=6,
                 report=lambda _: None)
    settings = dict(total_steps=3, batch_size=4, log_every=1, checkpoint_every=3, snapshot_every=0,
                    lr_rampup_steps=0, num_workers=0, cpu_threads=1, deterministic=True,
                    **{"network.model_channels": 8, "network.channel_mult": [1]})
    losses = [train(preset("tiny-cpu", data=str(data), **settings), run_dir=tmp_path / name, log=lambda *_: None)["losses"]
              for name, data in (("folder", tmp_path / "src"), ("shards", tmp_path / "shards"))]
    assert len(losses[0]) == 3 and losses[0] == losses[1]


def test_damaged_shard_sets_are_named(tmp_path):
    source = FileDataset(image_folder(tmp_path / "src"))
    write_shards(source, tmp_path / "shards", samples_per_shard=4, report=lambda _: None)
    shard = tmp_path / "shards" / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    member = ShardDataset(tmp_path / "shards")
    start = int(member.offsets["data_offset"][5])
    data[start:start + 40] = bytes(40)  # zero the PNG header of sample 5, keeping the size
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptSampleError, match=r"shard-000001\.tar member 000000005"):
        ShardDataset(tmp_path / "shards")[5]
    with pytest.warns(UserWarning, match="000000005"):
        lenient = ShardDataset(tmp_path / "shards", on_error="skip")
    assert lenient.excluded.tolist() == [i == 5 for i in range(len(source))]
    shard.write_bytes(bytes(data[:-512]))
    with pytest.raises(UserError, match="shard-000001.tar has .* bytes, the index says"):
        ShardDataset(tmp_path / "shards")
    shard.unlink()
    with pytest.raises(UserError, match="shard shard-000001.tar is missing"):
        ShardDataset(tmp_path / "shards")


def test_to_shards_command(tmp_path, capsys):
    src = image_folder(tmp_path / "src", n=6)
    np.savez(tmp_path / "captions.npz", embedding=np.ones((6, 2, 3), np.float32), mask=np.ones((6, 2), bool))
    assert cli.main(["dataset", "to-shards", str(src), str(tmp_path / "out"), "--source-from-folder",
                     "--captions", str(tmp_path / "captions.npz"), "--samples-per-shard", "4"]) == 0
    assert "6 images in 2 shards, sources clean, web, captions [2, 3]" in capsys.readouterr().out
    assert ShardDataset(tmp_path / "out")[1]["caption"].shape == (2, 3)
    user_error(capsys, ["dataset", "to-shards", src, tmp_path / "out"], "out exists")
    np.save(tmp_path / "short.npy", np.ones((5, 3), np.float32))
    user_error(capsys, ["dataset", "to-shards", src, tmp_path / "o2", "--captions", tmp_path / "short.npy"],
               r"expected float embeddings \[6, T, D\]")
    user_error(capsys, ["dataset", "to-shards", src, tmp_path / "o3", "--source", "a", "--source-from-folder"],
               "not both")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes((src / "web" / "img0000.png").read_bytes()[:40])
    user_error(capsys, ["dataset", "to-shards", tmp_path / "bad", tmp_path / "o1"], r"a\.png.*convert again")
    (src / "dataset.json").unlink()
    (src / "loose.png").write_bytes((src / "web" / "img0000.png").read_bytes())
    user_error(capsys, ["dataset", "to-shards", src, tmp_path / "o4", "--source-from-folder"],
               r"not in a source folder \(first: \['loose.png'\]\)")
    assert not any((tmp_path / name).exists() for name in ("o1", "o1.partial", "o2", "o3", "o4", "o4.partial"))
    # A stopped conversion's work folder is cleared and redone; a folder of other files there is never deleted.
    (src / "loose.png").unlink()
    (tmp_path / "o5.partial").mkdir()
    (tmp_path / "o5.partial" / "shard-000000.tar").write_bytes(b"half")
    assert cli.main(["dataset", "to-shards", str(src), str(tmp_path / "o5")]) == 0
    assert len(ShardDataset(tmp_path / "o5")) == 6 and not (tmp_path / "o5.partial").exists()
    (tmp_path / "o6.partial").mkdir()
    (tmp_path / "o6.partial" / "notes.txt").write_text("mine")
    user_error(capsys, ["dataset", "to-shards", src, tmp_path / "o6"], r"o6.partial exists and holds other files")
    assert (tmp_path / "o6.partial" / "notes.txt").read_text() == "mine"


def test_load_captions_forms(tmp_path):
    np.save(tmp_path / "flat.npy", np.arange(12, dtype=np.float32).reshape(4, 3))
    embedding, mask = load_captions(tmp_path / "flat.npy", 4)
    assert embedding.shape == (4, 1, 3) and mask.all()
    np.save(tmp_path / "nan.npy", np.full((4, 2, 3), np.nan, np.float32))
    with pytest.raises(UserError, match="NaN"):
        load_captions(tmp_path / "nan.npy", 4)
    np.savez(tmp_path / "bad.npz", embedding=np.ones((4, 2, 3), np.float32), mask=np.ones((4, 3)))
    with pytest.raises(UserError, match="'mask' must be bool"):
        load_captions(tmp_path / "bad.npz", 4)
