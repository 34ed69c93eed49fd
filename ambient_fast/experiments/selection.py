"""Which corrupted samples an annotation admits at low noise, and what that does to the high frequencies the model
sees (DESIGN.md section 6). At level s the usable set mixes clean samples with the corrupted ones whose sigma_min
is low enough; if the classifier gives low sigma_min mostly to images that were smooth before blurring (blur
changes them little), the admitted set is short of detail twice over:

  selection  mean log10 high-frequency power of the admitted samples' clean originals vs all clean originals
  leak       mean log10 high-frequency power of the admitted (corrupted) samples vs their own originals

both in decades, < 0 = less detail; plus the corrupted share of the usable set at that level.

With an acceptance table (annotations.Acceptance, density-ratio weights) a corrupted sample past the gate counts
with its acceptance probability a_i(s), as often as the sampler takes it: the means become a-weighted means, the
share is sum a / (clean + sum a), and `ess` is the Kish effective count (sum a)^2 / sum a^2 of the admitted.

`python -m ambient_fast.experiments.selection` measures the per-sample threshold against density-ratio
acceptance on an experiment's data (classifier trained once and cached; no diffusion training): docs/annotation.md.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..buffer import buffer_factor
from ..metrics.spectrum import HIGH_FREQUENCY_CYCLES_PER_PX

DIAGNOSTIC_LEVELS = (0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class SelectionRow:
    sigma: float
    corrupted_share: float  # of the usable set
    admitted: int  # corrupted samples usable at sigma
    selection_decades: float  # NaN when none is admitted
    leak_decades: float
    taken: float = math.nan  # corrupted samples taken per pass: the count, or sum a_i(s) with acceptance
    ess: float = math.nan  # Kish (sum a)^2 / sum a^2 of the admitted (= the count without acceptance)


def high_frequency_power(images: torch.Tensor) -> torch.Tensor:
    """Per image: log10 of the mean power above 0.25 cycles/px (mean removed per channel), float64 [N]."""
    x = images.double()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    frequencies = torch.fft.fftfreq(x.shape[-1], dtype=torch.float64)
    radius = torch.sqrt(frequencies[:, None] ** 2 + frequencies[None, :] ** 2)
    power = torch.fft.fft2(x).abs().pow(2).mean(dim=1)  # [N, H, W], channels averaged
    return torch.log10(power[:, radius > HIGH_FREQUENCY_CYCLES_PER_PX].mean(dim=1).clamp_min(1e-30))


def selection_diagnostic(originals: torch.Tensor, corrupted: torch.Tensor, is_clean: torch.Tensor,
                         sigma_min: torch.Tensor, *, max_weight: float = 4.0,
                         levels: tuple[float, ...] = DIAGNOSTIC_LEVELS, acceptance=None) -> list[SelectionRow]:
    """originals: clean images [N, ...]; corrupted: the training images as used (clean ones unchanged);
    sigma_min [N] the annotation (0 for clean samples); acceptance: annotations.Acceptance [N, L] or None (the
    hard rule: every sample past the gate is taken)."""
    b = buffer_factor(max_weight)
    power_original = high_frequency_power(originals)
    power_used = high_frequency_power(corrupted)
    all_mean = power_original.mean()
    rows = []
    for sigma in levels:
        usable = sigma > b * sigma_min
        weight = (usable & ~is_clean).double()  # how often each corrupted sample is taken at sigma, per pass
        if acceptance is not None:
            weight = weight * acceptance.at(sigma)
        admitted = weight > 0
        count, taken, squares = int(admitted.sum()), float(weight.sum()), float((weight * weight).sum())
        share = taken / max(float((usable & is_clean).sum()) + taken, 1.0)
        if taken > 0:
            mean = lambda values: float((weight * values).sum() / taken)  # noqa: E731  (a-weighted mean)
            selection = mean(power_original) - float(all_mean)
            leak = mean(power_used - power_original)
        else:
            selection = leak = float("nan")
        rows.append(SelectionRow(sigma, share, count, selection, leak, taken,
                                 taken * taken / squares if squares > 0 else 0.0))
    return rows


# ------------------------------------------------------------------------------------ threshold vs weights
def compare_threshold_and_weights(experiment_name: str, *, seed: int = 0, out_dir: str | Path, clips=(1.0,),
                                  floors=(0.05,), levels: int = 32, draws: int = 4, device="cpu",
                                  log=print) -> dict:
    """Selection diagnostic of the paper's per-sample threshold vs density-ratio acceptance on one experiment's
    data: per-sample sigma_min as the experiment annotates it (fast search, calibrated, out of fold), and P_i(s) on
    a `levels`-level grid for a = min(1, w / c) with the paper's gate ("keep") or the gate a >= floor."""
    from ..annotate import density_ratio as dr
    from ..annotate.sigma_min import LevelGrid, SigmaMinConfig, sigma_min_fast
    from ..annotations import Acceptance
    from .configs import EXPERIMENTS
    from .experiment_data import cpu_threads, prepare_data
    from .classifiers import classifiers_for

    experiment = EXPERIMENTS[experiment_name]
    out_dir = Path(out_dir)
    prepared = prepare_data(experiment)
    mixed, originals = prepared.mixed, prepared.train
    classifiers = classifiers_for(experiment, mixed, seed=seed, device=device,
                                  cache=out_dir / f"classifier-{experiment_name}-seed{seed}.safetensors", log=log)
    setting, corrupted = experiment.classifier, ~mixed.is_clean
    report = classifiers.report
    usable_from = report.chance_from if setting.rule == "calibrated" else None
    ids = mixed.sample_ids[corrupted]
    router = classifiers.router(classifiers.route(mixed.corrupted_images, scoring=setting.scoring), ids,
                                calibrated=setting.rule == "calibrated")
    grid = LevelGrid(classifiers.grid.sigma_lo, classifiers.grid.sigma_hi, levels).sigmas()
    with cpu_threads(setting.cpu_threads, device):
        paper = sigma_min_fast(router, mixed.corrupted_images, ids, device=device, usable_from=usable_from,
                               config=SigmaMinConfig(grid=LevelGrid(levels=setting.levels), draws=setting.draws,
                                                     eps=setting.eps, seed=seed)).sigma_min
        p = dr.trajectories(router, mixed.corrupted_images, ids, grid, draws=draws, seed=seed, device=device,
                            usable_from=usable_from)
    ratio = dr.density_ratio(p)
    sigma_min = torch.zeros(mixed.images.shape[0], dtype=torch.float64)
    sigma_min[corrupted] = paper
    variants = {"threshold (paper)": (sigma_min, None, None)}
    for clip in clips:
        accept = dr.acceptance_from_ratio(ratio, clip=clip)
        table = torch.ones(mixed.images.shape[0], levels, dtype=torch.float32)
        table[corrupted] = accept.float()
        gates = {"keep": paper} | {f"a>={floor:g}": dr.gate_from_acceptance(accept, grid, floor=floor)
                                   for floor in floors}
        for gate_name, gate in gates.items():
            gated = sigma_min.clone()
            gated[corrupted] = gate
            variants[f"weights c={clip:g}, gate {gate_name}"] = (gated, Acceptance(grid, table), (accept, ratio, clip))
    levels_measured = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
    results = {"experiment": experiment_name, "seed": seed, "levels": levels, "draws": draws,
               "usable_from": usable_from, "variants": {}}
    for name, (gate, acceptance, weights) in variants.items():
        rows = selection_diagnostic(originals, mixed.images, mixed.is_clean, gate, acceptance=acceptance,
                                    levels=levels_measured)
        entry = {"rows": [asdict(row) for row in rows]}
        if weights is not None:
            accept, ratio_, clip = weights
            entry["level_stats"] = [asdict(r) for r in dr.level_stats(
                accept, grid, gate[corrupted], clean_count=int(mixed.is_clean.sum()), ratio=ratio_, clip=clip)]
        results["variants"][name] = entry
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"selection-{experiment_name}-seed{seed}.json").write_text(json.dumps(results, indent=1))
    return results


