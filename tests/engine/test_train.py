import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from helpers import TINY
from hemaseg.engine.train import TrainConfig
from hemaseg.models.registry import load_model
from hemaseg.tasks import fit


def _cfg(data):
    return TrainConfig(data=[str(data)], arch="unet-dropout", arch_kwargs=TINY, epochs=2, batch_size=4, crop=32,
                       samples_per_epoch=8, patience=10, val_fraction=0.2, seed=3)


def test_two_epochs_then_resume_equals_unbroken_run(wbc_folder, tmp_path):
    full = fit(_cfg(wbc_folder), tmp_path / "full", progress=False)
    assert full["epoch"] == 2 and full.get("finished")
    run = tmp_path / "broken"
    part = fit(_cfg(wbc_folder), run, progress=False, max_epochs_this_call=1)  # "killed" after epoch 1
    assert part["epoch"] == 1 and not part.get("finished")
    assert json.loads((run / "state.json").read_text())["epoch"] == 1
    resumed = fit(None, run, resume=True, progress=False)
    assert resumed["epoch"] == 2 and resumed.get("finished")
    a, b = load_file(str(tmp_path / "full" / "last.safetensors")), load_file(str(run / "last.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert np.allclose(a[k].numpy(), b[k].numpy(), atol=1e-6), k
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(full["history"]) == strip(resumed["history"])


def test_run_folder_contents_and_card(wbc_folder, tmp_path):
    run = tmp_path / "run"
    state = fit(_cfg(wbc_folder), run, progress=False)
    for name in ("state.json", "split.json", "curves.png", "best.safetensors", "last.safetensors",
                 "last.optim.pt", "model.safetensors", "model.json"):
        assert (run / name).exists(), name
    split = json.loads((run / "split.json").read_text())
    assert len(split["val"]) == 2 and len(split["train"]) == 8
    assert not {v[0] for v in split["val"]} & {t[0] for t in split["train"]}
    card = json.loads((run / "model.json").read_text())
    assert card["task"] == "wbc" and card["cell_diameter"] > 10
    assert {"hemaseg", "torch"} <= set(card["versions"])
    assert set(state["history"][0]) >= {"epoch", "lr", "train_loss", "dice_cell", "dice_nucleus"}
    model, card2 = load_model(run)
    assert card2["architecture"]["name"] == "unet-dropout"


def test_training_learns_the_toy_task(wbc_folder, tmp_path):
    cfg = _cfg(wbc_folder)
    cfg.epochs, cfg.samples_per_epoch, cfg.batch_size, cfg.lr, cfg.augment = 6, 64, 8, 1e-2, False
    state = fit(cfg, tmp_path / "learn", progress=False)
    first, best = state["history"][0], max(h["dice_cell"] for h in state["history"])
    assert best > 0.8 and best > first["dice_cell"]


def test_init_starts_from_a_models_weights(wbc_folder, tmp_path):
    import pytest

    from hemaseg.engine.train import init_arch
    from hemaseg.errors import HemasegUsageError

    first = tmp_path / "first"
    fit(_cfg(wbc_folder), first, progress=False)
    arch, kwargs = init_arch(str(first), "wbc")
    assert arch == "unet-dropout" and kwargs == TINY
    # lr 0: the fine-tuned weights stay exactly those it started from (and differ from a fresh start)
    cfg = _cfg(wbc_folder)
    cfg.lr, cfg.epochs, cfg.init, cfg.seed = 0.0, 1, str(first), 7
    fit(cfg, tmp_path / "tuned", progress=False)
    start, _ = load_model(first)
    tuned = load_file(str(tmp_path / "tuned" / "last.safetensors"))
    ref = {k: v.detach() for k, v in start.named_parameters()}  # (BatchNorm's running statistics do move)
    assert all(np.allclose(tuned[k].numpy(), ref[k].numpy()) for k in ref)
    cfg.init = ""
    fresh = fit(cfg, tmp_path / "fresh", progress=False) and load_file(str(tmp_path / "fresh" / "last.safetensors"))
    assert not all(np.allclose(fresh[k].numpy(), ref[k].numpy()) for k in ref)
    with pytest.raises(HemasegUsageError, match="init needs a smear10 model"):  # a usage error since stop 64
        init_arch(str(first), "smear10")


def test_a_fine_tune_keeps_its_starts_thresholds_not_what_was_fitted_to_it(wbc_folder, tmp_path):
    """A nuclei walkthrough (stop 67): `train nuclei --init nuclei` wrote a card without the bundled card's
    thresholds (seed 0.4, smallest nucleus 0.08), so the fine-tuned model ran with 0.5 / 0.04; the card did not say
    where it started either. A fitted step (a dict: the cells card's platelet re-scorer) is the start's own."""
    import json

    first = tmp_path / "first"
    fit(_cfg(wbc_folder), first, progress=False)
    card = json.loads((first / "model.json").read_text())
    card["postprocess"] = {"max_reach": 0.8, "fitted": {"coef": [1.0]}}
    (first / "model.json").write_text(json.dumps(card))
    cfg = _cfg(wbc_folder)
    cfg.epochs, cfg.init = 1, str(first)
    fit(cfg, tmp_path / "tuned", progress=False)
    tuned = json.loads((tmp_path / "tuned" / "model.json").read_text())
    assert tuned["postprocess"] == {"max_reach": 0.8}
    assert tuned["training"]["init"] == tuned["training"]["postprocess_from"] == str(first)
    # ... and says what it did not keep (a cells walkthrough, stop 68: the re-scorer went without a word)
    assert list(tuned["training"]["postprocess_not_kept"]) == ["fitted"]
    fit(_cfg(wbc_folder), tmp_path / "fresh", progress=False)
    assert "postprocess" not in json.loads((tmp_path / "fresh" / "model.json").read_text())


# ---- issue 20: one atomic commit point, exact resume whatever the moment of the kill (case 6),
# ---- no silent reuse of another run's split (case 4)
class Killed(BaseException):
    """Stands for SIGKILL: nothing after it in the process runs as planned."""


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _same_weights(a, b):
    a, b = load_file(str(a)), load_file(str(b))
    return a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_resume_is_exact_whatever_the_moment_of_the_kill(wbc_folder, tmp_path, monkeypatch):
    import os

    cfg = _cfg(wbc_folder)
    fit(cfg, tmp_path / "full", progress=False)
    template = tmp_path / "epoch1"
    fit(cfg, template, progress=False, max_epochs_this_call=1)
    real_replace = os.replace
    calls = []

    def counting(*a, **k):
        calls.append(a)
        return real_replace(*a, **k)

    monkeypatch.setattr(os, "replace", counting)
    fit(None, _copy(template, tmp_path / "count"), resume=True, progress=False)
    monkeypatch.setattr(os, "replace", real_replace)
    n = len(calls)  # every file move of epoch 2 and the run's end: each is a moment a kill can fall on
    assert n >= 4
    for k in range(n):
        run = _copy(template, tmp_path / f"kill{k}")
        seen = []

        def dying(*a, **kw):
            seen.append(a)
            if len(seen) == k + 1:
                raise Killed
            return real_replace(*a, **kw)

        monkeypatch.setattr(os, "replace", dying)
        with pytest.raises(Killed):
            fit(None, run, resume=True, progress=False)
        monkeypatch.setattr(os, "replace", real_replace)
        state = fit(None, run, resume=True, progress=False)
        assert state["epoch"] == 2 and state.get("finished"), k
        for name in ("last.safetensors", "best.safetensors", "model.safetensors"):
            assert _same_weights(tmp_path / "full" / name, run / name), (k, name)
        assert not [p.name for p in run.iterdir() if p.name.startswith(".")], k


@pytest.mark.parametrize("init", [False, True])
def test_a_kill_before_the_first_checkpoint_resumes_from_the_start(wbc_folder, tmp_path, monkeypatch, init):
    import os

    cfg = _cfg(wbc_folder)
    if init:  # a fine-tune killed before its first checkpoint starts again from the init weights, not random ones
        fit(_cfg(wbc_folder), tmp_path / "first", progress=False, max_epochs_this_call=1)
        cfg.init = str(tmp_path / "first")
    fit(cfg, tmp_path / "full", progress=False)
    real_replace = os.replace
    for k in (2, 3):  # after the run's state and split are written, inside the first epoch's commit
        run = tmp_path / f"kill{k}"
        seen = []

        def dying(*a, **kw):
            seen.append(a)
            if len(seen) == k:
                raise Killed
            return real_replace(*a, **kw)

        monkeypatch.setattr(os, "replace", dying)
        with pytest.raises(Killed):
            fit(cfg, run, progress=False)
        monkeypatch.setattr(os, "replace", real_replace)
        fit(None, run, resume=True, progress=False)
        assert _same_weights(tmp_path / "full" / "model.safetensors", run / "model.safetensors"), k


def test_a_writer_killed_mid_file_leaves_no_temp_file(wbc_folder, tmp_path, monkeypatch):
    import os

    import safetensors.torch

    run = tmp_path / "run"
    fit(_cfg(wbc_folder), run, progress=False, max_epochs_this_call=1)

    def killed_while_writing(tensors, filename, *a, **k):
        with open(filename, "wb") as f:
            f.write(b"\0" * 1000)  # half a checkpoint
        raise Killed

    monkeypatch.setattr(safetensors.torch, "save_file", killed_while_writing)
    monkeypatch.setattr("hemaseg.models.registry.save_file", killed_while_writing)
    monkeypatch.setattr(os, "unlink", lambda *a, **k: None)  # a killed process cleans nothing up
    with pytest.raises(Killed):
        fit(None, run, resume=True, progress=False)
    monkeypatch.undo()
    assert [p for p in run.rglob(".*") if p.is_file()]  # the half-written temp file is there
    fit(None, run, resume=True, progress=False)
    assert not [p for p in run.rglob(".*")]


def test_out_into_an_existing_run_needs_resume_or_overwrite(wbc_folder, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from helpers import toy_wbc
    from hemaseg.cli import app

    run = tmp_path / "run"
    fit(_cfg(wbc_folder), run, progress=False, max_epochs_this_call=1)
    new = tmp_path / "new"
    new.mkdir()
    rng = np.random.default_rng(5)
    for i in range(4):
        img, mask = toy_wbc(rng)
        Image.fromarray(img).save(new / f"{i:03d}.bmp")
        Image.fromarray(mask).save(new / f"{i:03d}.png")
    args = ["train", "wbc", "--data", str(new), "--out", str(run), "--epochs", "1", "--crop", "32",
            "--batch-size", "4", "--samples-per-epoch", "4"]
    before = (run / "split.json").read_text()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "--resume" in res.output and "--overwrite" in res.output, res.output
    assert (run / "split.json").read_text() == before  # the old run is untouched
    res = CliRunner().invoke(app, args + ["--overwrite"])
    assert res.exit_code == 0, res.output
    split = json.loads((run / "split.json").read_text())
    assert {Path(p).parent for p, _ in split["train"] + split["val"]} == {new.resolve()}
    card = json.loads((run / "model.json").read_text())
    assert card["training"]["n_train"] + card["training"]["n_val"] == 4
    res = CliRunner().invoke(app, ["train", "wbc", "--resume", str(run), "--data", str(wbc_folder)])
    assert res.exit_code == 2 and "--data" in res.output


def test_a_split_of_other_data_is_refused(wbc_folder, tmp_path):
    from hemaseg.engine.train import read_split
    from hemaseg.errors import HemasegInputError

    run = tmp_path / "run"
    fit(_cfg(wbc_folder), run, progress=False, max_epochs_this_call=1)
    assert len(read_split(run / "split.json", [str(wbc_folder)])[0]) == 8
    with pytest.raises(HemasegInputError, match="not under the run's data"):
        read_split(run / "split.json", [str(tmp_path / "elsewhere")])


def test_a_given_split_decides_train_and_val_by_file_name(wbc_folder, tmp_path):
    from hemaseg.errors import HemasegInputError
    from hemaseg.tasks import get_task

    pairs = get_task("wbc").find_samples(wbc_folder)
    names = sorted(p.image.name for p in pairs)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"source": str(wbc_folder), "train": names[3:], "val": names[:3]}))
    cfg = _cfg(wbc_folder)
    cfg.epochs, cfg.split = 1, str(split)
    state = fit(cfg, tmp_path / "run", progress=False)
    written = json.loads((tmp_path / "run" / "split.json").read_text())
    assert sorted(Path(v[0]).name for v in written["val"]) == names[:3]  # not the seeded 2 of 10
    assert len(written["train"]) == len(names) - 3 and state["epoch"] == 1
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["training"]["split"] == str(split) and card["training"]["n_val"] == 3
    split.write_text(json.dumps({"train": names, "val": names[:1]}))
    with pytest.raises(HemasegInputError, match="both"):
        fit(cfg, tmp_path / "overlap", progress=False)
    cfg.split = str(tmp_path / "missing.json")
    with pytest.raises(HemasegInputError, match="missing.json"):
        fit(cfg, tmp_path / "missing", progress=False)


