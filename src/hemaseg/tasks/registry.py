"""The task registry: the only way the command line, pipelines and benchmarks learn about a task."""
from __future__ import annotations

from hemaseg.engine.task import Task

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add a task object to the registry under ``task.name`` (replacing one of the same name)."""
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task ``name``: its classes, post-processing parameters and hooks.

    Every task module of :mod:`hemaseg.tasks` registers one :class:`~hemaseg.engine.task.Task`
    object when ``hemaseg`` is imported; this returns that object itself (shared, not a copy).

    Parameters
    ----------
    name : str
        A task name, one of :func:`list_tasks`: ``cells``, ``nuclei``, ``smear10``, ``wbc`` or
        ``wbc-type`` (a model card names its task under ``card["task"]``).

    Returns
    -------
    Task
        The task: ``name``, ``classes`` (the network's classes, index = class index),
        ``default_model`` (its bundled model), ``description``, ``Params`` (the dataclass of its
        post-processing parameters, None for none), ``can_segment`` (False for ``wbc-type``,
        which types single-cell crops), and hooks such as :meth:`~hemaseg.engine.task.Task.params`
        and :meth:`~hemaseg.engine.task.Task.predict`.

    Raises
    ------
    KeyError
        ``name`` is not a registered task (the message lists the known ones).

    Examples
    --------
    >>> import hemaseg
    >>> task = hemaseg.get_task("wbc")
    >>> task.classes, task.default_model, task.can_segment
    (('background', 'cytoplasm', 'nucleus'), 'wbc', True)
    >>> task.params(red_ring=0.2).red_ring  # the default post-processing, one value overridden
    0.2
    >>> hemaseg.get_task("rbc")
    Traceback (most recent call last):
    ...
    KeyError: "unknown task 'rbc'; known: cells, nuclei, smear10, wbc, wbc-type"
    """
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def list_tasks() -> list[str]:
    """Names of the registered tasks, sorted.

    Returns
    -------
    list of str
        The names :func:`get_task` takes: the tasks registered when ``hemaseg`` is imported, and
        any added since with :func:`register_task`.

    Examples
    --------
    >>> import hemaseg
    >>> hemaseg.list_tasks()
    ['cells', 'nuclei', 'smear10', 'wbc', 'wbc-type']
    >>> [name for name in hemaseg.list_tasks() if hemaseg.get_task(name).can_segment]
    ['cells', 'nuclei', 'smear10', 'wbc']
    """
    return sorted(TASKS)
