"""The training loop: ambient sampler -> fused noising -> network -> fused ambient loss -> Adam -> power EMA.

Resume by rerunning the same command: the newest checkpoint in run_dir that verifies is loaded (a corrupt one is
reported and the previous one used; when none can be read the run stops, naming them, unless restart=True), and training continues with the same samples, levels and noise as an
uninterrupted run, because every random choice is keyed by (seed, step, slice) rather than by a running
generator.

A step reads nothing back from the device (docs/training.md, "What syncs"): whether the gradients are finite is
decided on the device, where it masks the Adam step and the EMA update (as GradScaler's found_inf does), and the
step's loss and that flag stay on the device until the next log or checkpoint step, where all of them are read at
once (one all-reduce across ranks, one read). With config.compile the network, the preconditioning and the fused
ambient loss run as one torch.compile(fullgraph=True) graph.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import ambient_loss_precond, ambient_noising
from ..data import AmbientSampler, open_dataset, standardise_latents
from ..errors import UserError
from ..networks import Precond
from ..networks.dit_mask import random_keep
from ..networks.velocity import Velocity
from . import checkpoint, distributed
from .build import build_network, parameter_count
from .condition_dropout import drop_conditions, dropped_samples
from .config import ConfigError, TrainConfig
from .feed import StepBatches, chunk_seed, loader
from .flow_step import FlowTrainingStep
from .step_parts import autocast_for, kept_patches, present
from .metrics import MetricsLog
from .phema import PowerEMA
from .schedule import learning_rate
from .source_log import SourceLog

# Fields that may change between a run and its resumption (they do not change what is computed).
# allow_missing only permits: what the run trains on is guarded by the annotations digest.
# annotations is a path: a run folder moved with its annotation file resumes; the file's content is guarded by the
# annotations digest (other sigma_min / sigma_max are refused below, whatever the file is called).
# compile / compile_mode change the rounding, not the computation: a run may resume with or without them.
RESUMABLE_CHANGES = {"total_steps", "log_every", "num_workers", "tensorboard", "checkpoint_every", "keep_checkpoints",
                     "snapshot_every", "cpu_threads", "allow_missing", "verify_data", "compile", "compile_mode",
                     "annotations"}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
# torch.compile backend of config.compile. Tests use "aot_eager" (Dynamo's graph and AOT autograd, without
# Inductor's code generation, which takes about a minute on a 2-core CPU for the tiny network).
COMPILE_BACKEND = "inductor"


class TrainingStep(torch.nn.Module):
    """Forward of one slice up to the loss, as a module so DDP sees the whole computation."""

    def __init__(self, precond: Precond, *, precision: str):
        super().__init__()
        self.precond, self.precision = precond, precision

    def forward(self, x_t, x_tn, sigma_t, sigma_tn, class_labels, caption=None, caption_mask=None, keep=None):
        extra = present(caption=caption, caption_mask=caption_mask, keep=keep)  # the DiT's keyword inputs
        with autocast_for(x_t.device.type, self.precision, AUTOCAST):
            raw, logvar = self.precond.raw(x_t, sigma_t, class_labels, **extra)
        x_t, x_tn, scale = kept_patches(keep, self.precond.net, x_t, x_tn)  # patch masking: kept patches only
        # Fused ambient loss (DESIGN.md section 1) with D = c_skip x_t + c_out F formed in the kernel, fp32.
        return ambient_loss_precond(raw.float(), x_t, x_tn, sigma_t, sigma_tn, sigma_data=self.precond.sigma_data,
                                    logvar=None if logvar is None else logvar.float(), reduction="mean") * scale


def compile_step(module: torch.nn.Module, *, mode: str = "default", backend=None):
    """torch.compile(module, fullgraph=True): the network, the preconditioning and the fused ambient loss (a custom
    operator, opaque to Inductor) in one graph, forward and backward; a graph break raises instead of splitting the
    step. mode is Inductor's ("reduce-overhead": CUDA graphs); other backends take none."""
    backend = backend or COMPILE_BACKEND
    options = {"mode": mode} if backend == "inductor" and mode != "default" else {}
    return torch.compile(module, fullgraph=True, backend=backend, **options)


