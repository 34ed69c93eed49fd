"""How far the OOD demo's denoiser reaches: the share of |dD(x)/dx| at the 2x2 centre patch that lies within a
centred context, with GroupNorm's per-image statistics live (as trained) or held constant (the convolutions alone).

Why (issue 10 point 7, docs/results.md): crop(sigma) measured by cropping the input is 0.67-0.81 of the side at
16, 24 and 32 px alike. If the convolutions are local but the normalisation statistics span the whole image, the
live Jacobian spreads over the image while the held one stays near the patch. Held statistics are those of
ambient_fast/annotate/norm_statistics.py (measure_crop_size(norm_statistics="full")), here on the image itself.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/denoiser_reach.py --resolution 32 --run runs/demo-cpu-ood-32/all_data-seed0
"""
from __future__ import annotations

import argparse
from contextlib import nullcontext
from dataclasses import replace

import torch

from ambient_fast.annotate.norm_statistics import HeldGroupNormStatistics

from ambient_fast.experiments.configs import EXPERIMENTS
from ambient_fast.experiments.controlled import prepare_data
from ambient_fast.sampling import load_denoiser

SHARES = (0.95, 0.99)


def reach(denoiser, images: torch.Tensor, sigma: float, *, held: bool) -> list[int]:
    """Smallest centred even context holding each of SHARES of sum |dD_patch/dx| (over images, channels, outputs)."""
    size, p0 = images.shape[-1], (images.shape[-1] - 2) // 2
    x = (images + sigma * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).requires_grad_()
    levels = torch.full((x.shape[0],), sigma)
    statistics = HeldGroupNormStatistics()
    if held:  # the same image's statistics, recorded without gradient and replayed as constants
        with torch.no_grad(), statistics.record():
            denoiser(x, levels)
    with statistics.replay() if held else nullcontext():
        out = denoiser(x, levels)
    mass = torch.zeros(size, size, dtype=torch.float64)
    for c in range(out.shape[1]):
        for dy in range(2):
            for dx in range(2):
                grad, = torch.autograd.grad(out[:, c, p0 + dy, p0 + dx].sum(), x, retain_graph=True)
                mass += grad.abs().sum(dim=(0, 1)).double()
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    distance = torch.maximum((rows - p0 - 0.5).abs(), (cols - p0 - 0.5).abs())  # from the patch's centre
    inside = [float(mass[distance < context / 2].sum() / mass.sum()) for context in range(2, size + 1, 2)]
    return [2 + 2 * next(i for i, share in enumerate(inside) if share >= q - 1e-12) for q in SHARES]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolution", type=int, default=16, metavar="PX")
    parser.add_argument("--run", required=True, help="a trained run of the demo at that resolution (its EMA 0.10)")
    parser.add_argument("--images", type=int, default=64, help="kept target images to average over")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = EXPERIMENTS["demo-cpu-ood"]
    experiment = replace(base, data=replace(base.data, resolution_px=args.resolution))
    images = prepare_data(experiment).mixed.clean_images[:args.images]
    denoiser, _ = load_denoiser(args.run, ema_std=experiment.ema_std)
    print(f"| sigma | context with {', '.join(f'{q:.0%}' for q in SHARES)} of |dD/dx|, GroupNorm statistics live "
          "| the same, statistics held |")
    for sigma in experiment.crops.measure_sigmas[::2]:
        live, held = reach(denoiser, images, sigma, held=False), reach(denoiser, images, sigma, held=True)
        print(f"| {sigma:g} | {', '.join(map(str, live))} px | {', '.join(map(str, held))} px |")


if __name__ == "__main__":
    main()
