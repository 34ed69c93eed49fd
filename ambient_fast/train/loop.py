"""The training loop: ambient sampler -> fused noising -> network -> fused ambient loss -> Adam -> power EMA.

Resume by rerunning the same command: the newest checkpoint in run_dir that verifies is loaded (a corrupt one is
reported and the previous one used; when none can be read the run stops, naming them, unless restart=True), and training continues with the same samples, levels and noise as an
uninterrupted run, because every random choice is keyed by (seed, step, slice) rather than by a running
generator.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch

from .. import ambient_loss_precond, ambient_noising
from ..data import AmbientSampler, open_dataset, standardise_latents
from ..errors import UserError
from ..networks import Precond
from . import checkpoint, distributed
from .build import build_network, parameter_count
from .config import ConfigError, TrainConfig
from .feed import StepBatches, chunk_seed, loader
from .metrics import MetricsLog
from .phema import PowerEMA
from .schedule import learning_rate

# Fields that may change between a run and its resumption (they do not change what is computed).
# allow_missing only permits: what the run trains on is guarded by the annotations digest.
RESUMABLE_CHANGES = {"total_steps", "log_every", "num_workers", "tensorboard", "checkpoint_every", "keep_checkpoints",
                     "snapshot_every", "cpu_threads", "allow_missing", "verify_data"}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingStep(torch.nn.Module):
    """Forward of one slice up to the loss, as a module so DDP sees the whole computation."""

    def __init__(self, precond: Precond, *, precision: str):
        super().__init__()
        self.precond, self.precision = precond, precision

    def forward(self, x_t, x_tn, sigma_t, sigma_tn, class_labels):
        autocast = (torch.autocast(x_t.device.type, dtype=AUTOCAST[self.precision]) if self.precision in AUTOCAST
                    else contextlib.nullcontext())
        with autocast:
            raw, logvar = self.precond.raw(x_t, sigma_t, class_labels)
        # Fused ambient loss (DESIGN.md section 1) with D = c_skip x_t + c_out F formed in the kernel, fp32.
        return ambient_loss_precond(raw.float(), x_t, x_tn, sigma_t, sigma_tn, sigma_data=self.precond.sigma_data,
                                    logvar=None if logvar is None else logvar.float(), reduction="mean")


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
    mine = json.loads(config.to_json())
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

    # ---- batch geometry: global batch = world_size x rounds x batch_gpu
    batch_gpu = config.batch_gpu or config.batch_size // dist_info.world_size
    if config.batch_size % (batch_gpu * dist_info.world_size):
        raise ConfigError(f"batch_size {config.batch_size} is not a multiple of batch_gpu {batch_gpu} x world size "
                          f"{dist_info.world_size}")
    rounds = config.batch_size // (batch_gpu * dist_info.world_size)
    chunks = [dist_info.rank * rounds + r for r in range(rounds)]

    # ---- network, optimizer, EMA
    net = network if network is not None else build_network(
        config.network, img_channels=channels, img_resolution=resolution, label_dim=label_dim, seed=config.seed)
    net = net.to(device)
    # "builtin" networks are rebuilt from config.network by `generate`; a user's module is named for the record.
    network_name = "builtin" if network is None else f"{type(network).__module__}.{type(network).__qualname__}"
    precond = Precond(net, sigma_data=config.sigma_data, label_dim=label_dim)
    step_module = TrainingStep(precond, precision=config.precision)
    if dist_info.enabled:
        step_module = torch.nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.ref_lr, betas=tuple(config.adam_betas), eps=config.adam_eps)
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
    ema = PowerEMA(net, config.ema_stds)

    # ---- resume
    start_step, skipped, consecutive_bad = 0, 0, 0
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
        start_step, skipped = saved_step + 1, meta["skipped_steps"]
    batches = StepBatches(sampler, total_steps=config.total_steps, num_chunks=dist_info.world_size * rounds, chunks=chunks)
    standardise = _latent_standardiser(config, stored_channels, device) if is_latent else None

    usable = {s: float(table.usable(s, max_weight=config.max_weight).double().mean()) for s in (0.01, 0.1, 1.0, 10.0)}
    say(f"ambient_fast train -> {run_dir}\n"
        f"  data: {len(dataset)} samples {tuple(dataset.shape)} ({'latents' if is_latent else 'pixels'}{checked}), labels: {label_dim or 'none'}, "
        f"annotations: {config.annotations if config.ambient and config.annotations else 'none (all clean)'}"
        f"{'' if config.ambient else ' [ambient off: plain EDM loss]'}\n"
        f"  {coverage[0]}\n"
        f"  usable fraction at sigma " + ", ".join(f"{s:g}: {f:.2f}" for s, f in usable.items()) + "\n"
        f"  network: {config.network.arch if network is None else type(network).__name__}, {parameter_count(net) / 1e6:.2f}M parameters\n"
        f"  batch {config.batch_size} = {dist_info.world_size} rank(s) x {rounds} round(s) x {batch_gpu}, device {device}, "
        f"precision {config.precision}\n"
        f"  steps {start_step} -> {config.total_steps}" + (f" (resumed from step {start_step - 1})" if start_step else "")
        + f", lr {config.ref_lr:g} (decay after {config.lr_decay_steps}, ramp-up {config.lr_rampup_steps}), EMA stds {config.ema_stds}")
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(json.loads(config.to_json()), indent=2))
    metrics = MetricsLog(run_dir, resume_step=start_step, total_steps=config.total_steps,
                         tensorboard=config.tensorboard, enabled=dist_info.is_main)

    def save(step: int) -> None:
        optim_tensors, optim_meta = checkpoint.optimizer_to_flat(optimizer)
        tensors = {**{f"net.{k}": v for k, v in net.state_dict().items()}, **optim_tensors, **ema.tensors()}
        meta = {"step": step, "config": json.loads(config.to_json()), "sampler": batches.state_after(step),
                "optimizer": optim_meta, "skipped_steps": skipped, "scaler": scaler.state_dict() if scaler else None,
                "img_channels": channels, "img_resolution": resolution, "label_dim": label_dim, "is_latent": is_latent,
                "network": network_name, "annotations_digest": annotations_digest}
        if dist_info.is_main:
            checkpoint.save(checkpoint.path_for(run_dir, step), tensors, meta)
            checkpoint.prune(run_dir, config.keep_checkpoints)

    def snapshot(step: int) -> None:
        if dist_info.is_main:
            checkpoint.save(checkpoint.path_for(run_dir, step, "phema"), ema.tensors(),
                            {"step": step + 1, "stds": list(config.ema_stds), "config": json.loads(config.to_json()),
                             "img_channels": channels, "img_resolution": resolution, "label_dim": label_dim,
                             "is_latent": is_latent, "network": network_name})

    losses = []
    net.train()
    data_iter = iter(loader(dataset, batches, num_workers=config.num_workers, pin_memory=device.type == "cuda"))
    step = start_step - 1
    tick = time.perf_counter()
    for step in range(start_step, config.total_steps):
        batch = next(data_iter)
        assert batch["step"] == step, "data loader out of step with training"
        data_sec = time.perf_counter() - tick
        lr = learning_rate(step, ref_lr=config.ref_lr, decay_steps=config.lr_decay_steps, rampup_steps=config.lr_rampup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), dtype=torch.float64, device=device)
        for r, chunk in enumerate(chunks):
            part = slice(r * batch_gpu, (r + 1) * batch_gpu)
            seed = chunk_seed(config.seed, step, chunk)
            x0 = batch["image"][part].to(device, non_blocking=True)
            if standardise is not None:
                x0 = standardise(x0, seed + 1)
            ids = batch["sample_id"][part].to(device)
            sigma_t, sigma_tn = batch["sigma_t"][part].to(device), batch["sigma_tn"][part].to(device)
            labels = batch["label"][part].to(device) if label_dim else None
            # x_tn = x0 + s_tn n_i (n_i fixed per sample id), x_t = x_tn + sqrt(s_t^2 - s_tn^2) eps (Section 3.1)
            x_t, x_tn = ambient_noising(x0, ids, sigma_t, sigma_tn, annotation_seed=config.annotation_seed, seed=seed)
            last = r == rounds - 1
            sync = step_module.no_sync() if dist_info.enabled and not last else contextlib.nullcontext()
            with sync, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)  # dropout, inside a forked generator: the global one is left alone
                loss = step_module(x_t, x_tn, sigma_t, sigma_tn, labels) / rounds
                (scaler.scale(loss) if scaler else loss).backward()
            total += loss.detach().double()

        if scaler is not None:
            scaler.unscale_(optimizer)
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        finite = bool(torch.stack([g.isfinite().all() for g in grads]).all()) if grads else True
        if finite:
            (scaler.step(optimizer) if scaler else optimizer.step())
            consecutive_bad = 0
        else:
            skipped += 1
            consecutive_bad += 1
            say(f"step {step}: non-finite gradients, step skipped ({consecutive_bad} in a row, {skipped} in total)")
            if consecutive_bad > config.max_nonfinite_steps:
                raise FloatingPointError(f"{consecutive_bad} consecutive steps had NaN/inf gradients (limit "
                                         f"max_nonfinite_steps={config.max_nonfinite_steps}); last good checkpoint in {run_dir}")
        if scaler is not None:
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        ema.update(net, step=step + 1)

        loss_value = float(dist_info.all_reduce_mean(total).item())
        losses.append(loss_value)
        now = time.perf_counter()
        row = {"step": step, "loss": loss_value, "lr": lr, "sec_per_step": now - tick, "data_sec": data_sec,
               "skipped_steps": skipped, "images": (step + 1) * config.batch_size}
        if step % config.log_every == 0 or step == config.total_steps - 1:
            metrics.write(row)
            metrics.progress(row)
        if config.snapshot_every and (step + 1) % config.snapshot_every == 0:
            snapshot(step)
        if (step + 1) % config.checkpoint_every == 0 or step == config.total_steps - 1:
            save(step)
        tick = time.perf_counter()
        if stop_after is not None and step + 1 - start_step >= stop_after:
            break
    metrics.close()
    return {"step": step, "losses": losses, "skipped_steps": skipped}
