"""Every `ambient-fast` command on malformed inputs ends in one line the user can act on, and changes nothing.

The commands are enumerated from the parser itself (ambient_fast.cli.build_parser), so a new command is covered
automatically: with its recipe below (which arguments are inputs of which kind, which are outputs), or else through
a fallback that puts each malformed input into every argument it requires and every positional. The malformed
inputs (built in tmp, tiny): a missing path, empty files and folders, a truncated PNG / safetensors / .npz / .npy /
zip / JSON, .npz images of the wrong dtype or shape, a zip with a '../' member, a valid file of another kind,
annotations of another dataset, a run whose checkpoint is truncated, a broken VAE folder, and an output under a
regular file. Each case gives one malformed value to one argument, every other argument valid, runs the command
in-process through cli.main and checks:
  - exit status 2;
  - stderr: no traceback, exactly one line starting with "error:", and it is the last line. Lines before it are the
    progress lines of a command that did start (e.g. "skipping unreadable image ..."): they never start with
    "error:", which is how they are told apart from the error;
  - the whole tmp tree (inputs, outputs, the working directory) is exactly as before: no file written outside the
    target (a hostile zip member climbs to the tmp root), no partial output (*.tmp, half-written files, parts
    folders, empty output folders), every pre-existing file untouched (compared by SHA-256). Tests run as root,
    where chmod does not stop a write: an unwritable output is a path under a regular file.
Then bad option values (BAD_VALUES), the defaults in every --help, and --debug (a traceback; a bug keeps its own).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ambient_fast import cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script / load of the stand-in weights

SIZE, COUNT = 8, 16
TINY_SETTINGS = ("total_steps=1", "batch_size=8", "log_every=1", "snapshot_every=0", "checkpoint_every=1",
                 "lr_rampup_steps=0", "cpu_threads=1", "network.model_channels=8", "network.channel_mult=[1]")
TINY_TRAIN = ["--preset", "tiny-cpu", "--device", "cpu", *[a for s in TINY_SETTINGS for a in ("--set", s)]]


# --------------------------------------------------------------------------------------------- the inputs
def _png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _pngs(folder: Path, seeds) -> Path:
    folder.mkdir(parents=True)
    for seed in seeds:
        (folder / f"img{seed:04d}.png").write_bytes(_png_bytes(seed))
    return folder


def identity_denoiser():
    """measure-crop-size's --denoiser factory: D(x, sigma) = x."""
    return lambda x, sigma: x


class _Pool(torch.nn.Module):
    def forward(self, x, return_features: bool = False):
        return x.mean(dim=(2, 3))


def _run(*argv: str) -> None:
    assert cli.main([str(a) for a in argv]) == 0, argv


