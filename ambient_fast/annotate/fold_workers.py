"""Cross-fitting's folds side by side: each fold trained in a worker process of its own with the thread count the
caller pinned, so that k folds on a CPU of several cores take about k / workers fold-times instead of k.

Why it changes nothing but the time: a fold's classifier depends only on its data, its seed (its own generator,
never the global RNG) and the CPU thread count (the float summation order); a worker runs it with the caller's
thread count, so the set is bit-identical to training the folds one after another (tests/test_annotate_crossfit.py).

A worker is a fresh interpreter (`python -m ambient_fast.annotate.fold_workers TASK RESULT`), not a multiprocessing
child: a forked child of a process whose OpenMP pool already ran can hang, and multiprocessing's spawn re-runs the
caller's script, which breaks every user script without an `if __name__ == "__main__":` guard. The task and its
result travel as torch.save files in a private temporary folder; progress comes back as lines on the worker's stdout.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

_PROGRESS = "ambient_fast.fold_workers.progress "  # prefix of a worker's progress line on its stdout


def auto_workers(folds: int, *, thread_budget: int, fold_threads: int, device) -> int:
    """How many folds to train at once: 1 on an accelerator (one device; its kernels are parallel already) or when
    a fold may use every thread (fold_threads 0); on a CPU otherwise as many as `thread_budget` threads hold at
    `fold_threads` each (`make demo`: 2 cores, 1 thread per classifier -> 2 workers; OMP_NUM_THREADS=1 -> 1)."""
    if torch.device(device).type != "cpu" or fold_threads < 1:
        return 1
    return max(1, min(folds, thread_budget // fold_threads))


class Worker:
    """One task in its own interpreter; a thread relays its progress lines (other stdout lines pass through).
    Used by map_in_workers and by experiments/arm_lanes.py (an experiment's arms side by side)."""

    def __init__(self, key, function: Callable, arguments: dict, folder: Path, progress: Callable | None):
        self.key, self.task, self.result = key, folder / f"task-{key}.pt", folder / f"result-{key}.pt"
        torch.save({"module": function.__module__, "function": function.__qualname__, "arguments": arguments,
                    "threads": torch.get_num_threads()}, self.task)
        package_root = str(Path(__file__).resolve().parents[2])  # importable whether installed or not
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen([sys.executable, "-m", __name__, str(self.task), str(self.result)],
                                        stdout=subprocess.PIPE, text=True, env=env)
        self.relay = threading.Thread(target=self._relay, args=(progress,), daemon=True)
        self.relay.start()

    def _relay(self, progress) -> None:
        for line in self.process.stdout:
            if line.startswith(_PROGRESS):
                if progress is not None:
                    progress(self.key, *json.loads(line[len(_PROGRESS):]))
            else:
                sys.stdout.write(line)

    def outcome(self):
        """The task's return value; its exception raised here; a worker that died says so."""
        self.relay.join()
        if not self.result.is_file():
            raise RuntimeError(f"the worker of task {self.key!r} exited with code {self.process.returncode} "
                               "without a result (killed? out of memory?)")
        outcome = torch.load(self.result, weights_only=False)  # written by our own worker, in our own folder
        self.task.unlink(missing_ok=True)
        self.result.unlink(missing_ok=True)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]


def map_in_workers(function: Callable, keys: list, arguments_of: Callable[[object], dict], *, workers: int,
                   progress: Callable | None = None, on_result: Callable | None = None) -> dict:
    """{key: function(**arguments_of(key), progress=...)} for every key, `workers` at a time, each in a worker
    process at this process's torch thread count. function: a module-level function (imported by the worker);
    arguments_of(key) is called when the key's task starts, so only the running tasks' inputs are held;
    progress(key, *values) receives what a task reports (JSON values), in this process; on_result(key, result) is
    called here as each task finishes, so finished work is kept before the others end. A task's exception is raised
    here once the running tasks have ended; an interrupt stops them."""
    results, waiting, running = {}, list(keys), []
    with tempfile.TemporaryDirectory(prefix="ambient_fast-folds-") as folder:
        try:
            failed = None
            while (waiting and failed is None) or running:
                while waiting and failed is None and len(running) < workers:
                    key = waiting.pop(0)
                    running.append(Worker(key, function, arguments_of(key), Path(folder), progress))
                finished = [worker for worker in running if worker.process.poll() is not None]
                if not finished:
                    time.sleep(0.05)
                    continue
                for worker in finished:
                    running.remove(worker)
                    try:
                        results[worker.key] = worker.outcome()
                    except Exception as error:  # the others run to their end and are kept
                        failed = failed or error
                        continue
                    if on_result is not None:
                        on_result(worker.key, results[worker.key])
            if failed is not None:
                raise failed
        finally:
            for worker in running:  # an interrupt or an error here: no orphans
                worker.process.kill()
                worker.process.wait()
    return results


def _main(task_path: str, result_path: str) -> int:
    task = torch.load(task_path, weights_only=False)  # written by map_in_workers, in its own folder
    torch.set_num_threads(task["threads"])
    function = getattr(importlib.import_module(task["module"]), task["function"])

    def progress(*values) -> None:
        print(_PROGRESS + json.dumps(values), flush=True)

    try:
        outcome = {"value": function(**task["arguments"], progress=progress)}
    except Exception as error:
        outcome = {"error": error}
    temporary = f"{result_path}.{os.getpid()}.tmp"
    torch.save(outcome, temporary)
    os.replace(temporary, result_path)
    return 0 if "value" in outcome else 1


__all__ = ["Worker", "auto_workers", "map_in_workers"]

if __name__ == "__main__":
    raise SystemExit(_main(*sys.argv[1:]))
