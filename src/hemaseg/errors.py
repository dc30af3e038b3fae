"""Exception types; each names the file and the reason so the CLI can print one line."""
from __future__ import annotations

import re
from pathlib import Path

_FLAG = re.compile(r"(?:^|(?<=[\s(]))--([a-z][a-z0-9-]*)")  # a flag, not "--x" inside a value or path


def python_spelling(text: str) -> str:
    """``text`` with each command-line flag written as the Python argument it is (``--cell-diameter`` ->
    ``cell_diameter``): how a usage error reads outside the command line.

    >>> python_spelling("--tile: use --backend onnx or auto (not '--onnx', /data/--x)")
    "tile: use backend onnx or auto (not '--onnx', /data/--x)"
    """
    return _FLAG.sub(lambda m: m.group(1).replace("-", "_"), text)


class HemasegError(Exception):
    """Base class of hemaseg's own errors: catch it to catch every one of them.

    Never raised itself: the library raises its subclasses :class:`HemasegInputError` (an input
    that cannot be used; ``path`` and ``reason``) and :class:`HemasegUsageError` (an argument or
    option with a bad value, or one that does not apply, e.g. ``tile=7``, ``device="gpu"``, a
    classifier given to :func:`hemaseg.segment`; ``option`` and ``reason``; importable from
    :mod:`hemaseg.errors`). The message (``str(exc)``) is ``"<path or argument>: <reason>"`` with
    arguments spelled as in Python (``"tile: 7 is not allowed; ..."``); the command line prints
    ``path`` or ``option`` (its flag, ``"--tile"``) and ``reason`` as one line, goes on with the next
    input after an input error, and exits 2 on a usage error.

    Examples
    --------
    >>> import numpy as np, hemaseg
    >>> try:
    ...     hemaseg.segment(np.zeros((64, 64, 3), np.uint8), device="gpu")
    ... except hemaseg.HemasegError as exc:
    ...     print(type(exc).__name__, "|", exc.reason)
    HemasegUsageError | 'gpu' is not a device; use cpu, cuda (cuda:N) or auto
    """


class HemasegInputError(HemasegError):
    """An input that cannot be used: a file, model or array the library cannot work with.

    Raised for an image file that does not exist, is a folder, is empty, corrupt, truncated, not
    an image or too large (:func:`hemaseg.read_image`); an array given as an image that is not
    one (channels-first, no numbers, empty, a list of images: :func:`hemaseg.io.images.as_photo`);
    a model that is no bundled name and no readable model file or run folder, or whose card or
    weights do not load (:func:`hemaseg.load_model`); and other unusable inputs (annotation
    files, data folders, a training run to resume).

    Parameters
    ----------
    path : str or Path
        The file or model at fault; when the input is not a file, the name of what is at fault
        (``"image"`` for an array given as an image, ``"path"`` for a non-path given to
        :func:`hemaseg.read_image`, a task or method name).
    reason : str
        What is wrong with it.

    Attributes
    ----------
    path : str
        ``path`` as text.
    reason : str
        ``reason``. The message (``str(exc)``) is ``"<path>: <reason>"``.

    Examples
    --------
    >>> import hemaseg
    >>> try:
    ...     hemaseg.read_image("no/such/image.png")
    ... except hemaseg.HemasegInputError as exc:
    ...     print(exc.path, "|", exc.reason, "|", isinstance(exc, hemaseg.HemasegError))
    no/such/image.png | no such file | True
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):  # pickled whole (a Dask worker's error reaches the client as it was raised)
        return type(self), (self.path, self.reason)


class HemasegUsageError(HemasegError):
    """An option that does not apply or has a bad value; the CLI exits 2 (bad usage) on it.

    ``option`` and ``reason`` keep the command line's spelling (``"--cell-diameter"``), which the CLI
    prints; ``argument`` and the message (``str(exc)``) the Python one (``"cell_diameter"``), which a
    caller of :func:`hemaseg.segment` and the other functions sees.

    >>> exc = HemasegUsageError("--cell-diameter", "1 is not allowed; give --cell-diameter PX from 2 to 5000")
    >>> exc.option, exc.argument
    ('--cell-diameter', 'cell_diameter')
    >>> str(exc)
    'cell_diameter: 1 is not allowed; give cell_diameter PX from 2 to 5000'
    """

    def __init__(self, option: str, reason: str) -> None:
        self.option = option
        self.reason = reason
        self.argument = python_spelling(str(option))
        super().__init__(f"{self.argument}: {python_spelling(str(reason))}")

    def __reduce__(self):
        return type(self), (self.option, self.reason)
