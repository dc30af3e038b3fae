import json

import numpy as np
from safetensors.torch import load_file

from hemaseg.models.registry import load_model
from hemaseg.train.loop import TrainConfig, fit

from helpers import TINY


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


def _voc_folder(root, rng):
    from PIL import Image

    from helpers import toy_wbc

    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    ids = []
    for i in range(3):
        img, _ = toy_wbc(rng, size=96, radius=20, center=(48, 48))
        Image.fromarray(img).save(root / "JPEGImages" / f"p{i}.jpg")
        (root / "Annotations" / f"p{i}.xml").write_text(
            "<annotation><object><name>WBC</name><bndbox><xmin>28</xmin><ymin>28</ymin><xmax>68</xmax>"
            "<ymax>68</ymax></bndbox></object><object><name>RBC</name><bndbox><xmin>0</xmin><ymin>0</ymin>"
            "<xmax>10</xmax><ymax>10</ymax></bndbox></object></annotation>")
        ids.append(f"p{i}")
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids[:2]))
    (root / "ImageSets" / "Main" / "val.txt").write_text(ids[2])
    return root


def test_negatives_are_partial_labels_from_the_train_list_only(tmp_path):
    from hemaseg.io.datasets import IGNORE
    from hemaseg.train.loop import load_negatives

    voc = _voc_folder(tmp_path / "voc", np.random.default_rng(0))
    items = load_negatives([str(voc)], diameter=20.0)
    assert len(items) == 2  # p2 is on the val list
    image, label = items[0]
    # WBC box of 40 px rescaled to the trained diameter (20 px): half size.
    assert image.shape[:2] == (48, 48) and label.shape == (48, 48)
    assert set(np.unique(label)) == {0, IGNORE}
    assert label[24, 24] == IGNORE and label[2, 2] == 0


def test_training_with_negatives(wbc_folder, tmp_path):
    voc = _voc_folder(tmp_path / "voc", np.random.default_rng(0))
    cfg = _cfg(wbc_folder)
    cfg.negatives, cfg.epochs = [str(voc)], 1
    state = fit(cfg, tmp_path / "neg", progress=False)
    card = json.loads((tmp_path / "neg" / "model.json").read_text())
    assert card["training"]["n_negatives"] == 2 and np.isfinite(state["history"][0]["train_loss"])


def test_ignored_pixels_do_not_count():
    import torch

    from hemaseg.train.losses import IGNORE, dice_ce_loss

    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    masked = target.clone()
    masked[:, :4] = IGNORE
    # Changing the logits where the label is IGNORE leaves the loss unchanged.
    other = logits.clone()
    other[:, :, :4] += 5 * torch.randn(2, 3, 4, 8)
    for nested in (True, False):
        assert torch.isclose(dice_ce_loss(logits, masked, nested), dice_ce_loss(other, masked, nested))
        assert not torch.isclose(dice_ce_loss(logits, target, nested), dice_ce_loss(other, target, nested))