def test_a_fine_tune_never_ends_worse_than_its_start(wbc_folder, tmp_path, caplog):
    """A smear10 walkthrough (stop 67): a lab's fine-tune at too high a rate ended below the model it began from
    (mean IoU 0.73 -> 0.52), and the run shipped its best epoch, the start never scored. The start is scored on the
    same validation items at the end, and shipped when no epoch beat it, said in the card and the log."""
    import logging

    import torch
    from safetensors.torch import load_file

    first = tmp_path / "first"
    cfg = _cfg(wbc_folder)
    cfg.epochs, cfg.samples_per_epoch, cfg.batch_size, cfg.lr, cfg.augment = 6, 64, 8, 1e-2, False
    fit(cfg, first, progress=False)
    first_card = json.loads((first / "model.json").read_text())
    # the start's card as a lab's start has it: a working scale of its own (cells: input_scale, box_scale) and a step
    # fitted to its outputs (the platelet re-scorer)
    first_card.update(postprocess={"max_reach": 0.8, "fitted": {"coef": [1.0]}}, input_scale=0.5056,
                      box_scale={"wbc": 1.068})
    (first / "model.json").write_text(json.dumps(first_card))
    cfg = _cfg(wbc_folder)
    cfg.epochs, cfg.lr, cfg.init, cfg.augment = 1, 5.0, str(first), False  # a rate that wrecks it
    with caplog.at_level(logging.WARNING):
        state = fit(cfg, tmp_path / "tuned", progress=False)
    card = json.loads((tmp_path / "tuned" / "model.json").read_text())
    assert state["finished"] and card["metrics"]["epoch"] == 0 and "the start model" in card["training"]["shipped"]
    assert "no epoch beat the start" in caplog.text, caplog.text
    assert "evaluate wbc --data DATA --model RUN --split RUN/split.json" in card["metrics"]["note"]  # (a walkthrough)
    assert card["cell_diameter"] == first_card["cell_diameter"]  # shipped with its own working scale (a review)
    # ... all of it, and what was fitted to it (a cells walkthrough, stop 68: the lab data's input_scale and box_scale
    # went with the start's weights, 31 red cells counted where the start counts 26, and the re-scorer was dropped)
    assert card["input_scale"] == 0.5056 and card["box_scale"] == {"wbc": 1.068}
    assert card["postprocess"] == first_card["postprocess"] and "postprocess_not_kept" not in card["training"]
    assert card["diameter_range"] == first_card["diameter_range"]
    shipped = load_file(str(tmp_path / "tuned" / "model.safetensors"))
    start, _ = load_model(first)
    assert all(torch.equal(shipped[k], v) for k, v in start.state_dict().items())
    # killed after epoch 1 of 2 and resumed after its --init folder moved: it ends as the unbroken run (a review)
    cfg.epochs = 2
    unbroken = fit(cfg, tmp_path / "u", progress=False)
    fit(cfg, tmp_path / "k", progress=False, max_epochs_this_call=1)
    first.rename(tmp_path / "moved")
    resumed = fit(None, tmp_path / "k", resume=True, progress=False)
    assert unbroken.get("shipped") == resumed.get("shipped") == "start"
    a, b = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("u", "k"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "k" / "model.json").read_text())["postprocess"] == \
        json.loads((tmp_path / "u" / "model.json").read_text())["postprocess"]
    (tmp_path / "moved").rename(first)
    # a run begun before the start was kept in it (state.json without "start"), resumed: --init is scored at the end
    # as it was then, never the checkpoint taken for the start (a review)
    fit(cfg, tmp_path / "old", progress=False, max_epochs_this_call=1)
    from helpers import as_begun_before_the_start_was_kept

    as_begun_before_the_start_was_kept(tmp_path / "old")
    old = fit(None, tmp_path / "old", resume=True, progress=False)
    assert old.get("shipped") == "start" and not (tmp_path / "old" / "start.safetensors").exists()
    a = load_file(str(tmp_path / "old" / "model.safetensors"))
    assert all(torch.equal(a[k], v) for k, v in start.state_dict().items())
    again = fit(None, tmp_path / "tuned", resume=True, progress=False)  # a finished run resumed: shipped as it was
    assert again["finished"] and load_file(str(tmp_path / "tuned" / "model.safetensors")).keys() == shipped.keys()
    assert all(torch.equal(load_file(str(tmp_path / "tuned" / "model.safetensors"))[k], v) for k, v in shipped.items())


