"""Training configuration: dataclasses with units, and every preset in one table (PRESETS).

Durations and intervals are in optimizer steps (one step = one global batch of `batch_size` samples); noise
levels in data units (sigma_data = 0.5 for pixels in [-1, 1] and for standardised EDM2 latents).
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field

from ..networks.dit_presets import DIT_PRESETS
from ..networks.edm2 import EDM2_IMG512

# EDM2's standardisation of SD-VAE posterior samples (per channel): x0 = (z - mean) / std * 0.5.
SD_VAE_LATENT_MEAN = (5.81, 3.25, 0.12, -2.15)
SD_VAE_LATENT_STD = (4.17, 4.62, 3.71, 3.28)


class ConfigError(ValueError):
    """A config value of the wrong type or out of range; the message names the field."""


@dataclass
class NetworkConfig:
    arch: str = "unet"  # "unet" (compact EDM-style, networks/unet.py), "edm2" (magnitude-preserving) or "dit"
    dit_size: str = "dit-tiny"  # arch "dit" only: a row of networks/dit_presets.py DIT_PRESETS (the fields below
    # up to dropout are for the UNets)
    mask_ratio: float = 0.0  # arch "dit" only: fraction of patches dropped in training (MicroDiT's deferred
    # masking, networks/dit_mask.py; the loss is the mean over the kept patches); sampling sees every patch
    captions: bool = True  # arch "dit" only: feed the data's caption embeddings (a shard set made with --captions)
    # to the DiT's caption branch; the network is then built with it (caption_dim = the embeddings' width)
    condition_dropout: float = 0.0  # probability that a training sample's caption and class label are replaced by
    # the null condition (empty caption, zero label vector: train/condition_dropout.py), so that the network also
    # learns the unconditional model that classifier-free guidance needs (`generate --guidance`); 0 = never
    model_channels: int = 32  # channels at the first resolution
    channel_mult: tuple[int, ...] = (1, 2)  # channels per resolution level, as multiples of model_channels
    num_blocks: int = 1  # residual blocks per level (encoder; the decoder has one more)
    attn_resolutions: tuple[int, ...] = ()  # resolutions (pixels of the feature map) with self-attention
    dropout: float = 0.0  # probability, inside residual blocks
    class_conditional: bool = True  # use the dataset's labels when it has any


@dataclass
class TrainConfig:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    # data
    data: str = ""  # dataset directory or zip (EDM2 format, image folder, or .npy latents)
    annotations: str | None = None  # annotation file (safetensors, ambient_fast.annotations); None = all clean
    allow_missing: bool = False  # accept an annotation file that misses samples (trained as clean), holds ids the
    # dataset lacks (ignored) or has no keys; otherwise such a file is refused. The coverage line counts both.
    on_corrupt: str = "raise"  # "raise" or "skip" (verify every file, warn by name, never train on it)
    verify_data: bool = True  # decode every sample once before the first step, so that a bad file stops the run
    # before training (naming all of them) instead of mid-way; costs one pass over the data (see docs/training.md)
    latent_mean: tuple[float, ...] = SD_VAE_LATENT_MEAN  # latents only: per-channel mean (`dataset encode` prints that of the posterior means)
    latent_std: tuple[float, ...] = SD_VAE_LATENT_STD  # latents only: per-channel std; x0 = (z - mean) / std * 0.5
    num_workers: int = 2  # DataLoader worker processes per rank
    # optimisation
    batch_size: int = 64  # global batch (all ranks, all accumulation rounds), samples per step
    batch_gpu: int | None = None  # samples per forward pass per device; None = batch_size / world_size
    total_steps: int = 2000  # training length, optimizer steps
    ref_lr: float = 1e-2  # alpha_ref: Adam learning rate after ramp-up, before decay
    lr_decay_steps: int = 70_000  # t_ref of EDM2: lr = ref_lr / sqrt(max(step / t_ref, 1)); 0 = no decay
    lr_rampup_steps: int = 0  # linear warm-up length, steps
    adam_betas: tuple[float, float] = (0.9, 0.99)
    adam_eps: float = 1e-8
    precision: str = "fp32"  # "fp32", "bf16" or "fp16": autocast for the network, fp32 master weights and loss
    max_nonfinite_steps: int = 10  # abort after more than this many consecutive steps with NaN/inf gradients
    # (each skipped on the device; counted, and the run stopped, when the flags are read at the next log/checkpoint step)
    compile: bool = False  # torch.compile(fullgraph=True) of network + preconditioning + ambient loss (one graph)
    compile_mode: str = "default"  # Inductor mode with compile: "default", "reduce-overhead" (CUDA graphs),
    # "max-autotune" or "max-autotune-no-cudagraphs"
    # noise levels and the ambient loss
    p_mean: float = -1.2  # ln(sigma_t) ~ N(p_mean, p_std^2): EDM pixels -1.2/1.2, EDM2 latents -0.4/1.0
    p_std: float = 1.2
    sigma_data: float = 0.5
    max_weight: float = 4.0  # L_max of the buffer, eq. D.2 (sample trained at s_t only if s_t > b s_min)
    ambient: bool = True  # False: plain EDM / flow-matching loss on everything (sigma_tn = 0, no rejection); a baseline
    objective: str = "edm"  # "edm": denoiser D with EDM preconditioning and the ambient loss (eq. 2.2, D.1);
    # "flow": rectified flow, a velocity network on z_t = (1 - t) x_t at t = sigma / (1 + sigma), the ambient flow
    # loss (docs/flow.md). Levels are drawn in sigma either way: ln sigma ~ N(p_mean, p_std^2) is the logit-normal
    # law of t (logit t = ln sigma), so SD3's logit-normal(0, 1) is p_mean=0, p_std=1, and a time shift s adds ln s.
    # EMA, checkpoints, logging
    ema_stds: tuple[float, ...] = (0.05, 0.10)  # power-function EMA relative standard deviations (EDM2 sigma_rel)
    snapshot_every: int = 500  # steps between stored EMA snapshots for post-hoc reconstruction; 0 = never
    checkpoint_every: int = 500  # steps between training checkpoints (and at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept; older ones are deleted after a successful save
    log_every: int = 10  # steps between progress lines and JSONL metric rows
    tensorboard: bool = False  # also write TensorBoard scalars (needs the tensorboard package)
    # reproducibility
    seed: int = 0  # sampler order, noise levels, fresh noise, network init
    annotation_seed: int = 0  # the fixed per-sample noise n_i of x_tn = x0 + sigma_tn n_i
    deterministic: bool = False  # torch.use_deterministic_algorithms(True) (global; printed when set)
    cpu_threads: int = 0  # torch.set_num_threads for this run (printed, restored on return); 0 = leave as is.
    # On a busy machine fewer threads than cores is often faster (2 threads on 2 shared cores ran 3-20x slower).

    def __post_init__(self) -> None:
        """Reject values that would otherwise fail late or silently: the message names the field."""
        choices = {"precision": ("fp32", "bf16", "fp16"), "on_corrupt": ("raise", "skip"), "objective": ("edm", "flow"),
                   "compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.network.arch not in ("unet", "edm2", "dit"):
            raise ConfigError(f"network.arch must be 'unet', 'edm2' or 'dit', got {self.network.arch!r}")
        if not 0 <= self.network.mask_ratio < 1 or (self.network.mask_ratio and self.network.arch != "dit"):
            raise ConfigError(f"network.mask_ratio must lie in [0, 1) and needs network.arch 'dit', got "
                              f"{self.network.mask_ratio} with {self.network.arch!r}")
        if not 0 <= self.network.condition_dropout < 1:
            raise ConfigError(f"network.condition_dropout must lie in [0, 1), got {self.network.condition_dropout}")
        if self.network.arch == "dit" and self.network.dit_size not in DIT_PRESETS:
            raise ConfigError(f"network.dit_size must be one of {sorted(DIT_PRESETS)}, got {self.network.dit_size!r}")
        for name in ("batch_size", "total_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_gpu is not None and not 0 < self.batch_gpu <= self.batch_size:
            raise ConfigError(f"batch_gpu must be in [1, batch_size], got {self.batch_gpu}")
        if not all(0 < std < 0.2887 for std in self.ema_stds):
            raise ConfigError(f"ema_stds must lie in (0, 0.2887) (power EMA with gamma >= 0), got {self.ema_stds}")
        if self.p_std <= 0 or self.sigma_data <= 0 or self.max_weight <= 1:
            raise ConfigError("need p_std > 0, sigma_data > 0 and max_weight (L_max) > 1")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        values = dict(values)
        network_values = values.pop("network", {})
        for fields, given, prefix in ((NetworkConfig, network_values, "network."), (cls, values, "")):
            known = {f.name: f for f in dataclasses.fields(fields)}
            unknown = sorted(set(given) - set(known))
            if unknown:
                raise ConfigError(f"unknown config fields: {[prefix + name for name in unknown]}")
            _check_types(fields, given, prefix)
        network = NetworkConfig(**_tuples(network_values, NetworkConfig))
        return cls(network=network, **_tuples(values, cls))

    def replace(self, **overrides) -> TrainConfig:
        values = dataclasses.asdict(self)
        for name, value in overrides.items():
            if name.startswith("network."):
                values["network"][name.split(".", 1)[1]] = value
            elif name not in values:
                raise ConfigError(f"unknown config field {name!r}")
            else:
                values[name] = value
        return TrainConfig.from_dict(values)


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
_PLURALS = {int: "integers", float: "numbers", str: "strings"}


def _expected(hint) -> str:
    """The type hint in the words of a JSON value, e.g. 'an integer or null', 'a list of 2 numbers'."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_expected(arg) for arg in args)
    if typing.get_origin(hint) is tuple:
        return f"a list of {_PLURALS[args[0]]}" if args[1:] == (Ellipsis,) else f"a list of {len(args)} {_PLURALS[args[0]]}"
    return _TYPE_NAMES[hint]


