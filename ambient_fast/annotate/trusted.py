"""Which images of a dataset the user trusts (the clean set S_G), from a subfolder, a list or a labels file.

The paper trains on the union of the annotated set and the trusted images at sigma_min = 0. A dataset's keys are
its files' relative POSIX names (ambient_fast.data), so trust is given by name:
  * a subfolder of the dataset (`--trusted good/`, or its path): every image under it;
  * a text file: one key per line (blank lines and lines starting with # are ignored);
  * a JSON file: a list of keys, or an object {key: true | false}.
A name that matches no image is an error (a typo would otherwise silently distrust an image).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch


def _is_under(key: str, folder: str) -> bool:
    return key.startswith(folder.rstrip("/") + "/")


def read_trusted_names(spec: str, *, root: str | Path | None = None) -> tuple[list[str], str]:
    """(names, kind): the keys (or one folder prefix, kind "folder") that `spec` names."""
    path = Path(spec)
    if root is not None and not path.is_absolute():
        inside = Path(root) / spec
        if inside.is_dir():
            return [Path(spec).as_posix().rstrip("/")], "folder"
    if path.is_dir():
        if root is None:
            raise ValueError(f"--trusted {spec} is a folder but the images are not a folder it could be part of")
        try:
            return [path.resolve().relative_to(Path(root).resolve()).as_posix()], "folder"
        except ValueError:
            raise ValueError(f"--trusted folder {spec} is not inside the image folder {root}") from None
    if not path.is_file():
        raise FileNotFoundError(f"--trusted {spec}: no such subfolder of {root} and no such file")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"--trusted {spec} is not valid JSON: {error}") from None
        if isinstance(value, dict):
            return [str(k) for k, trusted in value.items() if trusted], "list"
        if isinstance(value, list):
            return [str(k) for k in value], "list"
        raise ValueError(f"--trusted {spec} must hold a JSON list of names or an object {{name: true|false}}")
    names = [line.strip() for line in text.splitlines()]
    return [n for n in names if n and not n.startswith("#")], "list"


def trusted_mask(keys: list[str], spec: str, *, root: str | Path | None = None) -> torch.Tensor:
    """bool [N]: which of the dataset's keys are trusted according to `spec` (see the module docstring)."""
    names, kind = read_trusted_names(spec, root=root)
    if kind == "folder":
        mask = torch.tensor([_is_under(key, names[0]) for key in keys], dtype=torch.bool)
        if not bool(mask.any()):
            raise ValueError(f"--trusted folder {names[0]!r} holds none of the dataset's readable images")
        return mask
    wanted = set(names)
    unknown = sorted(wanted - set(keys))
    if unknown:
        raise ValueError(f"--trusted {spec}: {len(unknown)} of {len(wanted)} names are not images of the dataset "
                         f"(first: {unknown[:3]}); names are paths relative to the image folder")
    return torch.tensor([key in wanted for key in keys], dtype=torch.bool)
