"""Where the benchmark scripts keep their Markdown output: ``benchmarks/results/<name>.md``."""
from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(name: str, lines: list[str]) -> Path:
    """Write ``lines`` (Markdown, one per line) to ``benchmarks/results/<name>.md``; returns the path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path