def test_binary_cell_masks_teach_and_score_the_whole_cell_not_the_nucleus(wbc_folder, tmp_path):
    """A wbc fine-tune walkthrough (stop 68): a lab's binary 0/255 WBC masks were read as all cytoplasm, so training
    taught the nucleus as cytoplasm and a correct model scored nucleus Dice 0 (evaluate, and the validation that
    chooses the checkpoint). Their cells are now "cell, parts unknown": taught as cell, the nucleus left unscored."""
    from PIL import Image
    from typer.testing import CliRunner

    from hemaseg.cli import app

    binary = tmp_path / "binary"
    binary.mkdir()
    for f in sorted(wbc_folder.iterdir()):
        if f.suffix == ".png":
            Image.fromarray(np.where(np.array(Image.open(f)) > 0, 255, 0).astype(np.uint8)).save(binary / f.name)
        else:
            (binary / f.name).write_bytes(f.read_bytes())
    state = fit(_cfg(binary), tmp_path / "run", progress=False)
    val = state["history"][-1]
    assert np.isnan(val["dice_nucleus"]) and 0 <= val["dice_cell"] <= 1 and np.isfinite(state["best_metric"]), val
    # scored beside a 0/128/255 folder: the nucleus mean is the parts-annotated images' alone
    res = CliRunner().invoke(app, ["evaluate", "wbc", "--data", str(binary), "--data", str(wbc_folder), "--model",
                                   str(tmp_path / "run"), "--json", str(tmp_path / "e.json"), "--grid",
                                   str(tmp_path / "g.png")])  # (the grid draws those cells, titled "nuc -")
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "e.json").read_text())
    rows = out["per_image"]
    parts = [r["dice_nucleus"] for r in rows if r["dice_nucleus"] is not None]
    assert len(parts) == 10 and sum(r["dice_nucleus"] is None for r in rows) == 10, rows
    assert out["mean"]["dice_nucleus"] == pytest.approx(np.mean(parts))


