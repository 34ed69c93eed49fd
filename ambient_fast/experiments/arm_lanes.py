"""An experiment's arms side by side on a CPU: each arm trained and sampled in a worker process of its own at the
experiment's pinned thread count (Experiment.arm_threads), as many at once as torch's thread count holds, and the
arms that need no classifier start while the noise classifiers train (`make demo` on 2 cores: only_clean and
all_data in one lane while the five folds train one at a time in the other, then the classifier arm).

Why it changes nothing but the time: an arm's run depends on its images, annotations, seed and thread count (the
float summation order), never on the process that trains it; with the count pinned, its samples are bit-identical
in a worker or in this process, on any machine (tests/test_experiments_lanes.py). One lane (one core, a GPU, or
arm_threads = 0) runs every arm here, one after another.

Workers are fresh interpreters (annotate/fold_workers.Worker: why not multiprocessing is written there); an
interrupt or an error kills the running ones, so that no orphan keeps writing into a run folder.
"""
from __future__ import annotations

import queue
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .arm_runs import train_and_sample


def lane_count(experiment, *, device) -> int:
    """How many arms train at once: torch's thread count over arm_threads on a CPU (`make demo`, 2 cores: 2;
    OMP_NUM_THREADS=1: 1), 1 on an accelerator or when an arm may use every thread (arm_threads = 0)."""
    from ..annotate.fold_workers import auto_workers

    return auto_workers(len(experiment.arms), thread_budget=torch.get_num_threads(),
                        fold_threads=experiment.arm_threads, device=device)


@dataclass
class _Task:
    name: str
    arguments: dict
    after: str | None = None  # the earlier arm with the same run inputs: this one waits for it and copies its run
    done: threading.Event = field(default_factory=threading.Event)
    outcome: dict | None = None
    error: BaseException | None = None


class ArmLanes:
    """Arms in `lanes` worker processes at once (1: in this process, in submission order). Open as many lanes as
    may run now (open), submit arms (submit), collect each arm's outcome (result); use as a context manager, whose
    exit stops what still runs."""

    def __init__(self, lanes: int, *, log=print):
        self.lanes, self.log = lanes, log
        self.tasks: dict[str, _Task] = {}
        self._queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._running: set = set()
        self._lock = threading.Lock()
        self._stopping = False
        self._folder = None
        self._first: dict[str, str] = {}  # run inputs (arm_runs.run_inputs) -> the arm that trains them first

    def __enter__(self) -> ArmLanes:
        if self.lanes > 1:
            self._folder = tempfile.TemporaryDirectory(prefix="ambient_fast-arms-")
        return self

    def __exit__(self, *exc) -> None:
        self._stopping = True
        with self._lock:
            for worker in self._running:  # an interrupt or an error: no orphans
                worker.process.kill()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        if self._folder is not None:
            self._folder.cleanup()

    @property
    def open_lanes(self) -> int:
        return len(self._threads) if self.lanes > 1 else 1

    def open(self, count: int) -> None:
        """Let up to `count` arms run at once from now on (at most `lanes`)."""
        while self.lanes > 1 and len(self._threads) < min(count, self.lanes):
            thread = threading.Thread(target=self._lane, daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, name: str, arguments: dict, *, inputs: str) -> None:
        """Train and sample arm `name` with train_and_sample(**arguments); `inputs` (its images and annotations
        digest): an arm whose inputs an earlier arm trains copies that run instead (arm_runs.train_arm's copy_of)."""
        twin = self._first.setdefault(inputs, name)
        task = _Task(name, arguments, after=None if twin == name else twin)
        self.tasks[name] = task
        if self.lanes > 1:
            self._queue.put(task)
        else:
            self._run(task)

    def result(self, name: str) -> dict:
        """The arm's {"samples", "seconds"}, once it has finished; its error raised here."""
        task = self.tasks[name]
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outcome

    def _run(self, task: _Task) -> None:
        arguments = {**task.arguments, "copy_of": self._twin_run(task)}
        try:
            if self.lanes > 1:
                self._in_worker(task, arguments)
            else:
                task.outcome = train_and_sample(**arguments, progress=self.log)
        except BaseException as error:  # noqa: BLE001 -- handed to whoever waits for this arm
            task.error = error
        finally:
            task.done.set()

    def _twin_run(self, task: _Task) -> str | None:
        """The finished run this arm copies, once its twin is done; None when it has none (or the twin failed)."""
        if task.after is None:
            return None
        twin = self.tasks[task.after]
        twin.done.wait()
        return None if twin.error is not None else twin.arguments["run_dir"]

    def _in_worker(self, task: _Task, arguments: dict) -> None:
        from ..annotate.fold_workers import Worker

        if self._stopping:
            raise RuntimeError(f"arm {task.name} was not started: the experiment stopped")
        worker = Worker(task.name, train_and_sample, arguments, Path(self._folder.name),
                        progress=lambda _key, line: self.log(line))
        with self._lock:
            self._running.add(worker)
        try:
            task.outcome = worker.outcome()
        finally:
            with self._lock:
                self._running.discard(worker)

    def _lane(self) -> None:
        while (task := self._queue.get()) is not None:
            self._run(task)


__all__ = ["ArmLanes", "lane_count"]
