"""Datasets: EDM2 folders and zips, labels, stable ids and keys, corrupt files, annotation join, VAE encoding."""
from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest
import torch
from cli_errors import user_error

from ambient_fast.annotations import Annotations, AnnotationMismatchError
from ambient_fast.data import CorruptSampleError, FileDataset, TensorDataset, collate

Image = pytest.importorskip("PIL.Image")


def write_images(root, n=6, size=8, labels=True):
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        name = f"{i // 4:05d}/img{i:08d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name)
        names.append(name)
    if labels:
        (root / "dataset.json").write_text(json.dumps({"labels": [[name, i % 3] for i, name in enumerate(names)]}))
    return names


def test_folder_and_zip_give_the_same_items(tmp_path):
    names = write_images(tmp_path / "folder")
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as archive:
        for path in sorted((tmp_path / "folder").rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(tmp_path / "folder").as_posix())
    folder, zipped = FileDataset(tmp_path / "folder"), FileDataset(tmp_path / "data.zip")
    assert folder.keys == zipped.keys == sorted(names) and folder.label_dim == 3
    for i in range(len(folder)):
        a, b = folder[i], zipped[i]
        assert a["sample_id"] == i and a["key"] == names[i] and a["label"] == i % 3
        torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=0)
    image = folder[0]["image"]
    assert image.shape == (3, 8, 8) and image.min() >= -1 and image.max() <= 1
    pixel = np.asarray(Image.open(tmp_path / "folder" / names[0]))[0, 0, 0]
    assert image[0, 0, 0].item() == pytest.approx(pixel / 127.5 - 1)
    batch = collate([folder[0], folder[1]])
    assert batch["image"].shape == (2, 3, 8, 8) and batch["sample_id"].tolist() == [0, 1]


def test_corrupt_file_is_named_or_skipped_with_warning(tmp_path):
    names = write_images(tmp_path, labels=False)
    (tmp_path / names[2]).write_bytes((tmp_path / names[2]).read_bytes()[:40])  # truncated PNG
    strict = FileDataset(tmp_path)
    with pytest.raises(CorruptSampleError, match=names[2]):
        strict[2]
    with pytest.warns(UserWarning, match=names[2]):
        lenient = FileDataset(tmp_path, on_error="skip")
    assert lenient.excluded.tolist() == [False, False, True, False, False, False]
    table = lenient.annotations()  # excluded samples are never usable
    assert not table.usable(0.5)[2] and table.usable(0.5).sum() == 5
    with pytest.raises(CorruptSampleError, match="excluded"):
        lenient[2]


def test_nan_latents_are_rejected(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((8, 4, 4), np.float32))
    np.save(tmp_path / "b.npy", np.full((8, 4, 4), np.nan, np.float32))
    dataset = FileDataset(tmp_path)
    assert dataset.is_latent and dataset[0]["image"].shape == (8, 4, 4)
    with pytest.raises(CorruptSampleError, match="b.npy.*NaN"):
        dataset[1]


def test_annotation_join_by_id_and_key(tmp_path):
    images = torch.rand(5, 3, 4, 4) * 2 - 1
    dataset = TensorDataset(images, keys=[f"k{i}" for i in range(5)])
    table = Annotations(torch.tensor([3, 1]), torch.tensor([0.7, 0.2], dtype=torch.float64), torch.zeros(2), keys=["k3", "k1"])
    table.save(tmp_path / "ann.safetensors")
    with pytest.raises(AnnotationMismatchError, match=r"ann.safetensors: .*3 of 5 dataset samples have no annotation"):
        dataset.annotations(tmp_path / "ann.safetensors")  # never silently clean
    lines = []
    aligned = dataset.annotations(tmp_path / "ann.safetensors", allow_missing=True, report=lines.append)
    assert aligned.sigma_min.tolist() == [0.0, 0.2, 0.0, 0.7, 0.0]  # unannotated samples are clean when allowed
    assert lines == ["annotations: annotated 2 of 5 samples (3 missing -> clean, 0 extra ids ignored)"]
    wrong = Annotations(torch.tensor([3]), torch.tensor([0.7]), torch.zeros(1), keys=["other"])
    with pytest.raises(AnnotationMismatchError, match="k3"):
        dataset.annotations(wrong, allow_missing=True)
    with pytest.raises(AnnotationMismatchError, match="no annotation"):
        dataset.annotations(wrong)


def test_keyless_annotations_and_named_samples(tmp_path):
    images = torch.rand(3, 3, 4, 4) * 2 - 1
    keyless = Annotations(torch.arange(3), torch.tensor([0.0, 0.5, 0.0]), torch.zeros(3))
    with pytest.raises(AnnotationMismatchError, match="no keys"):
        TensorDataset(images, keys=["a", "b", "c"]).annotations(keyless)  # named samples: keys are required
    assert TensorDataset(images).annotations(keyless).sigma_min.tolist() == [0.0, 0.5, 0.0]  # positions only


def test_unreadable_samples_need_no_annotation_row(tmp_path):
    names = write_images(tmp_path, labels=False)
    (tmp_path / names[2]).write_bytes(b"broken")
    with pytest.warns(UserWarning, match=names[2]):
        dataset = FileDataset(tmp_path, on_error="skip")
    readable = [i for i in range(6) if i != 2]  # what `annotate` writes: no row for the unreadable file
    table = Annotations(torch.tensor(readable), torch.full((5,), 0.3, dtype=torch.float64), torch.zeros(5),
                        keys=[names[i] for i in readable])
    aligned = dataset.annotations(table)
    assert aligned.sigma_min[2] == float("inf") and aligned.sigma_min[0] == 0.3


