"""One arm's training run and its samples, alike for every arm of a controlled experiment: train (or resume, or
reuse a finished run; a run made with other annotations is set aside, never reused; an arm with the same inputs
as an earlier one copies its run), then sample the EMA network from noise that depends on the seed alone. Run in
this process or in a worker of experiments/arm_lanes.py (train_and_sample), with the same result.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from .configs import Experiment
from .experiment_data import cpu_threads


def train_arm(images, sigma_min, sigma_max, *, experiment: Experiment, seed: int, run_dir: Path, device, log=print,
              note=print, acceptance=None, copy_of: Path | None = None):
    """Train (or resume / reuse a finished run in run_dir) with the experiment's preset; every arm alike. A run in
    run_dir made with other annotations is set aside (renamed), never reused. log: the trainer's lines; note: the
    runner's own. copy_of: the finished run of an earlier arm with the same run_inputs (fixed and classifier when the
    classifier is at chance: both at the single level); this one starts from a copy of it, which is what it would
    train (training is deterministic)."""
    from ..train import preset, train

    dataset, table, annotations_digest = _arm_table(images, sigma_min, sigma_max, experiment=experiment, seed=seed,
                                                    acceptance=acceptance)
    _set_aside_if_other_annotations(run_dir, annotations_digest, log=note)
    if copy_of is not None and not run_dir.exists():
        shutil.copytree(copy_of, run_dir)  # resumes there: the annotations path may differ, the digest may not
        note(f"    the same images and annotations as {copy_of.name}: its run is reused (copied), not trained again")
    run_dir.mkdir(parents=True, exist_ok=True)
    annotation_path = run_dir / "annotations.safetensors"
    table.save(annotation_path)
    config = preset(experiment.train_preset, **dict(experiment.train_overrides), seed=seed, annotation_seed=seed,
                    annotations=str(annotation_path))
    return train(config, run_dir=run_dir, dataset=dataset, device=device, log=log)


def run_inputs(images, sigma_min, sigma_max, *, experiment: Experiment, seed: int, acceptance=None) -> str:
    """What an arm's run is made of, as "<images sha256>/<annotations digest>": two arms with the same inputs train
    the same run (the second copies it: train_arm's copy_of)."""
    import hashlib

    digest = _arm_table(images, sigma_min, sigma_max, experiment=experiment, seed=seed, acceptance=acceptance)[2]
    return f"{hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()}/{digest}"


def _arm_table(images, sigma_min, sigma_max, *, experiment: Experiment, seed: int, acceptance=None):
    """(dataset, annotation table, annotations digest) of an arm's training set."""
    from ..annotations import Annotations
    from ..data import TensorDataset

    dataset = TensorDataset(images)
    table = Annotations(torch.arange(images.shape[0]), sigma_min, sigma_max, acceptance=acceptance,
                        provenance={"experiment": experiment.name, "seed": seed})
    return dataset, table, dataset.annotations(table).digest()


def _set_aside_if_other_annotations(run_dir: Path, digest: str, *, log=print) -> None:
    """A rerun whose annotations changed (another classifier, a code change) must not reuse the old run: it is
    renamed to <run>.annotations-<old digest> (kept, not deleted) and the arm trains afresh."""
    from ..train import checkpoint

    old = None
    for _, path in reversed(checkpoint.list_checkpoints(run_dir)):  # headers only: train() loads the tensors
        try:
            old = checkpoint.read_meta(path).get("annotations_digest")
            break
        except checkpoint.CorruptCheckpointError:
            continue  # train() reports it and falls back to the previous checkpoint, as we do here
    if old is None or old == digest:
        return
    aside = run_dir.with_name(f"{run_dir.name}.annotations-{old}")
    if aside.exists():
        shutil.rmtree(aside)  # the same old annotations set aside before: one copy is enough
    run_dir.rename(aside)
    log(f"    {run_dir.name}: its annotations changed (digest {old} -> {digest}); the old run moved to {aside.name}")


@torch.no_grad()
def generate(run_dir: Path, *, count: int, num_steps: int, seed: int, ema_std: float | None, device,
             batch_size: int = 500) -> torch.Tensor:
    """`count` samples of the run's EMA network from noise seeded by `seed` alone (the same for every arm)."""
    from ..sampling import heun_sample, load_denoiser

    denoiser, meta = load_denoiser(run_dir, ema_std=ema_std, device=device)
    shape = (meta["img_channels"], meta["img_resolution"], meta["img_resolution"])
    noise = torch.randn(count, *shape, generator=torch.Generator().manual_seed(10_000 + seed))
    return torch.cat([heun_sample(denoiser, noise[i:i + batch_size].to(device), num_steps=num_steps).cpu()
                      for i in range(0, count, batch_size)])


def train_and_sample(*, images, sigma_min, sigma_max, acceptance, experiment, seed: int, run_dir: str,
                     copy_of: str | None, device: str, progress=None) -> dict:
    """One arm: train (or resume / reuse) its run, then sample it from the seed's noise, at experiment.arm_threads.
    Module-level, so that a worker process can run it. progress(line): the runner's notes (set-aside, twin copy).
    Returns {"samples": [count, C, H, W], "seconds": {"train": ..., "sample": ...}}."""
    note = progress or print
    seconds = {}
    with cpu_threads(experiment.arm_threads, device):
        tick = time.perf_counter()
        train_arm(images, sigma_min, sigma_max, experiment=experiment, seed=seed, run_dir=Path(run_dir),
                  device=device, log=lambda line: None, note=note, acceptance=acceptance,
                  copy_of=None if copy_of is None else Path(copy_of))
        seconds["train"] = time.perf_counter() - tick
        tick = time.perf_counter()
        samples = generate(Path(run_dir), count=experiment.generated_count, num_steps=experiment.sampler_steps,
                           seed=seed, ema_std=experiment.ema_std, device=device)
        seconds["sample"] = time.perf_counter() - tick
    return {"samples": samples, "seconds": seconds}