def markdown(results: dict) -> str:
    """The comparison as markdown tables: selection, leak, corrupted share, taken per pass and ESS per level."""
    variants = results["variants"]
    levels = [row["sigma"] for row in next(iter(variants.values()))["rows"]]
    head = "| annotation | " + " | ".join(f"s={s:g}" for s in levels) + " |\n|---|" + "---|" * len(levels)
    blocks = []
    for field_name, title, fmt in (("selection_decades", "selection (decades)", "{:+.2f}"),
                                   ("leak_decades", "leak (decades)", "{:+.2f}"),
                                   ("corrupted_share", "corrupted share of what is taken", "{:.0%}"),
                                   ("taken", "corrupted taken per pass", "{:.0f}"), ("ess", "Kish ESS", "{:.0f}")):
        lines = [f"{title}:", "", head]
        for name, entry in variants.items():
            values = [fmt.format(row[field_name]) if not math.isnan(row[field_name]) else "-" for row in entry["rows"]]
            lines.append(f"| {name} | " + " | ".join(values) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="selection bias: per-sample threshold vs density-ratio acceptance")
    parser.add_argument("--experiment", default="demo-cpu-blur1.0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/selection", help="folder: cached classifier and the JSON")
    parser.add_argument("--clips", type=float, nargs="+", default=[1.0], help="envelopes c of a = min(1, w / c)")
    parser.add_argument("--floors", type=float, nargs="+", default=[0.05], help="gates a >= floor to compare")
    parser.add_argument("--levels", type=int, default=32, help="levels of the weights' grid")
    parser.add_argument("--draws", type=int, default=4, help="noise draws per level for P_i(s)")
    args = parser.parse_args(argv)
    results = compare_threshold_and_weights(args.experiment, seed=args.seed, out_dir=args.out, clips=args.clips,
                                            floors=args.floors, levels=args.levels, draws=args.draws)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