def nonfinite_flag(parameters, found: torch.Tensor, one: torch.Tensor) -> torch.Tensor:
    """found (float32 [1], on the gradients' device) := 1.0 when any gradient holds NaN or inf, else 0.0, decided on
    the device: GradScaler's check (one pass over the gradients), with scale 1, which leaves their values as they are."""
    found.zero_()
    groups: dict[tuple, list[torch.Tensor]] = {}
    for p in parameters:
        if p.grad is not None:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    for grads in groups.values():
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, one)
    return found


def masked_adam(parameters, *, lr: float, betas, eps: float) -> torch.optim.Adam:
    """Adam whose step is skipped on the device when its `found_inf` (a 0-dim float tensor, set by the trainer) is 1:
    the fused kernel then leaves parameters, moments and step counters exactly as they were (as under GradScaler).
    Its finite steps are torch.optim.Adam's update up to float32 rounding (the fused kernel rounds the second moment
    differently in the last place now and then, so a run is not bit-identical to one with the default Adam; runs and
    their resumptions with this one are: tests/test_train_step.py)."""
    return torch.optim.Adam(parameters, lr=lr, betas=betas, eps=eps, fused=True)


class StepRecords:
    """Each step's loss (this rank's share, float64) and non-finite flag, kept on the device until flush() reads the
    steps since the previous flush at once: one all-reduce across ranks and one device-to-host read."""

    def __init__(self, capacity: int, device: torch.device):
        self.values = torch.zeros(capacity, 2, dtype=torch.float64, device=device)
        self.steps: list[int] = []

    def slot(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, flag) views of the row for `step`."""
        if len(self.steps) == self.values.shape[0]:
            raise RuntimeError(f"{len(self.steps)} steps recorded without a flush (capacity {self.values.shape[0]})")
        row = self.values[len(self.steps)]
        self.steps.append(step)
        return row[0], row[1]

    def flush(self, dist_info: distributed.Distributed) -> list[tuple[int, float, bool]]:
        """[(step, loss averaged over ranks, non-finite)] of the steps since the previous flush."""
        if not self.steps:
            return []
        block = self.values[: len(self.steps)].clone()
        dist_info.all_reduce_mean(block)  # the flag is the same on every rank (the gradients are all-reduced)
        rows = block.tolist()  # the device read
        out = [(step, loss, flag > 0) for step, (loss, flag) in zip(self.steps, rows)]
        self.steps = []
        return out


@dataclass
class HostStats:
    """What the host knows after a flush; checkpointed, so that a resumed run logs what an uninterrupted one logs."""
    skipped: int = 0  # steps skipped for non-finite gradients, in the whole run
    consecutive: int = 0  # the current run of skipped steps
    pending: list[float] = field(default_factory=list)  # losses of the steps since the last metrics row

    def absorb(self, records, *, limit: int, say, run_dir) -> None:
        """Count skipped steps in order; stop when more than `limit` came in a row (at the flush that reads them)."""
        for step, loss, nonfinite in records:
            self.pending.append(loss)
            if not nonfinite:
                self.consecutive = 0
                continue
            self.skipped += 1
            self.consecutive += 1
            say(f"step {step}: non-finite gradients, step skipped ({self.consecutive} in a row, {self.skipped} in total)")
            if self.consecutive > limit:
                raise FloatingPointError(
                    f"{self.consecutive} consecutive steps had NaN/inf gradients, the last at step {step} (limit "
                    f"max_nonfinite_steps={limit}; parameters, Adam state and EMAs were left unchanged by each); "
                    f"last good checkpoint in {run_dir}")


class Stepper:
    """One optimizer step (every accumulation round, the masked Adam step, the EMA update), with no device-to-host
    read: the loss and the non-finite flag go to StepRecords, which flush() reads at log and checkpoint steps."""

    def __init__(self, config: TrainConfig, *, model, net, optimizer, scaler, ema, chunks: list[int], batch_gpu: int,
                 device: torch.device, standardise, label_dim: int, dist_info: distributed.Distributed,
                 caption_dim: int = 0):
        self.config, self.model, self.net, self.optimizer, self.scaler, self.ema = config, model, net, optimizer, scaler, ema
        self.chunks, self.batch_gpu, self.device, self.standardise, self.label_dim = chunks, batch_gpu, device, standardise, label_dim
        self.dist_info, self.caption_dim = dist_info, caption_dim
        self.forward = model  # TrainingStep: compiled (config.compile) and/or in DDP
        self.records = StepRecords(config.log_every, device)  # a flush at least every log_every steps
        self.found = torch.zeros(1, device=device)  # 1.0: a gradient of this step is NaN/inf
        self.one = torch.ones(1, device=device)
        if not getattr(optimizer, "_step_supports_amp_scaling", False):
            raise TypeError("the trainer's optimizer must skip its step on found_inf (Adam with fused=True)")
        optimizer.found_inf, optimizer.grad_scale = self.found.view(()), None  # read by the fused kernel

    def __call__(self, step: int, batch: dict) -> None:
        config, rounds = self.config, len(self.chunks)
        lr = learning_rate(step, ref_lr=config.ref_lr, decay_steps=config.lr_decay_steps, rampup_steps=config.lr_rampup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_slot, flag_slot = self.records.slot(step)
        for r, chunk in enumerate(self.chunks):
            part = slice(r * self.batch_gpu, (r + 1) * self.batch_gpu)
            seed = chunk_seed(config.seed, step, chunk)
            x0 = batch["image"][part].to(self.device, non_blocking=True)
            if self.standardise is not None:
                x0 = self.standardise(x0, seed + 1)
            # non_blocking: from the loader's pinned memory, a copy that does not wait for the device (a plain copy
            # from the host waits for all queued work: a synchronisation in every step)
            ids = batch["sample_id"][part].to(self.device, non_blocking=True)
            sigma_t = batch["sigma_t"][part].to(self.device, non_blocking=True)
            sigma_tn = batch["sigma_tn"][part].to(self.device, non_blocking=True)
            labels = batch["label"][part].to(self.device, non_blocking=True) if self.label_dim else None
            extra = {}
            if self.caption_dim:  # a shard set's caption embeddings (data/streaming.py), for the DiT's caption branch
                extra["caption"] = batch["caption"][part].to(self.device, non_blocking=True)
                extra["caption_mask"] = batch["caption_mask"][part].to(self.device, non_blocking=True)
            if config.network.mask_ratio:  # the kept patches, drawn on the device from the slice's seed
                extra["keep"] = self.random_keep(x0.shape[0], seed + 2)
            if config.network.condition_dropout:  # some samples get the null condition, drawn on the device
                drop = dropped_samples(x0.shape[0], probability=config.network.condition_dropout, seed=seed + 3,
                                       device=self.device)
                labels, extra = drop_conditions(labels, extra, drop, label_dim=self.label_dim)
            # x_tn = x0 + s_tn n_i (n_i fixed per sample id), x_t = x_tn + sqrt(s_t^2 - s_tn^2) eps (Section 3.1)
            x_t, x_tn = ambient_noising(x0, ids, sigma_t, sigma_tn, annotation_seed=config.annotation_seed, seed=seed)
            last = r == rounds - 1
            sync = self.model.no_sync() if self.dist_info.enabled and not last else contextlib.nullcontext()
            with sync, torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(seed)  # dropout, inside a forked generator: the global one is left alone
                loss = self.forward(x_t, x_tn, sigma_t, sigma_tn, labels, **extra) / rounds
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            (loss_slot.copy_ if r == 0 else loss_slot.add_)(loss.detach())  # float64, on the device

        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        nonfinite_flag(self.net.parameters(), self.found, self.one)
        self.optimizer.step()  # skipped by the kernel when found is 1: parameters, moments and step counts unchanged
        if self.scaler is not None:
            self.scaler.update()  # halves the scale after an overflow, from the scaler's own device-side check
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.net, step=step + 1, skip=self.found)  # unchanged on a skipped step
        flag_slot.copy_(self.found[0])

    def flush(self) -> list[tuple[int, float, bool]]:
        return self.records.flush(self.dist_info)

    def random_keep(self, batch: int, seed: int) -> torch.Tensor:
        """int64 [batch, n_kept] indices of the kept patches (dit_mask.random_keep), drawn on the device from a
        generator seeded by the slice: no host read, and a resumed run draws the same patches."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return random_keep(batch, self.net.grid[0] * self.net.grid[1], mask_ratio=self.config.network.mask_ratio,
                           generator=generator, device=self.device)


