"""The default dataset of the CPU experiments, needing no download: 16x16 crops of the five colour photographs
that ship inside scikit-image's wheel (astronaut, Chelsea the cat, coffee, rocket launch, motorcycle), taken at
several scales.

Why it is a fair stand-in for CIFAR-10 here: the method rests on the power-law spectrum of natural images (noise
hides exactly the high frequencies a blur removes, Section 3.1), and crops of real photographs have that spectrum
(docs/results.md gives the measured slope), unlike generated toy data. Area downsampling by 2-4 makes the crops
sharp at the pixel scale, as CIFAR's downsampled photographs are.

Train/test split without shared pixels: each photograph (at full size) is cut into 128x128-pixel blocks, a fixed
hash of (photograph, block) sends a block to the test set with probability `test_block_fraction`, and every crop
lies inside one block at its scale. Everything is keyed by a seed through a local generator; images are float32
[N, 3, H, W] in [-1, 1].
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle")
# A second dataset from the same wheel, with other statistics: three grayscale texture photographs (brick wall,
# grass, gravel), used as 3-channel gray images. Stationary and rich in fine detail, unlike the photographs' mix
# of smooth regions and edges.
TEXTURES = ("brick", "grass", "gravel")
EMBEDDED_SETS = {"photographs": PHOTOGRAPHS, "textures": TEXTURES}  # by name, for configs and the CLI
SCIKIT_IMAGE_PIN = "scikit-image==0.26.0"


@dataclass(frozen=True)
class EmbeddedDataConfig:
    resolution_px: int = 16
    train_count: int = 4000
    test_count: int = 1000
    scales: tuple[int, ...] = (2, 3, 4)  # area-downsampling factors of the photographs
    block_px: int = 128  # split unit, in full-size pixels
    test_block_fraction: float = 0.2
    seed: int = 0
    photographs: tuple[str, ...] = PHOTOGRAPHS  # scikit-image images to crop (PHOTOGRAPHS or TEXTURES)


@dataclass
class EmbeddedDataset:
    train: torch.Tensor  # [N_train, 3, H, W] float32 in [-1, 1]
    test: torch.Tensor  # [N_test, 3, H, W]
    train_ids: torch.Tensor  # int64 [N_train], stable ids 0..N_train-1
    test_ids: torch.Tensor  # int64 [N_test], N_train.. (disjoint from train ids)
    config: EmbeddedDataConfig
    train_labels: torch.Tensor | None = None  # int64 [N_train]: index into PHOTOGRAPHS (the crop's "class")
    test_labels: torch.Tensor | None = None


def load_photographs(names: tuple[str, ...] = PHOTOGRAPHS) -> dict[str, torch.Tensor]:
    """The photographs as float [1, 3, H, W] in [-1, 1], read from scikit-image's package data (offline);
    grayscale ones are repeated over 3 channels."""
    try:
        import skimage.data
    except ImportError as error:
        raise ImportError(f"the embedded dataset reads photographs shipped with scikit-image: pip install "
                          f"{SCIKIT_IMAGE_PIN} (make install does)") from error
    photographs = {}
    for name in names:
        array = getattr(skimage.data, name)()
        array = array[0] if name == "stereo_motorcycle" else array  # (left, right, disparity): the left view
        array = array[..., None].repeat(3, axis=-1) if array.ndim == 2 else array
        photographs[name] = torch.from_numpy(array[..., :3].copy()).permute(2, 0, 1).float()[None] / 127.5 - 1
    return photographs


def _is_test_block(name: str, row: int, col: int, *, fraction: float) -> bool:
    digest = hashlib.blake2b(f"{name}:{row}:{col}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def _crop_pool(photographs: dict[str, torch.Tensor], config: EmbeddedDataConfig, *, test: bool) -> list[tuple]:
    """Every window of the split, listed lazily per block: (scaled image, top, left, positions, photograph index)."""
    pool = []
    size = config.resolution_px
    for label, (name, photo) in enumerate(photographs.items()):
        height, width = photo.shape[-2:]
        for scale in config.scales:
            scaled = F.interpolate(photo, scale_factor=1 / scale, mode="area") if scale > 1 else photo
            block = config.block_px // scale
            if block < size:
                raise ValueError(f"block_px / scale = {block} px is smaller than the {size} px crop")
            for row in range(height // config.block_px):
                for col in range(width // config.block_px):
                    if _is_test_block(name, row, col, fraction=config.test_block_fraction) == test:
                        pool.append((scaled[0], row * block, col * block, block - size + 1, label))
    return pool


def _sample_crops(pool: list[tuple], count: int, size: int, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(crops [count, 3, size, size], photograph index of each crop int64 [count])."""
    blocks = torch.randint(0, len(pool), (count,), generator=generator).tolist()
    offsets = torch.rand(count, 2, generator=generator).tolist()
    crops, labels = [], []
    for index, (u, v) in zip(blocks, offsets):
        image, top, left, positions, label = pool[index]
        y, x = top + int(u * positions), left + int(v * positions)
        crops.append(image[:, y:y + size, x:x + size])
        labels.append(label)
    return torch.stack(crops).contiguous(), torch.tensor(labels, dtype=torch.int64)


def load_embedded_dataset(config: EmbeddedDataConfig = EmbeddedDataConfig()) -> EmbeddedDataset:
    if not 0 < config.test_block_fraction < 1:
        raise ValueError(f"test_block_fraction must be in (0, 1), got {config.test_block_fraction}")
    photographs = load_photographs(config.photographs)
    generator = torch.Generator().manual_seed(config.seed)
    train_pool = _crop_pool(photographs, config, test=False)
    test_pool = _crop_pool(photographs, config, test=True)
    train, train_labels = _sample_crops(train_pool, config.train_count, config.resolution_px, generator)
    test, test_labels = _sample_crops(test_pool, config.test_count, config.resolution_px, generator)
    return EmbeddedDataset(train=train, test=test, train_ids=torch.arange(config.train_count),
                           test_ids=torch.arange(config.train_count, config.train_count + config.test_count),
                           config=config, train_labels=train_labels, test_labels=test_labels)