def test_encode_writes_mean_and_std_latents(tmp_path):
    diffusers = pytest.importorskip("diffusers", reason="diffusers is optional; `dataset encode` needs it")
    from ambient_fast.data.encode import encode_dataset

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  layers_per_block=1, norm_num_groups=4, sample_size=8)
    vae.save_pretrained(tmp_path / "vae")
    names = write_images(tmp_path / "images", n=3)
    stats = encode_dataset(tmp_path / "images", tmp_path / "latents", vae_dir=tmp_path / "vae", batch_size=2, log=lambda *_: None)
    latents = FileDataset(tmp_path / "latents")
    assert latents.is_latent and len(latents) == 3 and latents.label_dim == 3
    assert latents.keys == [n.replace(".png", ".npy") for n in names]
    item = latents[1]
    assert item["image"].shape == (8, 4, 4) and item["label"] == 1
    posterior = vae.encode(FileDataset(tmp_path / "images")[1]["image"][None]).latent_dist
    torch.testing.assert_close(item["image"][:4], posterior.mean[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(item["image"][4:], posterior.std[0], atol=1e-5, rtol=1e-5)
    assert len(stats["latent_mean"]) == 4


def test_encode_without_a_vae_directory_is_a_clear_error(tmp_path):
    pytest.importorskip("diffusers")
    from ambient_fast.data.encode import encode_dataset

    write_images(tmp_path / "images", n=1)
    with pytest.raises(FileNotFoundError, match="AutoencoderKL directory"):
        encode_dataset(tmp_path / "images", tmp_path / "out", vae_dir=tmp_path / "missing", log=lambda *_: None)


def test_dataset_info_command(tmp_path, capsys):
    from ambient_fast import cli

    names = write_images(tmp_path)
    (tmp_path / names[1]).write_bytes(b"not a png")
    assert cli.main(["dataset", "info", str(tmp_path), "--verify"]) == 0
    out, err = capsys.readouterr()
    assert [line for line in err.splitlines() if line] == [  # one line per warning on the command line
        f"warning: skipping unreadable sample: cannot read {tmp_path / names[1]}: ValueError: not an image file Pillow "
        "can read (9 bytes)"]
    assert "6 samples, shape (3, 8, 8), images, 3 classes" in out and "unreadable: 1" in out and names[1] in out
    assert "usable at sigma 0.2: 0.833" in out  # the unreadable sample is never usable


@pytest.mark.parametrize("member", ["../../escaped.png", "/abs/absolute.png", "a/../../b.png", "..\\..\\c.png", "C:/d.png"])
def test_zip_members_that_would_leave_a_folder_are_refused_by_name(tmp_path, member, capsys):
    from ambient_fast.data.dataset import UnsafeNameError

    names = write_images(tmp_path / "images", n=1, labels=False)
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as archive:
        archive.writestr("ok.png", (tmp_path / "images" / names[0]).read_bytes())
        archive.writestr(member, (tmp_path / "images" / names[0]).read_bytes())
    with pytest.raises(UnsafeNameError, match=re.escape(f"member {member!r}")):
        FileDataset(tmp_path / "data.zip")
    user_error(capsys, ["dataset", "info", str(tmp_path / "data.zip")], r"^error: .*" + re.escape(f"member {member!r}"))


def test_unreadable_file_messages_name_the_file_not_a_buffer(tmp_path):
    names = write_images(tmp_path, n=2, labels=False)
    (tmp_path / names[1]).write_bytes(b"hello")
    with pytest.raises(CorruptSampleError) as caught:
        FileDataset(tmp_path)[1]
    assert str(tmp_path / names[1]) in str(caught.value) and "BytesIO" not in str(caught.value)


def test_grayscale_and_rgba_images_among_rgb_ones_are_converted(tmp_path):
    """A colour dataset (its first file is colour) reads every image as RGB: grayscale replicated, alpha dropped."""
    write_images(tmp_path, n=2, labels=False)
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(gray).save(tmp_path / "00000" / "img_gray.png")
    rgba = np.random.default_rng(1).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "00000" / "img_rgba.png")
    dataset = FileDataset(tmp_path)
    assert dataset.verify() == [] and dataset.shape == (3, 8, 8)
    by_key = {dataset.keys[i]: dataset[i]["image"] for i in range(len(dataset))}
    torch.testing.assert_close(by_key["00000/img_gray.png"], torch.from_numpy(gray).float().expand(3, 8, 8) / 127.5 - 1)
    torch.testing.assert_close(by_key["00000/img_rgba.png"], torch.from_numpy(rgba[..., :3]).float().permute(2, 0, 1) / 127.5 - 1)


def test_a_grayscale_dataset_stays_one_channel_and_refuses_colour_files_by_name(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"a{i}.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    dataset = FileDataset(tmp_path)
    assert dataset[0]["image"].shape == (1, 8, 8)
    with pytest.raises(CorruptSampleError, match=r"1 of 4 samples cannot be used: .*b\.png: .*colour.*grayscale.*a0\.png"):
        dataset.verify()


def test_verify_names_every_bad_file_at_once(tmp_path):
    names = write_images(tmp_path, labels=False)
    (tmp_path / names[1]).write_bytes(b"hello")
    (tmp_path / names[4]).write_bytes((tmp_path / names[4]).read_bytes()[:60])  # truncated after the header
    with pytest.raises(CorruptSampleError, match=rf"^2 of 6 samples cannot be used: .*{names[1]}.*{names[4]}"):
        FileDataset(tmp_path).verify()