def _valid_inputs(root: Path) -> dict[str, Path]:
    """One valid input of each kind, made with the commands themselves (tiny models, a few steps)."""
    from ambient_fast.annotate.crop_size import CropTable
    from ambient_fast.annotate.synthetic import blurred, random_fields
    from ambient_fast.annotations import Annotations
    from ambient_fast.data import FileDataset

    valid = {"images": _pngs(root / "images", range(COUNT))}
    valid["images32"] = root / "images32"  # the resolution of the CIFAR-10 experiments
    valid["images32"].mkdir()
    for i in range(COUNT):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            valid["images32"] / f"{i:04d}.png")
    clean = random_fields(torch.arange(COUNT), resolution=SIZE)
    np.savez(root / "corrupted.npz", images=blurred(random_fields(torch.arange(COUNT, 2 * COUNT), resolution=SIZE),
                                                   1.0).numpy())
    np.savez(root / "clean.npz", images=clean.numpy())
    valid.update(clean=root / "clean.npz", corrupted=root / "corrupted.npz")
    keys = FileDataset(valid["images"]).keys
    valid["annotations"] = root / "ann.safetensors"
    Annotations(torch.arange(COUNT), torch.tensor([0.0, 0.1] * (COUNT // 2), dtype=torch.float64),
                torch.zeros(COUNT), keys=keys).save(valid["annotations"])
    valid["more_annotations"] = root / "more.safetensors"  # disjoint ids: merges with the first file
    Annotations(torch.arange(COUNT, COUNT + 4), torch.zeros(4, dtype=torch.float64), torch.zeros(4),
                keys=[f"more{i}.png" for i in range(4)]).save(valid["more_annotations"])
    (root / "trusted.txt").write_text("\n".join(keys[:4]) + "\n")
    valid["trusted"] = root / "trusted.txt"
    np.save(root / "scores.npy", np.linspace(0, 1, COUNT))
    valid["scores"] = root / "scores.npy"
    CropTable((0.1, 1.0), (2, 4)).save(root / "table.json")
    valid["crop_table"] = root / "table.json"
    valid["classifier"] = root / "clf.safetensors"
    _run("annotate", "train-classifier", "--clean", valid["clean"], "--corrupted", valid["corrupted"], "--out",
         valid["classifier"], "--steps", "2", "--folds", "2", "--model-channels", "4", "--channel-mult", "1",
         "--batch-size", "8", "--report-samples", "8", "--report-draws", "1", "--levels", "8", "--no-figure")
    valid["crops"] = root / "crops.safetensors"
    _run("annotate", "train-crops", "--target", valid["clean"], "--other", valid["corrupted"], "--out", valid["crops"],
         "--steps", "2", "--crop-sizes", "4", "--model-channels", "4", "--channel-mult", "1", "--batch-size", "8")
    valid["run"] = root / "run"
    _run("train", "--data", valid["images"], "--run-dir", valid["run"], *TINY_TRAIN)
    valid["weights"] = root / "pool.pt"  # a TorchScript stand-in for Inception (trusted: --trust-torchscript)
    torch.jit.script(_Pool()).save(str(valid["weights"]))
    try:
        from test_encode import save_vae

        valid["vae"] = save_vae(root / "vae")
    except ImportError:  # diffusers is optional: encode then stops at the VAE, which the check still covers
        valid["vae"] = root / "no-vae"
    return valid


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _malformed(root: Path, valid: dict[str, Path]) -> dict[str, Path]:
    """Malformed inputs, by name."""
    root.mkdir()
    bad = {"missing": root / "does-not-exist"}
    for suffix in ("", ".png", ".npz", ".npy", ".json", ".safetensors", ".zip", ".pt"):
        bad[f"empty{suffix or '-file'}"] = root / f"empty{suffix}"
        bad[f"empty{suffix or '-file'}"].write_bytes(b"")
    bad["empty-dir"] = root / "empty-dir"
    bad["empty-dir"].mkdir()
    bad["truncated.png"] = root / "truncated.png"
    bad["truncated.png"].write_bytes(_png_bytes(0)[:40])
    bad["dir-of-truncated-png"] = root / "truncated-pngs"
    bad["dir-of-truncated-png"].mkdir()
    (bad["dir-of-truncated-png"] / "a.png").write_bytes(_png_bytes(0)[:40])
    bad["truncated.safetensors"] = root / "truncated.safetensors"
    bad["truncated.safetensors"].write_bytes(valid["annotations"].read_bytes()[:200])
    bad["garbage.safetensors"] = root / "garbage.safetensors"
    bad["garbage.safetensors"].write_bytes(b"\xff" * 64)
    bad["not-a-classifier.safetensors"] = valid["annotations"]  # a valid file of another kind
    bad["other-dataset.safetensors"] = root / "other-dataset.safetensors"  # annotates ids the dataset lacks
    from ambient_fast.annotations import Annotations

    Annotations(torch.arange(100, 104), torch.zeros(4, dtype=torch.float64), torch.zeros(4),
                keys=[f"x{i}.png" for i in range(4)]).save(bad["other-dataset.safetensors"])
    bad["npz-wrong-dtype"] = root / "wrong-dtype.npz"
    np.savez(bad["npz-wrong-dtype"], images=np.array([["a"] * SIZE] * 4))
    bad["npz-complex"] = root / "complex.npz"
    np.savez(bad["npz-complex"], images=np.zeros((4, 3, SIZE, SIZE), dtype=np.complex64))
    bad["npz-wrong-shape"] = root / "wrong-shape.npz"
    np.savez(bad["npz-wrong-shape"], images=np.zeros((4, SIZE, SIZE), dtype=np.float32))
    bad["npz-one-channel"] = root / "one-channel.npz"
    np.savez(bad["npz-one-channel"], images=np.zeros((4, 1, SIZE, SIZE), dtype=np.float32))
    bad["npz-no-images"] = root / "no-images.npz"
    np.savez(bad["npz-no-images"], other=np.zeros(3))
    bad["truncated.npz"] = root / "truncated.npz"
    bad["truncated.npz"].write_bytes(valid["clean"].read_bytes()[:300])
    bad["npy-wrong-dtype"] = root / "wrong-dtype.npy"
    np.save(bad["npy-wrong-dtype"], np.array(["a"] * COUNT))
    bad["npy-wrong-shape"] = root / "wrong-shape.npy"
    np.save(bad["npy-wrong-shape"], np.zeros((COUNT, 2)))
    bad["truncated.npy"] = root / "truncated.npy"
    bad["truncated.npy"].write_bytes(valid["scores"].read_bytes()[:100])
    bad["hostile.zip"] = _zip(root / "hostile.zip", {"a.png": _png_bytes(1), "../../../escaped.png": _png_bytes(2)})
    bad["truncated.zip"] = root / "truncated.zip"
    bad["truncated.zip"].write_bytes(_zip(root / "whole.zip", {f"{i}.png": _png_bytes(i) for i in range(4)})
                                     .read_bytes()[:150])
    bad["truncated.json"] = root / "truncated.json"
    bad["truncated.json"].write_text('{"sigma": [0.1, ')
    bad["wrong.json"] = root / "wrong.json"
    bad["wrong.json"].write_text('{"sigma": [1.0, 0.1], "crop": ["a", 2]}')
    bad["unknown-names.txt"] = root / "unknown-names.txt"
    bad["unknown-names.txt"].write_text("nobody.png\n")
    bad["run-with-truncated-checkpoint"] = root / "bad-run"
    bad["run-with-truncated-checkpoint"].mkdir()
    for checkpoint in sorted(valid["run"].glob("training-*")):
        target = bad["run-with-truncated-checkpoint"] / checkpoint.name
        target.write_bytes(checkpoint.read_bytes()[:100] if checkpoint.is_file() else b"")
    bad["vae-garbage-config"] = root / "bad-vae"
    bad["vae-garbage-config"].mkdir()
    (bad["vae-garbage-config"] / "config.json").write_text("{not json")
    return bad


IMAGES = ("missing", "empty-file", "empty.png", "empty.npz", "empty-dir", "truncated.png", "dir-of-truncated-png",
          "npz-wrong-dtype", "npz-complex", "npz-wrong-shape", "npz-no-images", "truncated.npz", "hostile.zip",
          "truncated.zip", "empty.zip")
KINDS = {  # kind of input (the key of its valid value) -> the malformed inputs tried in its place
    "images": IMAGES,
    "images32": IMAGES,
    "annotations": ("missing", "empty.safetensors", "empty-dir", "truncated.safetensors", "garbage.safetensors",
                    "other-dataset.safetensors"),
    "classifier": ("missing", "empty.safetensors", "empty-dir", "truncated.safetensors", "garbage.safetensors",
                   "not-a-classifier.safetensors"),
    "crops": ("missing", "empty.safetensors", "truncated.safetensors", "not-a-classifier.safetensors"),
    "crop_table": ("missing", "empty.json", "truncated.json", "wrong.json", "empty-dir"),
    "trusted": ("missing", "empty-file", "unknown-names.txt", "truncated.json"),
    "scores": ("missing", "empty.npy", "truncated.npy", "npy-wrong-dtype", "npy-wrong-shape", "empty.json",
               "truncated.json"),
    "run": ("missing", "empty-dir", "empty.pt", "truncated.safetensors", "run-with-truncated-checkpoint"),
    "vae": ("missing", "empty-dir", "empty-file", "vae-garbage-config"),
    "weights": ("missing", "empty.pt", "empty-dir", "truncated.safetensors"),
}
OUTPUT_KINDS = ("under-a-file",)


# ------------------------------------------------------------------------------------------------ recipes
@dataclass
class Recipe:
    """How to run a command with valid inputs: fixed arguments, input slots (option, or None for a positional ->
    kind of input) and output slots (option or None -> 'file' or 'dir'), in command-line order."""

    fixed: list[str] = field(default_factory=list)
    inputs: list[tuple[str | None, str]] = field(default_factory=list)
    outputs: list[tuple[str | None, str]] = field(default_factory=list)
    accepts: tuple[str, ...] = ()  # "option|malformed" inputs that are valid for this command (reason beside it)
    env: dict[str, str] = field(default_factory=dict)  # "{weights}": the valid input of that kind


TRAIN_CLASSIFIER = ["--steps", "1", "--folds", "2", "--model-channels", "4", "--channel-mult", "1", "--batch-size", "8",
                    "--report-samples", "8", "--report-draws", "1", "--levels", "8", "--no-figure"]
SIGMA_MIN = ["--levels", "8", "--draws", "1", "--unit", "64", "--if-uninformative", "per-sample", "--device", "cpu"]
RECIPES = {  # by command, as commands() names them
    "info": Recipe(),
    "train": Recipe(TINY_TRAIN, [("--data", "images"), ("--annotations", "annotations")], [("--run-dir", "dir")]),
    "generate": Recipe(["--num", "2", "--steps", "2", "--device", "cpu"], [(None, "run"), ("--guide", "run")],
                       [("--png", "file"), ("--npz", "file")]),
    "dataset encode": Recipe(["--device", "cpu", "--batch-size", "4"], [(None, "images"), ("--vae", "vae")],
                             [(None, "dir")]),
    "dataset info": Recipe(["--verify"], [(None, "images"), ("--annotations", "annotations")]),
    "dataset to-shards": Recipe(["--samples-per-shard", "4"], [(None, "images")], [(None, "dir")],
                                # an .npz is a zip, and this one holds one float [4, S, S] .npy: a one-sample latent set
                                accepts=("arg|npz-wrong-shape",)),
    "corrupt": Recipe(["--corruption", "gaussian_blur"], [("--source", "images")], [("--out", "dir")]),
    "eval": Recipe([], [("--generated", "images"), ("--test", "images"), ("--train", "images")],
                   [("--json", "file")]),
    "experiment": Recipe(["cifar10-blur1.0", "--device", "cpu", "--seeds", "0"],
                         [("--data", "images32"), ("--test", "images32")], [("--out", "dir")],
                         env={"AMBIENT_FAST_INCEPTION_WEIGHTS": "{weights}", "AMBIENT_FAST_TRUST_TORCHSCRIPT": "1"}),
    "annotate train-classifier": Recipe(TRAIN_CLASSIFIER, [("--clean", "images"), ("--corrupted", "images")],
                                        [("--out", "file")]),
    "annotate sigma-min": Recipe(SIGMA_MIN, [("--images", "images"), ("--classifier", "classifier"),
                                             ("--trusted", "trusted"), ("--base", "annotations")],
                                 [("--out", "file")], accepts=("--trusted|empty-file",)),  # no more trusted images
    "annotate weights": Recipe(["--levels", "4", "--draws", "1", "--device", "cpu"],
                               [("--images", "images"), ("--classifier", "classifier"),
                                ("--annotations", "annotations")], [("--out", "file")]),
    "annotate train-crops": Recipe(["--steps", "1", "--crop-sizes", "4", "--model-channels", "4", "--channel-mult",
                                    "1", "--batch-size", "8"], [("--target", "images"), ("--other", "images")],
                                   [("--out", "file")]),
    "annotate sigma-max": Recipe(["--device", "cpu"], [("--images", "images"), ("--classifier", "crops"),
                                                       ("--crop-table", "crop_table"), ("--base", "annotations")],
                                 [("--out", "file")]),
    "annotate from-quality": Recipe([], [("--images", "images"), ("--scores", "scores")], [("--out", "file")]),
    "annotate measure-crop-size": Recipe(["--denoiser", "test_cli_fuzz:identity_denoiser", "--sigmas", "0.1,1",
                                          "--max-images", "4", "--device", "cpu"], [("--images", "images")],
                                         [("--out", "file")]),
    # An annotation file of another dataset is still one to show or merge (neither command has a dataset).
    "annotate show": Recipe([], [(None, "annotations")], [("--png", "file")],
                            accepts=("arg|other-dataset.safetensors",)),
    "annotate merge": Recipe([], [(None, "annotations")], [("--out", "file")],
                             accepts=("arg|other-dataset.safetensors",)),
}
VARIANTS = {  # other ways to call a command: label -> (command, recipe)
    "eval --inception": ("eval", Recipe(["--trust-torchscript", "--inception"],
                                        [(None, "weights"), ("--generated", "images"), ("--test", "images")])),
    "annotate train-classifier --images": ("annotate train-classifier", Recipe(
        TRAIN_CLASSIFIER, [("--images", "images"), ("--trusted", "trusted")], [("--out", "file")])),
    "annotate from-quality --metric": ("annotate from-quality", Recipe(["--metric", "sharpness"],
                                                                       [("--images", "images")], [("--out", "file")])),
    # an annotation file where show expects a classifier is shown as what it is
    "annotate show classifier": ("annotate show", Recipe([], [(None, "classifier")], [("--png", "file")],
                                                         accepts=("arg|not-a-classifier.safetensors",))),
}


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[str, argparse.ArgumentParser]:
    """Every runnable command of the parser ('annotate sigma-min' -> its parser), found by walking the subparsers."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(commands(sub, (*prefix, name)))
    if not found and prefix:
        found[" ".join(prefix)] = parser
    return found


def _fallback(parser: argparse.ArgumentParser) -> Recipe:
    """A command without a recipe: every argument it requires (and every positional) takes the malformed input, as
    images (an argument with choices takes its first choice)."""
    recipe = Recipe()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or (action.option_strings and not action.required):
            continue
        option = action.option_strings[0] if action.option_strings else None
        if action.choices:
            recipe.fixed += [option, next(iter(action.choices))] if option else [next(iter(action.choices))]
        else:
            recipe.inputs.append((option, "images"))
    return recipe


def _recipes() -> dict[str, tuple[str, Recipe]]:
    """label -> (command, recipe): every command of the parser (its recipe, else the fallback), and the variants."""
    found = commands(cli.build_parser())
    return {**{name: (name, RECIPES.get(name) or _fallback(parser)) for name, parser in found.items()}, **VARIANTS}


def _cases():
    for label, (_, recipe) in sorted(_recipes().items()):
        for slot, (option, kind) in enumerate(recipe.inputs):
            for malformed in KINDS[kind]:
                if f"{option or 'arg'}|{malformed}" not in recipe.accepts:
                    yield pytest.param(label, "input", slot, malformed, id=f"{label}|{option or 'arg'}|{malformed}")
        for slot, (option, _) in enumerate(recipe.outputs):
            for malformed in OUTPUT_KINDS:
                yield pytest.param(label, "output", slot, malformed, id=f"{label}|{option or 'arg'}|{malformed}")


def _argv(command: str, recipe: Recipe, valid, bad, target: Path, replace: tuple[str, int, str]) -> list[str]:
    argv = [*command.split(" "), *recipe.fixed]
    for index, (option, kind) in enumerate(recipe.inputs):
        value = bad[replace[2]] if replace[:2] == ("input", index) else valid[kind]
        argv += [option, str(value)] if option else [str(value)]
    for index, (option, kind) in enumerate(recipe.outputs):
        value = target / f"out{index}" / ("result.safetensors" if kind == "file" else "folder")
        if replace[:2] == ("output", index):
            value = bad["blocker"] / "sub" / value.name  # under a regular file: cannot be created
        argv += [option, str(value)] if option else [str(value)]
    if command == "annotate merge":  # two files: the other one valid (disjoint ids)
        argv.insert(2, str(valid["more_annotations"]))
    return argv


# -------------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fuzz")
    valid = _valid_inputs(root / "valid")
    bad = _malformed(root / "bad", valid)
    bad["blocker"] = root / "blocker"
    bad["blocker"].write_text("a regular file: nothing can be created under it\n")
    (root / "cwd").mkdir()
    yield root, valid, bad
    torch.set_num_threads(threads)


def _snapshot(root: Path) -> dict[str, str]:
    """Every file (SHA-256) and folder under root."""
    state = {}
    for path in sorted(root.rglob("*")):
        state[str(path.relative_to(root))] = (hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file()
                                              else "dir" if path.is_dir() else "other")
    return state


@pytest.mark.parametrize("label, where, slot, malformed", list(_cases()))
def test_malformed_input_is_one_line_and_changes_nothing(fuzz_root, label, where, slot, malformed, capsys,
                                                         monkeypatch):
    root, valid, bad = fuzz_root
    monkeypatch.chdir(root / "cwd")
    for variable in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(variable, raising=False)
    command, recipe = _recipes()[label]
    for variable, value in recipe.env.items():
        monkeypatch.setenv(variable, value.format(**valid))
    argv = _argv(command, recipe, valid, bad, root / "target", (where, slot, malformed))
    before = _snapshot(root)
    capsys.readouterr()
    status = cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, f"{argv}\nstatus {status}\n{err[-2000:]}"
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err[-2000:]
    after = _snapshot(root)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                             if before.get(k) != after.get(k)}


def test_every_command_is_covered():
    """Every command of the parser is run above (with its recipe, or the fallback), and every recipe names one."""
    names = set(commands(cli.build_parser()))
    assert {"train", "generate", "dataset encode", "dataset info", "annotate sigma-min", "annotate merge"} <= names
    assert set(RECIPES) <= names and {command for command, _ in VARIANTS.values()} <= names
    covered = {_recipes()[label][0] for label, *_ in (case.values for case in _cases())}
    assert names - covered == {"info"}  # it reads no input and writes no file


BAD_VALUES = [  # (argv with {valid} names, what the error line says)
    (["annotate", "train-classifier", "--clean", "{clean}", "--corrupted", "{corrupted}", "--out", "{target}/a",
      "--folds", "1"], "folds >= 2"),
    (["annotate", "train-classifier", "--clean", "{clean}", "--corrupted", "{corrupted}", "--out", "{target}/a",
      "--levels", "0"], ">= 2 levels"),
    (["annotate", "train-classifier", "--clean", "{clean}", "--corrupted", "{corrupted}", "--out", "{target}/a",
      "--batch-size", "3"], "even"),
    (["annotate", "train-classifier", "--clean", "{clean}", "--corrupted", "{corrupted}", "--out", "{target}/a",
      "--model-channels", "0"], "positive integer"),
    (["annotate", "sigma-min", "--images", "{images}", "--classifier", "{classifier}", "--out", "{target}/b",
      "--threads", "-3"], "integer >= 0"),
    (["annotate", "sigma-min", "--images", "{images}", "--classifier", "{classifier}", "--out", "{target}/b",
      "--device", "no-such-device"], "torch device"),
    (["annotate", "sigma-min", "--images", "{images}", "--classifier", "{classifier}", "--out", "{target}/b",
      "--if-uninformative", "per-sample", "--eps", "0.7"], "eps"),
    (["annotate", "train-crops", "--target", "{clean}", "--other", "{corrupted}", "--out", "{target}/c", "--steps",
      "0"], "positive integer"),
    (["annotate", "from-quality", "--images", "{images}", "--metric", "sharpness", "--out", "{target}/d",
      "--fraction", "2"], "fraction"),
    (["annotate", "measure-crop-size", "--denoiser", "no_such_module:f", "--images", "{images}", "--sigmas", "0.1",
      "--out", "{target}/e.json"], "No module named"),
    (["annotate", "measure-crop-size", "--denoiser", "test_cli_fuzz:identity_denoiser", "--images", "{images}",
      "--sigmas", "-1", "--out", "{target}/e.json"], "values > 0"),
    (["annotate", "show", "{annotations}", "--png", "{target}/f.png", "--sigma-lo", "-1"], "sigma-lo"),
    (["train", "--data", "{images}", "--run-dir", "{target}/r", "--set", "batch_size=0"], "batch_size"),
    (["train", "--data", "{images}", "--run-dir", "{target}/r", "--set", "no_such_field=1"], "no_such_field"),
    (["generate", "{run}", "--num", "2", "--steps", "2", "--device", "cpu", "--guidance", "2"], "--guide"),
    (["generate", "{run}", "--num", "2", "--steps", "2", "--device", "cpu", "--class-label", "3"], "unconditional"),
    (["generate", "{run}", "--num", "2", "--steps", "2", "--device", "cpu", "--png", "{target}/grid.jpeg"], ".png"),
    (["corrupt", "--source", "{images}", "--out", "{target}/g", "--corruption", "gaussian_blur", "--param",
      "no_such=1"], "no parameter"),
    (["corrupt", "--source", "{images}", "--out", "{target}/g", "--corruption", "gaussian_blur", "--param",
      "sigma_px=-1"], "sigma_px"),
    (["eval", "--generated", "{images}", "--test", "{images32}"], "one shape"),
    (["experiment", "no-such-experiment"], "--list"),
    (["no-such-command"], "invalid choice"),
]


@pytest.mark.parametrize("argv, match", BAD_VALUES, ids=[" ".join(a[:2]) + f" {m}" for a, m in BAD_VALUES])
def test_bad_values_are_one_line_and_change_nothing(fuzz_root, argv, match, capsys, monkeypatch):
    from cli_errors import user_error

    root, valid, _ = fuzz_root
    monkeypatch.chdir(root / "cwd")
    before = _snapshot(root)
    user_error(capsys, [a.format(target=root / "target", **valid) for a in argv], match)
    assert _snapshot(root) == before


def test_help_shows_every_default():
    """Every option with a default says it in --help (HelpFormatter), in every command."""
    for name, parser in {"": cli.build_parser(), **commands(cli.build_parser())}.items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if cli._default_text(action) is not None:
                text = formatter._format_action(action)
                assert "default" in text.lower(), (name, action.option_strings, text)


def test_debug_shows_the_traceback_and_a_bug_is_never_hidden(tmp_path, capsys, monkeypatch):
    for argv in (["--debug", "dataset", "info", str(tmp_path / "missing")],
                 ["dataset", "info", str(tmp_path / "missing"), "--debug"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and err.splitlines()[-1].startswith("error: dataset ")
    from ambient_fast import info

    def broken():
        raise ValueError("a bug, not an input error")

    monkeypatch.setattr(info, "describe", broken)
    with pytest.raises(ValueError, match="a bug"):  # a bare ValueError is not a user error: it keeps its traceback
        cli.main(["info"])
