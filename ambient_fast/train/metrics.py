"""Progress lines on stdout, one JSON row per logged step in metrics.jsonl, TensorBoard when asked for.

Steps are 0-based indices everywhere: the console's "step N", metrics.jsonl's "step" and the checkpoint
training-0000000N.safetensors (the state after step N) name the same step, the (N + 1)-th of the run.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .source_log import console_line


class MetricsLog:
    def __init__(self, run_dir: Path, *, resume_step: int, total_steps: int, tensorboard: bool = False, enabled: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.total_steps, self.enabled = total_steps, enabled
        self.first_step, self.started = resume_step, time.perf_counter()  # rate and ETA over this invocation
        self.writer = None
        if not enabled:
            return
        self._truncate_after(resume_step)  # rows a killed run wrote past its last checkpoint are redone
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ImportError("tensorboard=True needs the tensorboard package (pip install tensorboard)") from error
            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def _truncate_after(self, resume_step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a row torn by a kill mid-write
                continue
            if row.get("step", -1) < resume_step:
                kept.append(line)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text("".join(line + "\n" for line in kept))
        temporary.replace(self.path)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for name, value in row.items():
                if isinstance(value, (int, float)) and name != "step":
                    self.writer.add_scalar(name, value, row["step"])

    def progress(self, row: dict) -> None:
        if not self.enabled:
            return
        done = row["step"] + 1
        width = 24
        filled = int(width * done / max(self.total_steps, 1))
        elapsed = time.perf_counter() - self.started
        rate = (done - self.first_step) / max(elapsed, 1e-9)
        line = (f"[{'#' * filled}{'.' * (width - filled)}] step {row['step']} ({done}/{self.total_steps} done)  "
                f"loss {row['loss']:.4f}  lr {row['lr']:.2e}  {1000 * row['sec_per_step']:.0f} ms/step (data "
                f"{1000 * row['data_sec']:.0f} ms)  skipped {row['skipped_steps']}  elapsed {_clock(elapsed)}, "
                f"{rate:.2f} steps/s, ETA {_clock((self.total_steps - done) / rate)}")
        print(line, file=sys.stdout, flush=True)
        per_source = console_line(row)
        if per_source:
            print(per_source, file=sys.stdout, flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
