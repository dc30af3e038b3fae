import json

import numpy as np
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
    from hemaseg.errors import HemasegInputError

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
    with pytest.raises(HemasegInputError, match="smear10"):
        init_arch(str(first), "smear10")
