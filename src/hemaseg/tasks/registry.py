"""The task registry: the only way the command line, pipelines and benchmarks learn about a task."""
from __future__ import annotations

from hemaseg.engine.task import Task

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add a task object to the registry under ``task.name`` (replacing one of the same name)."""
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """Look a task up by name; KeyError lists the known ones."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def list_tasks() -> list[str]:
    """Names of the registered tasks."""
    return sorted(TASKS)
