"""The one progress helper: a tqdm bar on stderr, off when stderr is not a terminal or HEMASEG_QUIET is set."""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Iterable, TypeVar

T = TypeVar("T")


def track(items: Iterable[T], desc: str, total: int | None = None, **kw) -> Iterable[T]:
    """Iterate ``items`` with a progress bar on stderr."""
    from tqdm import tqdm

    disable = bool(os.environ.get("HEMASEG_QUIET")) or not sys.stderr.isatty()
    return tqdm(items, desc=desc, total=total, file=sys.stderr, disable=disable, dynamic_ncols=True, **kw)


_SAID: set[tuple] = set()  # the keys warn_once has logged


def warn_once(log: logging.Logger, key: tuple, msg: str, *args) -> None:
    """Log the warning ``msg % args`` on ``log`` the first time this process meets ``key``: a file or a data root
    read more than once a run (a batch, training then validation) is warned of once."""
    if key not in _SAID:
        _SAID.add(key)
        log.warning(msg, *args)


class InputNamed(logging.Filter):
    """Prefixes a warning logged while one input is worked on with that input's path (a segment audit:
    "the hsv method needs a colour photo ..." came twice in a batch, naming neither photo)."""

    path: object = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self.path is not None and record.levelno >= logging.WARNING and not getattr(record, "input_named", False):
            # once, though each handler filters the same record (pytest's add theirs: the path came three times),
            # and not when the message names it already (an image reader's warning)
            message = record.getMessage()
            named = message.startswith(f"{self.path}: ")
            record.msg, record.args, record.input_named = message if named else f"{self.path}: {message}", (), True
        return True

    @contextmanager
    def working_on(self, path):
        """What is logged inside names ``path`` (a batch loop's input), and nothing after."""
        self.path = path
        try:
            yield
        finally:
            self.path = None


INPUT_NAMED = InputNamed()  # the CLI's handlers filter by it; each batch loop sets its input
