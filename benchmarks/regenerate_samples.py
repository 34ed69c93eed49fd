"""Regenerate the samples of a finished experiment folder made before the runner saved them, so that
`ambient-fast experiment-report` can score it: every (arm, seed) of RUN_DIR/results.json is sampled again from its
trained run with the experiment's sampler (deterministic: the same noise seed as the runner's), written to
OUT_DIR/samples_<arm>-seed<k>.safetensors beside a copy of results.json. RUN_DIR is only read.

    flock /tmp/ambient_heavy.lock .venv/bin/python benchmarks/regenerate_samples.py runs/demo runs/demo-rescored
    flock /tmp/ambient_heavy.lock .venv/bin/ambient-fast experiment-report runs/demo-rescored
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from safetensors.torch import save_file

from ambient_fast.experiments.configs import experiment
from ambient_fast.experiments.controlled import generate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    summary = json.loads((args.run_dir / "results.json").read_text())
    item = experiment(summary["experiment"])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(json.dumps(summary, indent=1))
    for entry in summary["arms"]:
        tick = time.perf_counter()
        samples = generate(args.run_dir / f"{entry['arm']}-seed{entry['seed']}", count=item.generated_count,
                           num_steps=item.sampler_steps, seed=entry["seed"], ema_std=item.ema_std, device="cpu")
        save_file({"samples": samples.contiguous()},
                  str(args.out_dir / f"samples_{entry['arm']}-seed{entry['seed']}.safetensors"))
        print(f"{entry['arm']} seed {entry['seed']}: {samples.shape[0]} samples in {time.perf_counter() - tick:.1f} s")


if __name__ == "__main__":
    main()
