"""Input checks shared by the ops: clear errors that name the argument, never silent inf/NaN, and no device sync.

Shapes, dtypes and devices are metadata: always checked, in Python, for free. The values of the noise levels
(sigma_t > 0, 0 <= sigma_tn < sigma_t, finite; sample ids >= 0) are checked where the data is:
  * CPU tensors: synchronously inside the op (the C++ kernels read the levels anyway; the Triton and PyTorch
    backends check on the host before launching), raising ValueError with the index and value;
  * CUDA tensors: inside the kernels, asynchronously. A bad level makes that sample's outputs NaN and sets a bit in
    a per-device error word; `ambient_fast.check_device_errors()` reads the word (one 4-byte sync, when you choose,
    e.g. where you log the loss) and raises ValueError naming the op and the condition.
validate=True (any device) checks on the host before the launch and names the index and value: a device sync on
CUDA, and a graph break under torch.compile. validate=False or AMBIENT_FAST_SKIP_CHECKS=1 skips the device
checks; the CPU checks cost microseconds and always run.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SKIP_CHECKS_ENV = "AMBIENT_FAST_SKIP_CHECKS"

# Device error word: one bit per (op, condition). Kernels OR codes << OP_SHIFT[op] into it.
SIGMA_T_BAD, SIGMA_TN_BAD, SIGMA_TN_NOT_BELOW, SAMPLE_ID_NEGATIVE = 1, 2, 4, 8
OP_SHIFT = {"ambient_loss": 0, "add_noise": 4, "ambient_noising": 8, "flow_loss": 12}  # flow_loss: bit 1 is t in (0, 1)
CONDITIONS = {
    SIGMA_T_BAD: "sigma_t must be > 0 and finite",
    SIGMA_TN_BAD: "sigma_tn must be >= 0 and finite",
    SIGMA_TN_NOT_BELOW: "sigma_tn must be < sigma_t (select levels with ambient_fast.select_sigma_tn)",
    SAMPLE_ID_NEGATIVE: "sample_ids must be >= 0",
}
_STATUS: dict[torch.device, torch.Tensor] = {}


@torch.compiler.assume_constant_result
def _checks_skipped_by_environment() -> bool:
    return os.environ.get(SKIP_CHECKS_ENV, "0") == "1"


def synchronous_checks(validate: bool | None) -> bool:
    """validate=True: check the levels on the host before launching (names index and value; syncs on CUDA)."""
    return validate is True


def device_checks(validate: bool | None) -> bool:
    """Whether the kernels check the levels (the default; validate=False or the environment turns it off)."""
    if validate is None:
        return not _checks_skipped_by_environment()
    return validate


def check_on_host_if_cpu(check: bool, sigma_t: torch.Tensor, sigma_tn: torch.Tensor | None,
                         sample_ids: torch.Tensor | None = None) -> None:
    """The Triton and PyTorch operators' checks: on CPU tensors the values are host memory, so raise now with index
    and value, as the C++ kernels do; on a GPU the kernels flag bad values on the device instead (no sync)."""
    if check and sigma_t.device.type == "cpu":
        check_sigmas(sigma_t, sigma_tn)
        if sample_ids is not None:
            check_sample_ids(sample_ids)


def per_sample(name: str, value, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A scalar, [B] or [B, 1, ..., 1] noise level (or log-variance) -> contiguous [B] tensor of `dtype`."""
    if not isinstance(value, torch.Tensor):
        # A fill on the device: no host-to-device copy (which would synchronise a CUDA stream).
        return torch.full((batch,), float(value), dtype=dtype, device=device)
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but the images are on {device}")
    if value.numel() == 1 and value.dim() <= 1:
        value = value.reshape(()).expand(batch)
    elif value.dim() >= 1 and value.shape[0] == batch and value.numel() == batch:
        value = value.reshape(batch)
    else:
        raise ValueError(f"{name} must be a scalar or have one value per sample (shape [{batch}]), got {tuple(value.shape)}")
    return value.to(dtype).contiguous()


def check_same_images(reference_name: str, reference: torch.Tensor, **others: torch.Tensor) -> None:
    if not isinstance(reference, torch.Tensor):
        raise TypeError(f"{reference_name} must be a tensor, got {type(reference).__name__}")
    if reference.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{reference_name} must be a floating tensor (fp16/bf16/fp32/fp64), got {reference.dtype}")
    if reference.dim() < 1 or reference.shape[0] == 0:
        raise ValueError(f"{reference_name} must have a non-empty batch dimension, got shape {tuple(reference.shape)}")
    for name, tensor in others.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(tensor).__name__}")
        if tensor.shape != reference.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)} but {reference_name} has {tuple(reference.shape)}")
        if tensor.device != reference.device:
            raise ValueError(f"{name} is on {tensor.device} but {reference_name} is on {reference.device}")
        if tensor.dtype != reference.dtype:
            raise TypeError(f"{name} is {tensor.dtype} but {reference_name} is {reference.dtype}; cast them to one dtype")


