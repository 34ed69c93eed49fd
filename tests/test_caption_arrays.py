"""data/caption_arrays.py, the caption-file reader and checker shared by `dataset to-shards --captions`
(streaming.load_captions, a fixed row count) and `generate --captions` (prompt_captions, any row count, also
.safetensors): both take the same files to the same arrays and refuse the same mistakes in one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ambient_fast.data.caption_arrays import checked_captions, read_caption_arrays
from ambient_fast.data.streaming import load_captions
from ambient_fast.errors import UserError
from ambient_fast.train.prompt_captions import load_prompt_captions


def test_both_loaders_read_a_file_to_the_same_arrays(tmp_path):
    rng = np.random.default_rng(0)
    embedding, mask = rng.standard_normal((4, 3, 5)).astype(np.float32), rng.random((4, 3)) < 0.7
    np.savez(tmp_path / "c.npz", embedding=embedding, mask=mask)
    shards_embedding, shards_mask = load_captions(tmp_path / "c.npz", 4)
    prompt_embedding, prompt_mask = load_prompt_captions(tmp_path / "c.npz", caption_dim=5, num=None)
    assert np.array_equal(shards_embedding, embedding) and np.array_equal(shards_mask, mask)
    assert torch.equal(prompt_embedding, torch.from_numpy(embedding)) and torch.equal(prompt_mask,
                                                                                      torch.from_numpy(mask))
    big_endian = embedding[:, 0].astype(">f2")  # [N, D] in a foreign byte order: one token, every one valid
    np.save(tmp_path / "pooled.npy", big_endian)
    pooled, every = load_captions(tmp_path / "pooled.npy", 4)
    assert pooled.dtype == np.float16 and np.array_equal(pooled, big_endian[:, None]) and every.all()


def test_safetensors_bfloat16_goes_through_the_same_checker(tmp_path):
    embedding = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1)).bfloat16()
    save_file({"embedding": embedding}, tmp_path / "c.safetensors")
    got, mask = load_prompt_captions(tmp_path / "c.safetensors", caption_dim=5, num=2)
    assert torch.equal(got, embedding.float()) and mask.shape == (2, 3) and mask.all()
    save_file({"embedding": embedding, "mask": torch.ones(2, 2, dtype=torch.bool)}, tmp_path / "bad.safetensors")
    with pytest.raises(UserError, match=r"'mask' must be bool \[2, 3\] \(one per token\), got bool \[2, 2\]"):
        load_prompt_captions(tmp_path / "bad.safetensors", caption_dim=5, num=2)


@pytest.mark.parametrize("embedding, mask, count, message", [
    (np.ones((4, 3), np.int64), None, None, r"expected float embeddings \[N, T, D\], got int64 \[4, 1, 3\]"),
    (np.array([["a"]]), None, None, r"expected float embeddings \[N, T, D\], got <U1 \[1, 1, 1\]"),
    (np.ones((5, 2, 3), np.float32), None, 4, r"\[4, T, D\] \(one row per sample, in sample id order\), got float32"),
    (np.ones((2, 3, 4, 5), np.float32), None, None, r"got float32 \[2, 3, 4, 5\]"),
    (np.full((2, 1, 3), np.inf, np.float32), None, None, "NaN or inf"),
    (np.ones((2, 1, 3), np.float32), np.ones((2, 1), np.uint8), None, r"'mask' must be bool \[2, 1\].*got uint8"),
])
def test_each_mistake_is_a_one_line_user_error(embedding, mask, count, message):
    with pytest.raises(UserError, match=message) as caught:
        checked_captions("c.npy", embedding, mask, count=count)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("--captions c.npy: ")


def test_an_unreadable_file_or_an_npz_without_embedding_is_refused(tmp_path):
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(UserError, match=r"junk.npy: cannot read it as .npy, .npz or .safetensors"):
        read_caption_arrays(tmp_path / "junk.npy", formats=".npy, .npz or .safetensors")
    np.savez(tmp_path / "other.npz", emb=np.ones((2, 3), np.float32))
    with pytest.raises(UserError, match=r"needs an 'embedding' array.*\['emb'\]"):
        load_captions(tmp_path / "other.npz", 2)