def _latent_standardiser(config: TrainConfig, channels: int, device: torch.device):
    """Stored latents are [mean, std] of the VAE posterior: draw z = mean + std eps afresh each step and
    standardise (EDM2), with the function the annotation uses too (data/latents.py)."""
    mean = torch.tensor(config.latent_mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(config.latent_std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    if mean.shape[1] != channels // 2:
        raise ValueError(f"latents have {channels} channels (mean + std) but latent_mean has {mean.shape[1]} entries")

    def standardise(moments: torch.Tensor, seed: int) -> torch.Tensor:
        generator = torch.Generator(device=moments.device).manual_seed(seed)
        noise = torch.randn((moments.shape[0], moments.shape[1] // 2, *moments.shape[2:]), generator=generator,
                            device=moments.device)
        return standardise_latents(moments, noise, latent_mean=mean, latent_std=std)

    return standardise


def _check_resumable(saved: dict, config: TrainConfig) -> None:
    mine, defaults = json.loads(config.to_json()), json.loads(TrainConfig().to_json())
    # A field added after the run was saved (e.g. objective, network.mask_ratio) has its default there
    saved = {**defaults, **saved, "network": {**defaults["network"], **saved.get("network", {})}}
    changed = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise ConfigError(f"run directory holds a run with a different config ({', '.join(changed)}); use a new run_dir")


def train(config: TrainConfig, *, run_dir: str | Path, device: str | torch.device | None = None,
          network: torch.nn.Module | None = None, dataset=None, stop_after: int | None = None, restart: bool = False,
          log=print) -> dict:
    """Train (or resume) the run in run_dir. network: a module following the protocol of networks/precond.py
    (default: built from config.network); dataset: an ArrayDataset (default: config.data). stop_after: return
    after this many steps of this invocation (tests). restart: when run_dir holds checkpoints and none can be read,
    start over from step 0 after moving the old run's files to run_dir/before-restart-N/ (default: refuse; a
    readable checkpoint is always resumed). Returns {"step": last step done, "losses": [...]}"""
    previous, previous_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    try:
        if config.cpu_threads:
            log(f"setting torch.set_num_threads({config.cpu_threads}) for this run (process-wide; restored on return)")
            torch.set_num_threads(config.cpu_threads)
        return _train(config, run_dir=Path(run_dir), device=device, network=network, dataset=dataset,
                      stop_after=stop_after, restart=restart, log=log)
    finally:  # the process-wide settings are restored on return
        torch.use_deterministic_algorithms(previous)
        torch.set_num_threads(previous_threads)


def _train(config: TrainConfig, *, run_dir: Path, device, network, dataset, stop_after, restart, log) -> dict:
    dist_info, device = distributed.init(device)
    say = log if dist_info.is_main else (lambda *_: None)
    if config.deterministic:
        say("setting torch.use_deterministic_algorithms(True) for this run (process-wide; restored on return)")
        torch.use_deterministic_algorithms(True)

    # ---- data and annotations
    if dataset is None and not config.data:
        raise ConfigError("no data: set config.data (a dataset directory or zip) or pass dataset=")
    dataset = dataset if dataset is not None else open_dataset(config.data, on_error=config.on_corrupt)
    checked = ""
    if config.verify_data and not dataset.verified:  # a bad file stops the run now, not after hours of training
        started = time.perf_counter()
        dataset.verify(advice="fix or remove them, or set on_corrupt=skip (--set on_corrupt=skip) to train without them")
        checked = f", each decoded once in {time.perf_counter() - started:.1f} s"
    coverage = []  # the "annotations: annotated N of M samples ..." line, printed with the plan below
    table = dataset.annotations(config.annotations if config.ambient else None, allow_missing=config.allow_missing,
                                report=coverage.append)
    annotations_digest = table.digest()  # stored with every checkpoint: resuming needs the same annotations
    sampler = AmbientSampler(table.sigma_min, table.sigma_max, batch_size=config.batch_size, p_mean=config.p_mean,
                             p_std=config.p_std, max_weight=config.max_weight, seed=config.seed,
                             acceptance=table.acceptance)  # density-ratio weights, if the file has them
    stored_channels, resolution = dataset.shape[0], dataset.shape[-1]
    is_latent = bool(getattr(dataset, "is_latent", False))
    channels = stored_channels // 2 if is_latent else stored_channels
    label_dim = dataset.label_dim if config.network.class_conditional else 0
    # Caption embeddings of a shard set (dataset to-shards --captions) feed the DiT's caption branch
    caption_shape = dataset.index.get("caption_shape") if getattr(dataset, "has_captions", False) else None
    use_captions = bool(caption_shape) and config.network.captions and config.network.arch == "dit"
    caption_dim = int(caption_shape[-1]) if use_captions else 0
    if config.network.condition_dropout and not (label_dim or caption_dim):
        raise ConfigError(f"network.condition_dropout={config.network.condition_dropout} but the network has no "
                          "condition to drop (no class labels, no caption embeddings); set it to 0")

    # ---- batch geometry: global batch = world_size x rounds x batch_gpu
    batch_gpu = config.batch_gpu or config.batch_size // dist_info.world_size
    if config.batch_size % (batch_gpu * dist_info.world_size):
        raise ConfigError(f"batch_size {config.batch_size} is not a multiple of batch_gpu {batch_gpu} x world size "
                          f"{dist_info.world_size}")
    rounds = config.batch_size // (batch_gpu * dist_info.world_size)
    chunks = [dist_info.rank * rounds + r for r in range(rounds)]

    # ---- network, optimizer, EMA
    net = network if network is not None else build_network(
        config.network, img_channels=channels, img_resolution=resolution, label_dim=label_dim, seed=config.seed,
        caption_dim=caption_dim)
    net = net.to(device)
    # "builtin" networks are rebuilt from config.network by `generate`; a user's module is named for the record.
    network_name = "builtin" if network is None else f"{type(network).__module__}.{type(network).__qualname__}"
    if config.objective == "flow":  # rectified flow: a velocity network, the ambient flow loss (docs/flow.md)
        step_module = FlowTrainingStep(Velocity(net, label_dim=label_dim), precision=config.precision,
                                       autocast_dtypes=AUTOCAST)
    else:
        step_module = TrainingStep(Precond(net, sigma_data=config.sigma_data, label_dim=label_dim),
                                   precision=config.precision)
    if config.compile:  # inside DDP: Dynamo cannot trace DDP's forward (its bucket logic) in one graph; DDP's
        # gradient hooks then all-reduce after the compiled backward
        step_module = compile_step(step_module, mode=config.compile_mode)
    if dist_info.enabled:
        step_module = torch.nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = masked_adam(net.parameters(), lr=config.ref_lr, betas=tuple(config.adam_betas), eps=config.adam_eps)
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
    ema = PowerEMA(net, config.ema_stds)

    # ---- resume
    start_step, stats = 0, HostStats()
    try:
        latest = checkpoint.load_latest(run_dir, log=say)
    except checkpoint.UnreadableCheckpointsError as error:
        if not restart:  # starting over would overwrite them: the user decides
            raise checkpoint.UnreadableCheckpointsError(
                f"{error}; nothing was changed: restore a checkpoint, or rerun with --restart (train(restart=True)) "
                "to start over from step 0 with the old run's files moved aside") from None
        latest = None
        if dist_info.is_main:
            say(f"restart: no checkpoint could be read; the old run's files are now in {checkpoint.set_aside(run_dir)}, "
                "starting over from step 0")
    if latest is not None:
        saved_step, tensors, meta = latest
        _check_resumable(meta["config"], config)
        if meta.get("annotations_digest", annotations_digest) != annotations_digest:
            raise UserError(f"{run_dir} was trained with other annotations (digest {meta['annotations_digest']}, now "
                            f"{annotations_digest}: sigma_min / sigma_max of some samples changed under "
                            f"{config.annotations or 'the given table'}); use a new run_dir or restore the annotations")
        net.load_state_dict(checkpoint.split(tensors, "net"))
        checkpoint.optimizer_from_flat(optimizer, tensors, meta["optimizer"])
        ema.load_tensors(tensors)
        sampler.load_state_dict(meta["sampler"])
        if scaler is not None and meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        start_step = saved_step + 1
        stats = HostStats(meta["skipped_steps"], meta.get("consecutive_nonfinite", 0), list(meta.get("pending_losses", [])))
    batches = StepBatches(sampler, total_steps=config.total_steps, num_chunks=dist_info.world_size * rounds, chunks=chunks)
    standardise = _latent_standardiser(config, stored_channels, device) if is_latent else None

    usable = {s: float(table.usable(s, max_weight=config.max_weight).double().mean()) for s in (0.01, 0.1, 1.0, 10.0)}
    sources = SourceLog(table, dataset, max_weight=config.max_weight)  # per-source rows, when the data has sources
    plain_loss = "flow-matching" if config.objective == "flow" else "EDM"
    say(f"ambient_fast train -> {run_dir}\n"
        f"  data: {len(dataset)} samples {tuple(dataset.shape)} ({'latents' if is_latent else 'pixels'}{checked}), labels: {label_dim or 'none'}, "
        f"captions: {f'{caption_dim}-wide embeddings' if caption_dim else 'none'}, "
        + (f"condition dropout {config.network.condition_dropout:g}, " if config.network.condition_dropout else "") +
        f"annotations: {config.annotations if config.ambient and config.annotations else 'none (all clean)'}"
        f"{'' if config.ambient else f' [ambient off: plain {plain_loss} loss]'}\n"
        f"  {coverage[0]}\n"
        f"  usable fraction at sigma " + ", ".join(f"{s:g}: {f:.2f}" for s, f in usable.items()) + "\n"
        f"  network: {config.network.arch if network is None else type(network).__name__}, {parameter_count(net) / 1e6:.2f}M parameters, "
        f"objective {config.objective}" + (" (rectified flow: velocity on z_t, t = sigma/(1+sigma))" if config.objective == "flow" else "") + "\n"
        f"  batch {config.batch_size} = {dist_info.world_size} rank(s) x {rounds} round(s) x {batch_gpu}, device {device}, "
        f"precision {config.precision}" + (f", {config.network.mask_ratio:.0%} of patches masked" if config.network.mask_ratio else "")
        + (f", compiled (torch.compile fullgraph, {config.compile_mode})" if config.compile else "") + "\n"
        f"  steps {start_step} -> {config.total_steps}" + (f" (resumed from step {start_step - 1})" if start_step else "")
        + f", lr {config.ref_lr:g} (decay after {config.lr_decay_steps}, ramp-up {config.lr_rampup_steps}), EMA stds {config.ema_stds}"
        + ("\n" + sources.startup_table() if sources.enabled else ""))
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(json.loads(config.to_json()), indent=2))
    metrics = MetricsLog(run_dir, resume_step=start_step, total_steps=config.total_steps,
                         tensorboard=config.tensorboard, enabled=dist_info.is_main)

    def save(step: int) -> None:
        optim_tensors, optim_meta = checkpoint.optimizer_to_flat(optimizer)
        tensors = {**{f"net.{k}": v for k, v in net.state_dict().items()}, **optim_tensors, **ema.tensors()}
        meta = {"step": step, "config": json.loads(config.to_json()), "sampler": batches.state_after(step),
                "optimizer": optim_meta, "skipped_steps": stats.skipped,
                "consecutive_nonfinite": stats.consecutive, "pending_losses": stats.pending, "scaler": scaler.state_dict() if scaler else None,
                "img_channels": channels, "img_resolution": resolution, "label_dim": label_dim, "is_latent": is_latent,
                "network": network_name, "annotations_digest": annotations_digest, "caption_dim": caption_dim}
        if dist_info.is_main:
            checkpoint.save(checkpoint.path_for(run_dir, step), tensors, meta)
            checkpoint.prune(run_dir, config.keep_checkpoints)

    def snapshot(step: int) -> None:
        if dist_info.is_main:
            checkpoint.save(checkpoint.path_for(run_dir, step, "phema"), ema.tensors(),
                            {"step": step + 1, "stds": list(config.ema_stds), "config": json.loads(config.to_json()),
                             "img_channels": channels, "img_resolution": resolution, "label_dim": label_dim,
                             "is_latent": is_latent, "network": network_name, "caption_dim": caption_dim})

    stepper = Stepper(config, model=step_module, net=net, optimizer=optimizer, scaler=scaler, ema=ema, chunks=chunks,
                      batch_gpu=batch_gpu, device=device, standardise=standardise, label_dim=label_dim, dist_info=dist_info,
                      caption_dim=caption_dim)
    losses = []
    net.train()
    data_iter = iter(loader(dataset, batches, num_workers=config.num_workers, pin_memory=device.type == "cuda"))
    step = start_step - 1
    since_row, data_sec, row_time = 0, 0.0, time.perf_counter()
    for step in range(start_step, config.total_steps):
        waited = time.perf_counter()
        batch = next(data_iter)
        assert batch["step"] == step, "data loader out of step with training"
        data_sec += time.perf_counter() - waited
        stepper(step, batch)  # no device read
        if sources.enabled:
            sources.add(batch)  # the loader's host tensors
        since_row += 1
        log_now = step % config.log_every == 0 or step == config.total_steps - 1
        checkpoint_now = (step + 1) % config.checkpoint_every == 0 or step == config.total_steps - 1
        stop_now = stop_after is not None and step + 1 - start_step >= stop_after
        if log_now or checkpoint_now or stop_now:  # read the steps since the last flush; may stop the run
            records = stepper.flush()
            losses += [loss for s, loss, _ in records if s >= start_step]
            stats.absorb(records, limit=config.max_nonfinite_steps, say=say, run_dir=run_dir)
        if log_now:
            now = time.perf_counter()
            row = {"step": step, "loss": stats.pending[-1], "loss_mean": sum(stats.pending) / len(stats.pending),
                   "lr": learning_rate(step, ref_lr=config.ref_lr, decay_steps=config.lr_decay_steps,
                                       rampup_steps=config.lr_rampup_steps),
                   "sec_per_step": (now - row_time) / since_row, "data_sec": data_sec / since_row,
                   "skipped_steps": stats.skipped, "images": (step + 1) * config.batch_size,
                   **(sources.row() if sources.enabled else {})}
            metrics.write(row)
            metrics.progress(row)
            stats.pending, since_row, data_sec, row_time = [], 0, 0.0, now
        if config.snapshot_every and (step + 1) % config.snapshot_every == 0:
            snapshot(step)
        if checkpoint_now:
            save(step)
        if stop_now:
            break
    metrics.close()
    return {"step": step, "losses": losses, "skipped_steps": stats.skipped}
