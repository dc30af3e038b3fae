"""One room per task: each module (or sub-package) holds everything about its task (classes,
labels on disk, palette, default model, post-processing parameters, training defaults, readers
and targets, validation headline, evaluation, classical methods) and registers one
:class:`~hemaseg.engine.task.Task` object. Adding a task is adding a module here and its line below.
"""
from __future__ import annotations

import json
from pathlib import Path

from hemaseg.engine.task import Task
from hemaseg.engine.train import TrainConfig, nothing_to_resume
from hemaseg.engine.train import task_config as _task_config
from hemaseg.tasks import cells, nuclei, smear10, wbc, wbc_type  # noqa: F401  (each registers its task)
from hemaseg.tasks.registry import TASKS, get_task, list_tasks, register_task

__all__ = ["TASKS", "Task", "fit", "get_task", "list_tasks", "register_task", "task_config"]


def task_config(name: str, **overrides) -> TrainConfig:
    """The training configuration of task ``name``: its defaults, then ``overrides`` (None ignored)."""
    return _task_config(get_task(name), **overrides)


def fit(cfg: TrainConfig | None, run: str | Path, resume: bool = False, progress: bool = True,
        max_epochs_this_call: int | None = None) -> dict:
    """Train ``cfg`` in folder ``run``, or resume the run there (``cfg`` None, ``resume=True``), with
    the task its configuration (or the run's ``state.json``) names."""
    if cfg is None:
        state = Path(run) / "state.json"
        if not state.exists():
            raise nothing_to_resume(Path(run))
        name = json.loads(state.read_text()).get("config", {}).get("task", "wbc")
    else:
        name = cfg.task
    return get_task(name).fit(cfg, run, resume, progress, max_epochs_this_call)
