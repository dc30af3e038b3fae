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


def test_a_killed_trainers_lock_does_not_outlive_it_in_its_forked_workers(tmp_path):
    """A review (stop 66): a data-loader worker forked from the trainer held its copy of the lock, so a `--resume`
    right after `kill -9` was refused for seconds."""
    code = ("import os, sys, time; from hemaseg.engine.train import hold_run\n"
            "hold_run(sys.argv[1], '--out')\n"
            "if os.fork() == 0:\n    time.sleep(20); os._exit(0)\n"  # the worker outlives its parent
            "os._exit(0)\n")  # the trainer dies at once, without cleaning up
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)]).returncode == 0
    take = ("import sys; from hemaseg.engine.train import hold_run\n"
            "try:\n    hold_run(sys.argv[1], '--resume')\nexcept Exception as e:\n    print(e.reason); sys.exit(3)\n")
    other = subprocess.run([sys.executable, "-c", take, str(tmp_path)], capture_output=True, text=True)
    assert other.returncode == 0, other.stdout


def test_overwrite_leaves_a_run_another_process_trains_alone(tmp_path, wbc_folder):
    from typer.testing import CliRunner

    from hemaseg.cli import app

    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text("{}")
    code = ("import sys, time; from hemaseg.engine.train import hold_run\n"
            "hold_run(sys.argv[1], '--out'); print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = CliRunner().invoke(app, ["train", "wbc", "--data", str(wbc_folder), "--out", str(run), "--overwrite"])
        assert res.exit_code == 2 and "being trained by another process" in res.output
        assert (run / "state.json").read_text() == "{}"  # nothing deleted
    finally:
        holder.kill()
        holder.wait()
