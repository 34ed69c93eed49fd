"""The one reader and checker of caption-embedding files, shared by `dataset to-shards --captions`
(data/streaming.py) and `generate --captions` (train/prompt_captions.py): a .npy [N, T, D] or [N, D] (one pooled
token), or an .npz with 'embedding' and optional bool 'mask' [N, T]. Every refusal is a one-line UserError."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

Array = np.ndarray | torch.Tensor


def read_caption_arrays(path: str | Path, *, formats: str = ".npy or .npz") -> tuple[np.ndarray, np.ndarray | None]:
    """(embedding, mask or None) as stored in a .npy or .npz, unchecked (checked_captions checks them). `formats`
    names what the caller accepts, for the message when the file cannot be read."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise UserError(f"--captions {path}: cannot read it as {formats} ({error})") from error
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        return loaded, None
    if "embedding" not in loaded:
        raise UserError(f"--captions {path}: an .npz needs an 'embedding' array (and optionally 'mask'); it has "
                        f"{sorted(loaded.files)}")
    return loaded["embedding"], loaded["mask"] if "mask" in loaded else None


def checked_captions(path: str | Path, embedding: Array, mask: Array | None, *,
                     count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding [N, T, D] in its own float dtype, mask bool [N, T]; default every token valid), CPU tensors that
    share memory with numpy inputs. count: the N required (one row per sample, in sample id order); None: any N."""
    if embedding.ndim == 2:  # one token per caption (a pooled embedding)
        embedding = embedding[:, None, :]
    tensor = _tensor(embedding)
    if (tensor is None or tensor.ndim != 3 or not tensor.is_floating_point()
            or (count is not None and tensor.shape[0] != count)):
        rows = "N, T, D]" if count is None else f"{count}, T, D] (one row per sample, in sample id order)"
        raise UserError(f"--captions {path}: expected float embeddings [{rows}, got {_describe(embedding)}")
    if not torch.isfinite(tensor).all():
        raise UserError(f"--captions {path}: the embeddings hold NaN or inf values")
    tokens = tuple(tensor.shape[:2])
    valid = torch.ones(tokens, dtype=torch.bool) if mask is None else _tensor(mask)
    if valid is None or tuple(valid.shape) != tokens or valid.dtype != torch.bool:
        raise UserError(f"--captions {path}: 'mask' must be bool {list(tokens)} (one per token), got "
                        f"{_describe(mask)}")
    return tensor, valid


def _tensor(array: Array) -> torch.Tensor | None:
    """The array as a tensor (numpy: zero-copy when already in native byte order); None for a dtype torch lacks
    (text, float128, ...), which the caller refuses."""
    if isinstance(array, torch.Tensor):
        return array
    if not array.dtype.isnative:  # torch.from_numpy refuses a foreign byte order
        array = array.astype(array.dtype.newbyteorder("="))
    try:
        return torch.from_numpy(array)
    except TypeError:
        return None


def _describe(array: Array) -> str:
    """'float32 [4, 2, 3]' for a numpy array or a tensor alike."""
    return f"{str(array.dtype).removeprefix('torch.')} {list(array.shape)}"
