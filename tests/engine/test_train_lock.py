"""One trainer per run folder (a walkthrough, stop 66: `train --out RUN` refused a live run and said "continue it
with --resume RUN"; that --resume started a second trainer on the live folder, both committing through .pending)."""
import subprocess
import sys

import pytest

from hemaseg.engine.train import hold_run

pytest.importorskip("fcntl")


def test_a_run_folder_is_held_by_one_process(tmp_path):
    hold_run(tmp_path, "--out")
    hold_run(tmp_path, "--out")  # the same process again: fine
    code = ("import sys; from hemaseg.engine.train import hold_run\n"
            "try:\n    hold_run(sys.argv[1], '--resume')\nexcept Exception as e:\n    print(e.reason); sys.exit(3)\n")
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert other.returncode == 3 and "being trained by another process" in other.stdout
    free = tmp_path / "free"
    free.mkdir()
    assert subprocess.run([sys.executable, "-c", code, str(free)]).returncode == 0  # another folder: free