def _matches(value, hint) -> bool:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        items = args[:1] * len(value) if args[1:] == (Ellipsis,) else args
        return len(items) == len(value) and all(map(_matches, value, items))
    if isinstance(value, bool):  # bool is an int in Python, never in a config
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint)


def _check_types(cls, values: dict, prefix: str) -> None:
    """Refuse a value whose type the field cannot take (e.g. --set total_steps=abc), naming field, value and type:
    otherwise it fails much later, far from its cause ("'<' not supported between str and int")."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in values and f.name != "network" and not _matches(values[f.name], hints[f.name]):
            example = json.dumps(f.default, separators=(",", ":")) if f.default is not dataclasses.MISSING else None
            raise ConfigError(f"config field {prefix}{f.name} = {values[f.name]!r}: expected {_expected(hints[f.name])}"
                              + (f", e.g. {prefix}{f.name}={example}" if example not in (None, "null") else ""))


def _tuples(values: dict, cls) -> dict:
    """JSON turns tuples into lists; turn them back for the tuple-typed fields."""
    out = dict(values)
    for f in dataclasses.fields(cls):
        if f.name in out and isinstance(out[f.name], list):
            out[f.name] = tuple(out[f.name])
    return out


def _edm2_img512(size: str) -> dict:
    row = EDM2_IMG512[size]
    return dict(
        network=dict(arch="edm2", model_channels=row.model_channels, channel_mult=(1, 2, 3, 4), num_blocks=3,
                     attn_resolutions=(16, 8), dropout=row.dropout),
        batch_size=2048, total_steps=row.training_mimg * 2**20 // 2048, ref_lr=row.ref_lr,
        lr_decay_steps=row.decay_batches, lr_rampup_steps=10_000_000 // 2048, p_mean=-0.4, p_std=1.0,
        precision="bf16", snapshot_every=4096, checkpoint_every=2048, log_every=100, num_workers=4,
    )


# One table of presets: name -> overrides of the TrainConfig defaults.
PRESETS: dict[str, dict] = {
    # Minutes on a 2-core CPU: 16x16 images, a 0.34M-parameter UNet (32 channels at 16x16 and 8x8, attention in
    # the middle at 8x8), batch 64: 0.2 s per step on one busy core (DESIGN.md section 6 measured ~0.13 s idle).
    "tiny-cpu": dict(
        network=dict(arch="unet", model_channels=32, channel_mult=(1, 1), num_blocks=1),
        batch_size=64, total_steps=2000, ref_lr=2e-3, lr_decay_steps=0, lr_rampup_steps=100, num_workers=0,
        snapshot_every=250, checkpoint_every=250, log_every=20,
    ),
    # CIFAR-10 32x32 pixels, EDM's DDPM++-sized network (128 channels, 4 blocks, attention at 16x16); Adam lr 1e-3,
    # batch 512 (paper F.3). 200M images as EDM; the paper saw its best FID with corrupted data near 20M (~39k steps).
    "cifar10": dict(
        network=dict(arch="unet", model_channels=128, channel_mult=(2, 2, 2), num_blocks=4, attn_resolutions=(16,),
                     dropout=0.13),
        batch_size=512, total_steps=200_000_000 // 512, ref_lr=1e-3, lr_decay_steps=0, lr_rampup_steps=20_000,
        p_mean=-1.2, p_std=1.2, precision="bf16", snapshot_every=5000, checkpoint_every=5000, log_every=100,
    ),
    # EDM2 ImageNet-512 (64x64x4 SD-VAE latents), sizes XS..XXL of Karras et al. 2024.
    **{f"edm2-img512-{size}": _edm2_img512(size) for size in EDM2_IMG512},
    # The CPU toy with the 0.5M-parameter DiT (networks/dit_presets.py "dit-tiny") in place of the UNet.
    "dit-tiny-cpu": dict(
        network=dict(arch="dit", dit_size="dit-tiny"),
        batch_size=64, total_steps=2000, ref_lr=1e-3, lr_decay_steps=0, lr_rampup_steps=100, num_workers=0,
        snapshot_every=250, checkpoint_every=250, log_every=20,
    ),
    # MicroDiT_XL_2 (1.17B) with the first phase of the MicroDiffusion recipe that Ambient-o follows (Appendix F.3:
    # lr 2.4e-4, batch 2048; the release's configs/res_256_pretrain.yaml: 250k steps, 2500 warm-up steps, bf16,
    # ln sigma ~ N(-0.6, 1.2^2) for sigma_data 0.9, shifted by ln(0.5 / 0.9) for latents standardised to 0.5).
    # Caption embeddings (a shard set made with --captions), patch masking (--set network.mask_ratio=0.75) and
    # condition dropout for classifier-free guidance (--set network.condition_dropout=...) are in the trainer and
    # off here, their values being the user's choice; NOT in the trainer: AdamW (weight decay 0.1), cosine decay and
    # gradient clipping 0.25.
    "microdit-1.1b": dict(
        network=dict(arch="dit", dit_size="microdit-1.1b"),
        batch_size=2048, total_steps=250_000, ref_lr=2.4e-4, lr_decay_steps=0, lr_rampup_steps=2500,
        p_mean=round(-0.6 + math.log(0.5 / 0.9), 4), p_std=1.2, precision="bf16", snapshot_every=4096,
        checkpoint_every=2048, log_every=100, num_workers=4,
    ),
}


def preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    values = json.loads(json.dumps(PRESETS[name]))
    config = TrainConfig.from_dict(values)
    return config.replace(**overrides) if overrides else config