def test_a_fine_tune_that_only_ties_its_start_ships_the_start(wbc_folder, tmp_path, monkeypatch):
    """A typer walkthrough (stop 68): a tie with the start shipped the tied epoch, where the docs say the start is
    shipped "when no epoch beat it"; the engine's loop decides as the typer's does."""
    from hemaseg.tasks.wbc import WbcTask

    first = tmp_path / "first"
    fit(_cfg(wbc_folder), first, progress=False)
    monkeypatch.setattr(WbcTask, "validate", lambda self, *a, **k: {"dice_cell": 0.5, "dice_nucleus": 0.5})
    cfg = _cfg(wbc_folder)
    cfg.epochs, cfg.init = 1, str(first)
    state = fit(cfg, tmp_path / "tuned", progress=False)
    card = json.loads((tmp_path / "tuned" / "model.json").read_text())
    assert state.get("shipped") == "start" and "the start model" in card["training"]["shipped"], card["training"]


def test_what_a_run_left_out_is_said_after_a_kill_before_its_first_checkpoint(wbc_folder, tmp_path):
    """A review (stop 68): the inputs a run left out were kept in state.json only, written at the first checkpoint; a
    run killed before it and resumed ended with exit 0. They are kept with the split, written first."""
    from hemaseg.engine.train import pair_data
    from hemaseg.tasks import get_task

    (wbc_folder / "004.png").write_bytes(b"\x89PNG broken")
    run = tmp_path / "run"
    run.mkdir()
    first: dict = {}
    pair_data(get_task("wbc"), _cfg(wbc_folder), run, first)
    assert [Path(f["image"]).name for f in first["left_out"]] == ["004.png"]
    again: dict = {}  # the resumed process: the split is on disk, state.json is not
    pair_data(get_task("wbc"), _cfg(wbc_folder), run, again)
    assert again["left_out"] == first["left_out"]
