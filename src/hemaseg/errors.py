"""Exception types; each names the file and the reason so the CLI can print one line."""
from __future__ import annotations

from pathlib import Path


class HemasegError(Exception):
    """Base class of hemaseg's own errors."""


class HemasegInputError(HemasegError):
    """A file that cannot be used as input: unreadable, corrupt, empty, wrong size or kind."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class HemasegUsageError(HemasegError):
    """An option that does not apply or has a bad value; the CLI exits 2 (bad usage) on it."""

    def __init__(self, option: str, reason: str) -> None:
        self.option = option
        self.reason = reason
        super().__init__(f"{option}: {reason}")
