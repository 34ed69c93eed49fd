"""Caption embeddings for `ambient-fast generate --captions`: sample i is drawn for caption row i.

Accepted: the file format of `dataset to-shards --captions` (.npy [N, T, D] or [N, D], or .npz with 'embedding' and
optional bool 'mask' [N, T]), the same two arrays in a .safetensors file, or a shard set made with captions (its
samples' captions in sample id order). Embeddings come from the text encoder the run was trained with; no
encoder runs here.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.caption_arrays import checked_captions, read_caption_arrays
from ..errors import UserError


def load_prompt_captions(path: str | Path, *, caption_dim: int, num: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding float32 [n, T, caption_dim], mask bool [n, T]) of the first n rows: n = num, or every row when
    num is None (a shard set: at most 64). A missing file, a wrong width or too few rows is a one-line UserError."""
    path = Path(path)
    if path.is_dir():
        embedding, mask = _from_shards(path, num)
    elif path.suffix.lower() == ".safetensors":
        embedding, mask = _from_safetensors(path)
    else:
        embedding, mask = _from_numpy(path)
    if embedding.shape[-1] != caption_dim:
        raise UserError(f"--captions {path}: embeddings are {embedding.shape[-1]} wide ({list(embedding.shape)}), but "
                        f"the run's caption branch takes caption_dim={caption_dim}")
    if num is not None and embedding.shape[0] < num:
        raise UserError(f"--captions {path}: {embedding.shape[0]} captions for --num {num} samples (sample i uses "
                        f"caption i); give --num {embedding.shape[0]} or more captions")
    rows = embedding.shape[0] if num is None else num
    return embedding[:rows].float(), mask[:rows]


def _from_numpy(path: Path):
    return checked_captions(path, *read_caption_arrays(path, formats=".npy, .npz or .safetensors"))


def _from_safetensors(path: Path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as error:
        raise UserError(f"--captions {path}: cannot read it as safetensors ({error})") from error
    if "embedding" not in tensors:
        raise UserError(f"--captions {path}: needs an 'embedding' tensor (and optionally 'mask'); it has "
                        f"{sorted(tensors)}")
    return checked_captions(path, tensors["embedding"], tensors.get("mask"))


def _from_shards(path: Path, num: int | None):
    from ..data.streaming import ShardDataset, is_shard_set

    if not is_shard_set(path):
        raise UserError(f"--captions {path}: a folder must be a shard set (dataset to-shards --captions)")
    shards = ShardDataset(path)
    if not shards.has_captions:
        raise UserError(f"--captions {path}: this shard set holds no captions (made without --captions)")
    count = min(len(shards), 64) if num is None else num
    if len(shards) < count:
        raise UserError(f"--captions {path}: {len(shards)} samples for --num {count} (sample i uses sample id i's "
                        "caption)")
    items = [shards[i] for i in range(count)]
    return torch.stack([item["caption"] for item in items]), torch.stack([item["caption_mask"] for item in items])
