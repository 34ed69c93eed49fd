"""`ambient-fast train`, `ambient-fast generate`, `ambient-fast dataset encode|info|to-shards`."""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

from ..errors import UserError, check_writable, device_arg, nonnegative_int, user_input

# Errors the user can fix (a missing path, unreadable checkpoints, misaligned annotations, a full disk...) reach
# ambient_fast.cli.main, which prints them as one "error: ..." line (its docstring has the rule).


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="train a diffusion model with the ambient loss (resumes when rerun)")
    train.add_argument("--preset", default="tiny-cpu", help="row of ambient_fast.train.config.PRESETS")
    train.add_argument("--data", required=True, help="dataset directory or zip (EDM2 format, images or .npy latents)")
    train.add_argument("--annotations", default=None, help="annotation file (safetensors); default: all clean")
    train.add_argument("--allow-missing", action="store_true",
                       help="accept an annotation file that misses samples (they train as clean), holds ids the "
                            "dataset lacks or has no keys (default: refuse it); the coverage line counts them")
    train.add_argument("--run-dir", required=True, help="checkpoints, EMA snapshots and metrics.jsonl go here")
    train.add_argument("--device", type=device_arg, default=None,
                       help="default: cuda:LOCAL_RANK when CUDA is available, else cpu")
    train.add_argument("--restart", action="store_true",
                       help="when RUN_DIR holds checkpoints and none can be read, start over from step 0, moving the "
                            "old run's files to RUN_DIR/before-restart-N/ (never deleted); default: stop and name "
                            "them. A readable checkpoint is always resumed")
    train.add_argument("--compile", action="store_true",
                       help="torch.compile(fullgraph=True) the network, preconditioning and ambient loss as one graph "
                            "(compiles for a minute or more first; --set compile_mode=reduce-overhead for CUDA graphs); "
                            "default: eager")
    train.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a config field, e.g. --set total_steps=500 --set network.model_channels=64")
    train.set_defaults(func=_train)

    generate = subparsers.add_parser("generate", help="sample with the Heun sampler (EDM's, or rectified flow's for a "
                                                         "flow run); writes a PNG grid and an npz")
    generate.add_argument("source", help="run directory or checkpoint file")
    generate.add_argument("--ema", type=_ema_choice, default="tracked",
                          help="EMA std (tracked, or reconstructed post hoc from the snapshots); 'raw' for the raw "
                               "weights; default: the run's first tracked EMA (EDM / EDM2 sample the EMA)")
    generate.add_argument("--num", type=_positive_int, default=None,
                          help="number of samples (default: 64, or one per caption of a --captions file)")
    generate.add_argument("--steps", type=_positive_int, default=32, help="Heun steps (2 * steps - 1 network evaluations)")
    generate.add_argument("--batch", type=_positive_int, default=64, help="samples per network call")
    generate.add_argument("--seed", type=int, default=0, help="seed of the noise and the random classes")
    generate.add_argument("--class-label", type=int, default=None, help="fixed class (default: random classes)")
    generate.add_argument("--captions", default=None,
                          help="caption embeddings for a caption-conditioned run, sample i from caption i: .npy "
                               "[N, T, D] or [N, D], .npz / .safetensors with 'embedding' and optional bool 'mask' "
                               "[N, T], or a shard set made with captions (its first --num samples' captions)")
    generate.add_argument("--guide", default=None, help="run directory or checkpoint of the guiding network")
    generate.add_argument("--guidance", type=float, default=1.0,
                          help="guidance weight w (1 = none): with --guide, D_g + w (D - D_g); without it, "
                               "classifier-free guidance D(null) + w (D(c) - D(null)) for a run trained with "
                               "network.condition_dropout > 0 (the velocity is mixed alike for a flow run)")
    generate.add_argument("--png", default=None, help="PNG grid (default: RUN/samples-<weights>.png, e.g. "
                          "samples-ema0.05.png, in the run directory or the checkpoint's folder)")
    generate.add_argument("--npz", default=None, help="samples as float32 'samples' (+ uint8 'images', 'labels'); "
                          "default: RUN/samples-<weights>.npz beside the PNG")
    generate.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                          help="torch device (default: cuda when available, else cpu)")
    generate.add_argument("--cpu-threads", type=nonnegative_int, default=0,
                          help="torch.set_num_threads for this command (0 = unchanged; 1 is often fastest on a busy CPU)")
    generate.set_defaults(func=_generate)

    dataset = subparsers.add_parser("dataset", help="dataset tools").add_subparsers(
        dest="dataset_command", metavar="ACTION", required=True)
    encode = dataset.add_parser("encode", help="images -> EDM2 latents (posterior mean and std) with a local VAE "
                                "(resumes when rerun into the same destination)")
    encode.add_argument("source", help="image dataset directory or zip")
    encode.add_argument("destination", help="latent dataset directory, or a zip when it ends in .zip (built in "
                        "DESTINATION.partial/ and zipped at the end)")
    encode.add_argument("--vae", required=True, help="diffusers AutoencoderKL directory on this machine")
    encode.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda when available, else cpu)")
    encode.add_argument("--batch-size", type=_positive_int, default=16, help="images per VAE call")
    encode.set_defaults(func=_encode)
    info = dataset.add_parser("info", help="size, shape, labels, unreadable files, annotation coverage")
    info.add_argument("source", help="dataset directory or zip (EDM2 format, images or .npy latents)")
    info.add_argument("--annotations", default=None, help="annotation file (safetensors) whose coverage to check")
    info.add_argument("--allow-missing", action="store_true",
                      help="accept an annotation file that does not cover the dataset (missing samples are clean)")
    info.add_argument("--verify", action="store_true", help="decode every file and list the unreadable ones")
    info.set_defaults(func=_info)
    shards = dataset.add_parser("to-shards", help="a dataset folder or zip -> WebDataset tar shards with an offset "
                                "index (data/streaming.py), optionally with caption embeddings and source names")
    shards.add_argument("source", help="dataset directory or zip (EDM2 format, images or .npy latents)")
    shards.add_argument("destination", help="new folder for the shard set (must not exist)")
    shards.add_argument("--source", dest="source_name", default=None,
                        help="source name of every sample (default: the dataset's folder or zip name)")
    shards.add_argument("--source-from-folder", action="store_true",
                        help="each file's source is its top folder (e.g. web/0001.png -> web)")
    shards.add_argument("--captions", default=None, help="caption embeddings in sample id order: .npy [N, T, D] or "
                        "[N, D], or .npz with 'embedding' and optional bool 'mask' [N, T]")
    shards.add_argument("--samples-per-shard", type=_positive_int, default=1024, help="samples per tar shard")
    shards.set_defaults(func=_to_shards)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _ema_choice(text: str) -> float | str:
    """--ema: 'raw', 'tracked' or an EMA std."""
    if text in ("raw", "tracked"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an EMA std (e.g. 0.10), 'tracked' or 'raw', got {text!r}") from None


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string such as a path


def _train(args) -> int:
    from . import distributed
    from .config import preset
    from .loop import train

    check_writable(args.run_dir, "--run-dir", folder=True)
    overrides = {"data": args.data, "annotations": args.annotations}
    if args.allow_missing:  # only when given: --set allow_missing=... and presets stay in charge otherwise
        overrides["allow_missing"] = True
    if args.compile:
        overrides["compile"] = True
    for item in args.set:
        if "=" not in item:
            raise UserError(f"--set expects FIELD=VALUE (e.g. --set total_steps=500), got {item!r}")
        name, value = item.split("=", 1)
        overrides[name.strip()] = _parse_value(value)
    try:
        train(preset(args.preset, **overrides), run_dir=args.run_dir, device=args.device, restart=args.restart)
    finally:
        distributed.shutdown()
    return 0


def _generate(args) -> int:
    from ..sampling import load_model, save_outputs

    for path, option in ((args.png, "--png"), (args.npz, "--npz")):  # before sampling, not after
        if path:
            check_writable(path, option)
    if args.png and Path(args.png).suffix.lower() != ".png":
        raise UserError(f"--png {args.png}: the grid is written as PNG; give a name ending in .png")
    device = torch.device(args.device)
    if args.cpu_threads:
        print(f"setting torch.set_num_threads({args.cpu_threads}) for this command")
        torch.set_num_threads(args.cpu_threads)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, meta = load_model(args.source, ema_std=args.ema, device=device)
        print(f"sampling {args.source}: {meta['weights']}, objective {meta['objective']}")
        guide = None
        if args.guide:
            guide, guide_meta = load_model(args.guide, device=device)
            print(f"guiding with {args.guide}: {guide_meta['weights']}, objective {guide_meta['objective']}")
    for warning in caught:  # one line each, beside the rest of the output
        print(f"warning: {warning.message}")
    is_latent = meta.get("is_latent", False)
    # Into the run, not the current folder: a second run's samples never overwrite the first's.
    run = Path(args.source) if Path(args.source).is_dir() else Path(args.source).parent
    weights = "raw" if args.ema == "raw" else f"ema{meta['config']['ema_stds'][0] if args.ema == 'tracked' else args.ema:g}"
    npz = Path(args.npz) if args.npz else run / f"samples-{weights}.npz"
    png = None if is_latent else Path(args.png) if args.png else run / f"samples-{weights}.png"
    for path, option in ((npz, "--npz"), (png, "--png")):  # the defaults in the run's folder too
        if path is not None:
            check_writable(path, option)
    label_dim = meta["label_dim"]
    if args.class_label is not None and not 0 <= args.class_label < label_dim:
        raise UserError(f"--class-label {args.class_label}: " + (f"this model has classes 0..{label_dim - 1}"
                        if label_dim else "this model is unconditional; leave --class-label out"))
    captions = _captions(args, meta, None if guide is None else guide_meta)
    num = args.num or (64 if captions is None else captions[0].shape[0])
    classifier_free = args.guidance != 1 and not args.guide
    if classifier_free and not meta["config"]["network"].get("condition_dropout", 0):
        raise UserError(f"--guidance {args.guidance} without --guide is classifier-free guidance, which needs a run "
                        "trained with network.condition_dropout > 0 (this run never saw the null condition); give "
                        "--guide (a guiding network) or use --guidance 1")
    shape = (meta["img_channels"], meta["img_resolution"], meta["img_resolution"])
    sample = _sampler(model, meta["objective"], guide, None if guide is None else guide_meta["objective"],
                      num_steps=args.steps, guidance=args.guidance, classifier_free=classifier_free,
                      label_dim=label_dim)
    schedule = "rectified flow, uniform in t from t(sigma 80)" if meta["objective"] == "flow" else "EDM sigmas"
    kind = " (classifier-free)" if classifier_free else " (guide network)" if args.guide else ""
    print(f"generating {num} samples {shape}, {args.steps} Heun steps ({schedule}), seed {args.seed}, "
          f"guidance {args.guidance}{kind}" + (f", captions from {args.captions}" if captions else "") +
          f", on {device}")
    generator = torch.Generator().manual_seed(args.seed)
    samples, labels = [], []
    for start in range(0, num, args.batch):
        n = min(args.batch, num - start)
        noise = torch.randn(n, *shape, generator=generator).to(device)
        batch_labels = None
        if label_dim:
            batch_labels = (torch.full((n,), args.class_label) if args.class_label is not None
                            else torch.randint(0, label_dim, (n,), generator=generator)).to(device)
            labels.append(batch_labels.cpu())
        condition = {} if captions is None else {"caption": captions[0][start:start + n].to(device),
                                                 "caption_mask": captions[1][start:start + n].to(device)}
        samples.append(sample(noise, batch_labels, condition).cpu())
    samples = torch.cat(samples)
    save_outputs(samples, torch.cat(labels) if labels else None, png=png, npz=npz)
    print(f"wrote {npz}" + (f" and {png}" if png else " (latents: decode them with the VAE to get images)"))
    return 0


def _captions(args, meta: dict, guide_meta: dict | None):
    """(embedding, mask) of --captions for a caption-conditioned run, None for a run without a caption branch; a
    missing or unwanted --captions, or a guide with another caption width, is a one-line UserError."""
    from .prompt_captions import load_prompt_captions

    caption_dim = meta.get("caption_dim", 0)
    if guide_meta is not None and guide_meta.get("caption_dim", 0) != caption_dim:
        raise UserError(f"--guide {args.guide} takes captions {guide_meta.get('caption_dim', 0)} wide, the run "
                        f"{caption_dim}: guide and run need the same conditioning")
    if not caption_dim:
        if args.captions:
            raise UserError(f"--captions {args.captions}: this run has no caption branch (trained without caption "
                            "embeddings); leave --captions out")
        return None
    if not args.captions:
        raise UserError(f"this run is caption-conditioned (caption embeddings {caption_dim} wide): give --captions "
                        "(.npy / .npz / .safetensors embeddings with mask, or a shard set with captions)")
    return load_prompt_captions(args.captions, caption_dim=caption_dim, num=args.num)


def _sampler(model, objective: str, guide, guide_objective: str | None, *, num_steps: int, guidance: float,
             classifier_free: bool = False, label_dim: int = 0):
    """sample(noise, labels, condition): the EDM Heun sampler for an EDM run, the rectified-flow Heun sampler
    (flow_sampling) for a flow run; a guide of the other objective is converted (v = (z - D) / t, or D = z - t v):
    guidance is linear, v_w = v_g + w (v - v_g), the same mix as D_w = D_g + w (D - D_g). classifier_free: the
    guide is the run's own network at the null condition (sampling.classifier_free, one forward of 2B)."""
    from ..flow_sampling import denoiser_from_velocity, flow_sample, flow_times, t_from_sigma, velocity_from_denoiser
    from ..sampling import classifier_free as cfg
    from ..sampling import heun_sample

    if classifier_free:
        model, guidance = cfg(model, guidance=guidance, label_dim=label_dim), 1.0  # the mix is in the model now
    if objective == "flow":
        guide_v = (None if guide is None else guide if guide_objective == "flow" else velocity_from_denoiser(guide))

        def velocity(z, t, labels, **condition):
            v = model(z, t, labels, **condition)
            return v if guide_v is None or guidance == 1 else guide_v(z, t, labels, **condition).lerp(v, guidance)

        # From t(sigma = 80), EDM's sigma_max, as the EDM sampler: beyond it no level was trained (ln sigma ~ N(p_mean,
        # p_std^2)), and z = t noise there differs from z_t by 0.012 x0
        times = flow_times(num_steps, t_max=t_from_sigma(80.0))
        return lambda noise, labels, condition: flow_sample(velocity, noise, times=times, method="heun",
                                                            class_labels=labels, condition=condition)
    guide_d = None if guide is None else guide if guide_objective != "flow" else denoiser_from_velocity(guide)
    return lambda noise, labels, condition: heun_sample(model, noise, class_labels=labels, num_steps=num_steps,
                                                        guide=guide_d, guidance=guidance, condition=condition)


def _encode(args) -> int:
    from ..data.encode import MANIFEST, TMP, encode_dataset

    destination = check_writable(args.destination, "destination", folder=not args.destination.endswith(".zip"))
    work = destination.with_name(destination.name + ".partial") if destination.suffix.lower() == ".zip" else destination
    was_empty = not (work.is_dir() and any(work.iterdir()))
    try:
        with user_input("dataset encode", ImportError):  # diffusers not installed
            encode_dataset(args.source, destination, vae_dir=args.vae, device=args.device, batch_size=args.batch_size)
    except BaseException:
        # Stopped before the first latent (a bad VAE, a bad first image): the manifest alone is no resumable work.
        if was_empty and work.is_dir() and {p.name for p in work.iterdir()} <= {MANIFEST, MANIFEST + TMP}:
            for name in (MANIFEST, MANIFEST + TMP):
                (work / name).unlink(missing_ok=True)
        raise
    return 0


def _to_shards(args) -> int:
    from ..data.dataset import FileDataset
    from ..data.streaming import load_captions, write_shards

    if args.source_name and args.source_from_folder:
        raise UserError("give --source NAME or --source-from-folder, not both")
    destination = check_writable(args.destination, "destination", folder=True)
    data = FileDataset(args.source, on_error="raise", verify=False)
    captions = load_captions(args.captions, len(data)) if args.captions else None
    index = write_shards(data, destination, source_name=args.source_name, sources_from_folders=args.source_from_folder,
                         captions=captions, samples_per_shard=args.samples_per_shard, report=print)
    print(f"wrote {destination}: {index['num_samples']} {index['kind']} in {len(index['shards'])} shards, sources "
          f"{', '.join(index['sources'])}" + (f", captions {index['caption_shape']}" if captions is not None else ""))
    return 0


def _info(args) -> int:
    from ..data import open_dataset

    dataset = open_dataset(args.source, on_error="skip" if args.verify else "raise", verify=args.verify)
    shape = tuple(dataset.shape)
    print(f"{args.source}: {len(dataset)} samples, shape {shape}, "
          f"{'latents' if dataset.is_latent else 'images'}, {dataset.label_dim or 'no'} classes")
    if args.verify:
        print(f"unreadable: {int(dataset.excluded.sum())}" + "".join(f"\n  {k}" for k, bad in zip(dataset.keys, dataset.excluded) if bad))
    table = dataset.annotations(args.annotations, allow_missing=args.allow_missing, report=print)
    for sigma in (0.002, 0.02, 0.2, 2.0, 20.0):
        print(f"  usable at sigma {sigma:g}: {float(table.usable(sigma).double().mean()):.3f}")
    sources = (table.sources, table.source) if table.source is not None else \
        (getattr(dataset, "sources", None), getattr(dataset, "source", None))  # the file's, else a shard set's
    if sources[0]:
        from ..usable_sources import usable_table

        print(usable_table(table, names=sources[0], index=sources[1]))
    return 0
