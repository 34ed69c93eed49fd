"""Which metrics can tell sets of 1000 samples apart: each metric's value between a fresh draw of 1000 clean
embedded training crops and the fixed held-out test set (the floor: the same distribution up to the train/test
photograph blocks), the same draw blurred by sigma_B = 0.4 / 0.6 / 1.0 px (the effect), and the spread of each
over independent draws (the noise a comparison of arms faces). Also checks that the bootstrap of one draw (as in
the experiment report, metrics.bootstrap) reproduces the draw-to-draw spread.

The figure of merit is z = (mean at blur - mean clean) / sd over draws: how many noise widths a blur moves the
metric. k for the PCA Frechet distance (metrics.projection) was chosen from this table.

    OMP_NUM_THREADS=2 flock /tmp/ambient_heavy.lock .venv/bin/python benchmarks/metric_power.py [--reference train]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ambient_fast.corruptions import GaussianBlur
from ambient_fast.experiments.embedded_data import EmbeddedDataConfig, load_embedded_dataset
from ambient_fast.metrics.bootstrap import resample_counts
from ambient_fast.metrics.frechet import frechet_distance_of, frechet_distance_replicates
from ambient_fast.metrics.kid import kid, kid_replicates, polynomial_kernel
from ambient_fast.metrics.projection import PCAFeatures
from ambient_fast.metrics.sliced_wasserstein import swd
from ambient_fast.metrics.spectrum import spectrum_error

BLURS = (0.4, 0.6, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=10, help="independent draws of --count crops per condition")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--components", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--bootstrap", type=int, default=50)
    parser.add_argument("--pca-only", action="store_true", help="only the PCA metrics (a quick sweep of k)")
    parser.add_argument("--reference", choices=("test", "train"), default="test",
                        help="test: the held-out crops (other photograph blocks; what the experiment compares with); "
                             "train: one more independent draw of the training crops (the same distribution)")
    args = parser.parse_args()
    tick = time.perf_counter()
    extra = 1000 if args.reference == "train" else 0
    data = load_embedded_dataset(EmbeddedDataConfig(train_count=args.draws * args.count + extra, test_count=1000))
    reference = data.test if args.reference == "test" else data.train[-1000:]
    pcas = {k: PCAFeatures.fit(reference, components=k) for k in args.components}
    ref_pixels = reference.reshape(reference.shape[0], -1).double()
    ref_features = {k: pca(reference) for k, pca in pcas.items()}
    ref_kernels = {"pixels": polynomial_kernel(ref_pixels, ref_pixels),
                   **{k: polynomial_kernel(f, f) for k, f in ref_features.items()}}

    def metrics(images: torch.Tensor) -> dict[str, float]:
        pixels = images.reshape(images.shape[0], -1).double()
        row = {} if args.pca_only else {
            "FD pixels (768)": frechet_distance_of(pixels, ref_pixels),
            "KID pixels x1e3": kid(pixels, ref_pixels, kernels=(polynomial_kernel(pixels, pixels), ref_kernels["pixels"],
                                                               polynomial_kernel(pixels, ref_pixels)))}
        for k, pca in pcas.items():
            features = pca(images)
            row[f"FD pca{k}"] = frechet_distance_of(features, ref_features[k])
            row[f"KID pca{k} x1e3"] = kid(features, ref_features[k], kernels=(
                polynomial_kernel(features, features), ref_kernels[k], polynomial_kernel(features, ref_features[k])))
        if not args.pca_only:
            row["SWD x1e3"] = swd(images, reference)["swd"]
            row["HF decades"] = spectrum_error(images, reference)["spectrum_high_freq"]
        return row

    conditions = {"clean": None, **{f"blur {s}": GaussianBlur(sigma_px=s) for s in BLURS}}
    values: dict[str, list[dict]] = {name: [] for name in conditions}
    for draw in range(args.draws):
        images = data.train[draw * args.count:(draw + 1) * args.count]
        ids = data.train_ids[draw * args.count:(draw + 1) * args.count]
        for name, corruption in conditions.items():
            corrupted = images if corruption is None else corruption.apply(images, sample_ids=ids, seed=0)
            values[name].append(metrics(corrupted))
        print(f"draw {draw + 1}/{args.draws} done ({time.perf_counter() - tick:.0f} s)", flush=True)

    names = list(values["clean"][0])
    print(f"\n{args.draws} draws of {args.count} crops against {reference.shape[0]} {args.reference} crops: mean +- sd over "
          "draws; z = (mean blurred - mean clean) / sd (the larger of the two sds)")
    print(f"{'metric':<18}{'clean':>18}" + "".join(f"{name:>26}" for name in conditions if name != "clean"))
    for metric in names:
        table = {name: np.array([row[metric] for row in rows]) for name, rows in values.items()}
        clean = table["clean"]
        cells = [f"{clean.mean():>10.4g} +- {clean.std(ddof=1):<5.2g}"]
        for name in conditions:
            if name == "clean":
                continue
            x = table[name]
            z = (x.mean() - clean.mean()) / max(x.std(ddof=1), clean.std(ddof=1))
            cells.append(f"{x.mean():>10.4g} +- {x.std(ddof=1):<5.2g} z={z:>+6.1f}")
        print(f"{metric:<18}" + "".join(f"{c:>26}" for c in cells))

    if args.pca_only:
        return
    # The bootstrap of one draw (both sets resampled) against the spread over draws (reference fixed).
    images = data.train[:args.count]
    counts_a = resample_counts(args.count, replicates=args.bootstrap, seed=0)
    counts_b = resample_counts(reference.shape[0], replicates=args.bootstrap, seed=1)
    counts_fixed = torch.ones_like(counts_b)
    pixels = images.reshape(images.shape[0], -1).double()
    k = 128 if 128 in pcas else args.components[-1]
    features = pcas[k](images)
    print(f"\nbootstrap sd of one clean draw (B = {args.bootstrap}) vs sd over draws:")
    for label, reference_counts in (("generated resampled only", counts_fixed), ("both resampled", counts_b)):
        fd_pix = frechet_distance_replicates(pixels, counts_a, ref_pixels, reference_counts)
        fd_pca = frechet_distance_replicates(features, counts_a, ref_features[k], reference_counts)
        kid_pix = kid_replicates((polynomial_kernel(pixels, pixels), ref_kernels["pixels"],
                                  polynomial_kernel(pixels, ref_pixels)), counts_a, reference_counts)
        swd_boot = swd(images, reference, counts_a=counts_a, counts_b=reference_counts)[1]["swd"]
        print(f"  {label}: FD pixels {fd_pix.std(ddof=1):.3g}, FD pca{k} {fd_pca.std(ddof=1):.3g}, "
              f"KID pixels {kid_pix.std(ddof=1):.3g}, SWD {swd_boot.std(ddof=1):.3g}")
    clean = values["clean"]
    print("  over draws: " + ", ".join(f"{m} {np.std([row[m] for row in clean], ddof=1):.3g}"
                                       for m in ("FD pixels (768)", f"FD pca{k}", "KID pixels x1e3", "SWD x1e3")))
    print(f"total {time.perf_counter() - tick:.0f} s")


if __name__ == "__main__":
    main()
