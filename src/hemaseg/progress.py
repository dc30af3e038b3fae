"""The one progress helper: a tqdm bar on stderr, off when stderr is not a terminal or HEMASEG_QUIET is set."""
from __future__ import annotations

import logging
import os
import sys
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
