"""What the `ambient-fast annotate` commands share: argument types and options, device and thread set-up, the
--base annotation file and the output checks (used by cli.py and classifier_cli.py)."""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch

from ..annotations import AnnotationMismatchError, Annotations
from ..errors import UserError, check_writable, device_arg, nonnegative_int, user_input
from .images import eprint

def _progress(total: int, label: str):
    """tqdm when installed, else a print every 10%."""
    try:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=label)
        return lambda step, loss, accuracy: (bar.update(step - bar.n), bar.set_postfix(loss=f"{loss:.3f}",
                                                                                        acc=f"{accuracy:.3f}"))
    except ImportError:
        return lambda step, loss, accuracy: eprint(f"{label}: step {step}/{total} loss {loss:.4f} acc {accuracy:.3f}")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=device_arg, default="cpu",
                        help="torch device (default cpu); 'cuda' without an index means cuda:LOCAL_RANK under "
                             "torchrun (one GPU per rank)")
    parser.add_argument("--threads", type=nonnegative_int, default=0,
                        help="torch intra-op threads (0: torch's default)")


def _setup(args) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)


def resolve_device(name: str) -> torch.device:
    """torch.device(name), with a bare 'cuda' mapped to this rank's GPU under torchrun (LOCAL_RANK), so that
    sharded annotation does not put every rank on cuda:0."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def _join_process_group(shard) -> bool:
    """--mode single under torchrun: join a gloo group (the ranks exchange one small float64 tensor per probed level,
    on the CPU whatever --device is). True when this call created it (the caller destroys it)."""
    if shard.world_size == 1 or torch.distributed.is_initialized():
        return False
    if "MASTER_ADDR" not in os.environ:
        raise UserError(f"--mode single with WORLD_SIZE={shard.world_size} needs torchrun (the ranks pool "
                         "their per-level means through a process group); RANK / WORLD_SIZE alone shard only "
                         "--mode dense and fast")
    torch.distributed.init_process_group("gloo")
    return True


def _aligned_base(base, data, *, allow_missing: bool = False) -> Annotations | None:
    """--base read and aligned to `data` before any work (None without one). A base that does not cover `data` is
    refused unless allow_missing (its missing samples are then clean)."""
    if not base:
        return None
    with user_input(f"--base {base}", AnnotationMismatchError):
        return Annotations.load(base).aligned_to(data.sample_ids, data.keys, allow_missing=allow_missing, report=eprint)


def _with_base(previous: Annotations | None, data, *, sigma_min=None, sigma_max=None,
               provenance: dict) -> Annotations:
    """New annotations for `data`: the column computed now, the other one from the --base file (_aligned_base) when
    given. Without a base an image annotated by sigma-max alone is out-of-distribution data: sigma_min = inf, usable
    only below sigma_max (Section 3.2); one annotated by sigma-min alone has no crops annotation (sigma_max = 0)."""
    if previous is not None:
        sigma_min = previous.sigma_min if sigma_min is None else sigma_min
        sigma_max = previous.sigma_max if sigma_max is None else sigma_max
        provenance = {**previous.provenance, **provenance}
    count = len(data.keys)
    sigma_min = torch.full((count,), math.inf, dtype=torch.float64) if sigma_min is None else sigma_min
    sigma_max = torch.zeros(count, dtype=torch.float64) if sigma_max is None else sigma_max
    return Annotations(data.sample_ids, sigma_min, sigma_max, keys=data.keys, provenance=provenance)


def _fresh_out(args, *, base: str | None = None) -> Path:
    """--out checked before any work, and never overwritten unless --force: an earlier annotation or classifier is
    work that must not be lost to a repeated command. Writing back over the --base file it extends is allowed."""
    out = check_writable(args.out, "--out")
    same_as_base = base is not None and out.exists() and Path(base).exists() and out.resolve() == Path(base).resolve()
    if out.exists() and not args.force and not same_as_base:
        raise UserError(f"--out {out} exists; pass --force to overwrite it or choose another path")
    return out