def check_sigmas(sigma_t: torch.Tensor, sigma_tn: torch.Tensor | None) -> None:
    """sigma_t > 0 and finite; 0 <= sigma_tn < sigma_t (the ambient weight is singular at sigma_tn = sigma_t).

    Reads the values on the host: free for CPU tensors, a device sync for CUDA ones (validate=True only).
    The C++ kernels raise the same messages (csrc/levels.h).
    """
    values_t = sigma_t.detach().cpu().numpy()
    values_tn = None if sigma_tn is None else sigma_tn.detach().cpu().numpy()
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(values_t) & (values_t > 0)
        if values_tn is not None:
            valid &= np.isfinite(values_tn) & (values_tn >= 0) & (values_tn < values_t)
    if valid.all():
        return
    _raise_first(values_t, ~np.isfinite(values_t), "sigma_t must be finite")
    _raise_first(values_t, ~(values_t > 0), "sigma_t must be > 0")
    if values_tn is None:
        return
    _raise_first(values_tn, ~np.isfinite(values_tn), "sigma_tn must be finite")
    _raise_first(values_tn, ~(values_tn >= 0), "sigma_tn must be >= 0")
    bad = int(np.flatnonzero(~(values_tn < values_t))[0])
    raise ValueError(
        f"sigma_tn must be < sigma_t for every sample; got sigma_tn={values_tn[bad]} >= sigma_t={values_t[bad]} at "
        f"index {bad} (select levels with ambient_fast.select_sigma_tn)"
    )


def _raise_first(values: np.ndarray, bad: np.ndarray, message: str) -> None:
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{message}; got {values[index]} at index {index}")


def check_sample_ids(sample_ids: torch.Tensor) -> None:
    """Stable ids are >= 0 (host read: CPU tensors, or validate=True)."""
    ids = sample_ids.detach().cpu().numpy()
    if ids.size and ids.min() < 0:
        index = int(np.flatnonzero(ids < 0)[0])
        raise ValueError(f"sample_ids must be >= 0 (stable dataset indices or hashes); got {ids[index]} at index {index}")


def status_word(device: torch.device) -> torch.Tensor:
    """The int32 error word of `device` that the kernels OR their codes into (allocated on first use).

    Called by op implementations at run time only, never while torch.compile traces, so the compiled graph does not
    see the write: CUDA graphs capture the kernels with this fixed address, and replays update the same word.
    """
    word = _STATUS.get(device)
    if word is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            warnings.warn(
                f"ambient_fast: first op call on {device} inside a CUDA graph capture; its error word is allocated by "
                "the capture and reset on every replay. Call the op once before capturing.",
                stacklevel=3,
            )
        word = torch.zeros(1, dtype=torch.int32, device=device)
        _STATUS[device] = word
    return word


def level_codes(sigma_t: torch.Tensor, sigma_tn: torch.Tensor | None) -> torch.Tensor:
    """Per-sample error codes (0 = valid) of the levels, with PyTorch ops (the eager backend's device check)."""
    codes = torch.where(torch.isfinite(sigma_t) & (sigma_t > 0), 0, SIGMA_T_BAD)
    if sigma_tn is not None:
        codes = codes | torch.where(torch.isfinite(sigma_tn) & (sigma_tn >= 0), 0, SIGMA_TN_BAD)
        codes = codes | torch.where(sigma_tn < sigma_t, 0, SIGMA_TN_NOT_BELOW)
    return codes.to(torch.int32)


def flag_on_device(op: str, codes: torch.Tensor) -> None:
    """OR the union of per-sample codes into the device's error word, without reading them on the host."""
    word = status_word(codes.device)
    for bit in CONDITIONS:
        word.bitwise_or_(((codes & bit) != 0).any().to(torch.int32) * (bit << OP_SHIFT[op]))


def check_device_errors(device: torch.device | str | None = None) -> None:
    """Raise ValueError if a kernel flagged a bad input on `device` (every device used so far when None) since the
    last call, and clear the flags. Reads 4 bytes per device: a sync, so call it where you synchronise anyway."""
    devices = list(_STATUS) if device is None else [_with_index(torch.device(device))]
    problems = []
    for where in devices:
        word = _STATUS.get(where)
        if word is None:
            continue
        value = int(word.item())
        word.zero_()
        problems += [
            f"{op} on {where}: {message}" for op, shift in OP_SHIFT.items() for bit, message in CONDITIONS.items()
            if value & (bit << shift)
        ]
    if problems:
        raise ValueError(
            "bad inputs found on the device (those samples' outputs are NaN; pass validate=True to get the index "
            "and value): " + "; ".join(problems)
        )


def _with_index(device: torch.device) -> torch.device:
    """'cuda' -> 'cuda:<current>': tensors always carry the index, and the error words are keyed by it."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def as_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(tensor, row stride) such that sample b's elements are contiguous from tensor[b]; copies only when needed."""
    if tensor[0].is_contiguous():
        return tensor, tensor.stride(0)
    tensor = tensor.contiguous()
    return tensor, tensor[0].numel()
