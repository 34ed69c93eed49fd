"""`dataset encode`: resuming after a crash, refusing foreign destinations, atomic writes, zip output."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_errors import user_error

from ambient_fast.data import FileDataset

Image = pytest.importorskip("PIL.Image")
diffusers = pytest.importorskip("diffusers", reason="diffusers is optional; `dataset encode` needs it")
from ambient_fast.data.encode import EncodeDestinationError, encode_dataset  # noqa: E402

quiet = {"log": lambda *_: None}


def save_vae(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  layers_per_block=1, norm_num_groups=4, sample_size=8)
    vae.save_pretrained(path)
    return path


def write_images(root: Path, n: int = 5, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        name = f"{i // 4:05d}/img{i:08d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name)
        names.append(name)
    (root / "dataset.json").write_text(json.dumps({"labels": [[name, i % 3] for i, name in enumerate(names)]}))
    return names


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("encode")
    write_images(root / "images")
    vae = save_vae(root / "vae")
    reference = root / "reference"
    stats = encode_dataset(root / "images", reference, vae_dir=vae, batch_size=2, **quiet)
    return root, vae, reference, stats


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def crash_on_encode_call(monkeypatch, call: int) -> None:
    """The VAE raises on its `call`-th encode (1-based), as a killed job would stop there."""
    original, calls = diffusers.AutoencoderKL.encode, []

    def encode(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise RuntimeError("simulated crash")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(diffusers.AutoencoderKL, "encode", encode)


def test_encode_resume_after_crash_matches_an_uninterrupted_run(setup, tmp_path, monkeypatch):
    root, vae, reference, reference_stats = setup
    assert reference_stats["encoded"] == 5 and reference_stats["reused"] == 0
    with monkeypatch.context() as patch:
        crash_on_encode_call(patch, call=2)  # the first batch (2 images) is written, then the job dies
        with pytest.raises(RuntimeError, match="simulated crash"):
            encode_dataset(root / "images", tmp_path / "out", vae_dir=vae, batch_size=2, **quiet)
    assert sorted(files(tmp_path / "out")) == ["00000/img00000000.npy", "00000/img00000001.npy", "encode.json"]
    assert json.loads((tmp_path / "out" / "encode.json").read_text())["complete"] is False
    stats = encode_dataset(root / "images", tmp_path / "out", vae_dir=vae, batch_size=2, **quiet)
    assert stats["encoded"] == 3 and stats["reused"] == 2
    for field in ("latent_mean", "latent_std", "num_images"):  # over all 5 images, not just the 3 new ones
        assert stats[field] == reference_stats[field]
    assert files(tmp_path / "out") == files(reference)  # byte-identical latents, dataset.json and manifest
    again = encode_dataset(root / "images", tmp_path / "out", vae_dir=vae, batch_size=2, **quiet)  # nothing left
    assert again["encoded"] == 0 and again["reused"] == 5 and again["latent_mean"] == reference_stats["latent_mean"]
    manual = np.stack([FileDataset(reference)[i]["image"][:4].double().numpy() for i in range(5)])
    np.testing.assert_allclose(stats["latent_mean"], manual.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(stats["latent_std"], manual.std(axis=(0, 2, 3)), rtol=1e-9)


def test_encode_refuses_destinations_holding_something_else(setup, tmp_path):
    root, vae, reference, _ = setup
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    with pytest.raises(EncodeDestinationError, match=r"no encode\.json.*notes\.txt"):
        encode_dataset(root / "images", tmp_path / "plain", vae_dir=vae, **quiet)
    assert files(tmp_path / "plain") == {"notes.txt": b"mine"}

    write_images(tmp_path / "other", n=5, seed=1)  # same names and count, another source
    with pytest.raises(EncodeDestinationError, match=r"a finished encoding of another source.*source: .*other"):
        encode_dataset(tmp_path / "other", reference, vae_dir=vae, **quiet)
    with pytest.raises(EncodeDestinationError, match=r"vae_dir: "):
        encode_dataset(root / "images", reference, vae_dir=save_vae(tmp_path / "vae2", seed=1), **quiet)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    encode_dataset(root / "images", foreign, vae_dir=vae, batch_size=2, **quiet)
    (foreign / "00000" / "stray.npy").write_bytes(b"x")
    with pytest.raises(EncodeDestinationError, match=r"not this encoding's.*00000/stray\.npy"):
        encode_dataset(root / "images", foreign, vae_dir=vae, **quiet)

    (tmp_path / "not-a-zip.zip").write_text("hello")
    with pytest.raises(EncodeDestinationError, match="not a zip"):
        encode_dataset(root / "images", tmp_path / "not-a-zip.zip", vae_dir=vae, **quiet)


def test_encode_leftover_temporary_file_is_not_taken_for_a_finished_one(setup, tmp_path, monkeypatch):
    root, vae, reference, reference_stats = setup
    out = tmp_path / "out"
    with monkeypatch.context() as patch:  # killed inside the write of the third file
        saves = []

        def save(file, array, *args, **kwargs):
            saves.append(1)
            if len(saves) == 3:
                file.write(b"\x93NUMPY half a file")
                raise KeyboardInterrupt
            return original_save(file, array, *args, **kwargs)

        original_save = np.save
        patch.setattr(np, "save", save)
        with pytest.raises(KeyboardInterrupt):
            encode_dataset(root / "images", out, vae_dir=vae, batch_size=2, **quiet)
    names = sorted(files(out))
    assert "00000/img00000002.npy" not in names and "00000/img00000002.npy.tmp" in names  # never under the final name
    assert len(FileDataset(out, use_labels=False)) == 2  # FileDataset does not list the temporary file

    (out / "00000" / "img00000001.npy").write_bytes(b"\x93NUMPY")  # e.g. truncated by a power loss
    stats = encode_dataset(root / "images", out, vae_dir=vae, batch_size=2, **quiet)
    assert stats["encoded"] == 4 and stats["reused"] == 1  # the truncated file and the .tmp one are re-encoded
    assert files(out) == files(reference)  # no .tmp left, everything byte-identical
    assert stats["latent_mean"] == reference_stats["latent_mean"]


def test_encode_zip_round_trips_through_file_dataset(setup, tmp_path, monkeypatch):
    root, vae, reference, reference_stats = setup
    target = tmp_path / "latents.zip"
    with monkeypatch.context() as patch:
        crash_on_encode_call(patch, call=3)
        with pytest.raises(RuntimeError, match="simulated crash"):
            encode_dataset(root / "images", target, vae_dir=vae, batch_size=2, **quiet)
    assert not target.exists() and len(list((tmp_path / "latents.zip.partial").rglob("*.npy"))) == 4
    stats = encode_dataset(root / "images", target, vae_dir=vae, batch_size=2, **quiet)
    assert stats["encoded"] == 1 and stats["reused"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latents.zip"]  # work folder and .tmp gone
    folder, zipped = FileDataset(reference), FileDataset(target)
    assert zipped.is_latent and zipped.keys == folder.keys and zipped.label_dim == folder.label_dim == 3
    assert zipped.labels.tolist() == folder.labels.tolist() == [0, 1, 2, 0, 1]
    for i in range(len(folder)):
        torch.testing.assert_close(zipped[i]["image"], folder[i]["image"], rtol=0, atol=0)
    with zipfile.ZipFile(target) as archive:
        assert archive.namelist() == folder.keys + ["dataset.json", "encode.json"]
        assert all(archive.read(name) == (reference / name).read_bytes() for name in archive.namelist())
    for field in ("latent_mean", "latent_std", "num_images"):
        assert stats[field] == reference_stats[field]

    uninterrupted = tmp_path / "again" / "latents.zip"
    encode_dataset(root / "images", uninterrupted, vae_dir=vae, batch_size=2, **quiet)
    assert uninterrupted.read_bytes() == target.read_bytes()  # fixed timestamps: the same zip bytes

    done = encode_dataset(root / "images", target, vae_dir=vae, batch_size=2, **quiet)  # finished: nothing to do
    assert done["encoded"] == 0 and done["latent_std"] == reference_stats["latent_std"]
    write_images(tmp_path / "other", n=5, seed=1)
    with pytest.raises(EncodeDestinationError, match="another source"):
        encode_dataset(tmp_path / "other", target, vae_dir=vae, **quiet)


def test_encode_command_writes_a_zip(setup, tmp_path, capsys):
    from ambient_fast import cli

    root, vae, reference, reference_stats = setup
    assert cli.main(["dataset", "encode", str(root / "images"), str(tmp_path / "l.zip"), "--vae", str(vae),
                     "--batch-size", "2", "--device", "cpu"]) == 0
    assert FileDataset(tmp_path / "l.zip").keys == FileDataset(reference).keys
    assert json.dumps(reference_stats["latent_mean"]) in capsys.readouterr().out


def test_encode_never_writes_outside_the_destination(setup, tmp_path, monkeypatch, capsys):
    """A zip whose members are named ../../escaped.png or /abs/path.png is refused by `dataset encode` (one line
    naming the member) before anything is written; the encoder's own containment check holds even when the
    dataset's name check is bypassed."""
    from ambient_fast.data import dataset as dataset_module

    root, vae, _, _ = setup
    image = (root / "images" / "00000" / "img00000000.png").read_bytes()
    source = tmp_path / "evil.zip"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("ok.png", image)
        archive.writestr("../../escaped.png", image)
        archive.writestr(str(tmp_path / "abs" / "absolute.png"), image)
    destination = tmp_path / "d1" / "d2" / "out"

    def written_outside():
        return sorted(str(p) for p in tmp_path.rglob("*.npy*") if destination not in p.parents)

    user_error(capsys, ["dataset", "encode", str(source), str(destination), "--vae", str(vae), "--device", "cpu"],
               r"^error: .*member '\.\./\.\./escaped\.png'.*relative names")
    assert written_outside() == [] and not destination.exists()

    monkeypatch.setattr(dataset_module, "unsafe_name", lambda name: False)  # a dataset that lets them through
    with pytest.raises(dataset_module.UnsafeNameError, match=r"\.\./\.\./escaped\.npy.*outside"):
        encode_dataset(source, destination, vae_dir=vae, **quiet)
    assert written_outside() == []
