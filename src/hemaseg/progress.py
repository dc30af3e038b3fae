"""The one progress helper: a tqdm bar on stderr, off when stderr is not a terminal or HEMASEG_QUIET is set."""
from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def track(items: Iterable[T], desc: str, total: int | None = None, **kw) -> Iterable[T]:
    """Iterate ``items`` with a progress bar on stderr."""
    from tqdm import tqdm

    disable = bool(os.environ.get("HEMASEG_QUIET")) or not sys.stderr.isatty()
    return tqdm(items, desc=desc, total=total, file=sys.stderr, disable=disable, dynamic_ncols=True, **kw)
