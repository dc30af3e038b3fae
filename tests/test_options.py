"""Every numeric option validated up front, options that do not apply refused, output locations
checked before any work (issue 20, cases 5, 9 and 11): one line naming the option, exit 2."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from helpers import toy_wbc
from hemaseg.cli import app
from hemaseg.core.options import check_numbers
from hemaseg.errors import HemasegUsageError

runner = CliRunner()


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(toy_wbc(np.random.default_rng(0), 64)[0]).save(d / "a.png")
    return d


def _one_line_usage(res, option):
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith(option), res.output
    return lines[0]


@pytest.mark.parametrize("args,option", [
    (["--tile", "0"], "--tile"), (["--tile", "7"], "--tile"), (["--tile=-5"], "--tile"),
    (["--cell-diameter=-1"], "--cell-diameter"), (["--cell-diameter", "0"], "--cell-diameter"),
    (["--cell-diameter", "1e9"], "--cell-diameter"), (["--cell-diameter", "nan"], "--cell-diameter"),
    (["--cell-diameter", "inf"], "--cell-diameter"),
    (["--method", "hsv", "--model", "wbc"], "--model"), (["--method", "hsv", "--cell-diameter", "40"], "--cell-diameter"),
])
def test_segment_refuses_bad_numbers_and_unused_options(photos, tmp_path, args, option):
    out = tmp_path / "out"
    line = _one_line_usage(runner.invoke(app, ["segment", str(photos), "--out", str(out), *args]), option)
    if option in ("--tile", "--cell-diameter") and "--method" not in args:
        assert "from" in line  # the allowed range
    assert not out.exists()  # nothing done


def test_library_entry_points_check_the_same_ranges():
    import hemaseg

    with pytest.raises(HemasegUsageError, match="^cell_diameter: "):
        hemaseg.segment(np.zeros((8, 8, 3), np.uint8), cell_diameter=float("nan"))
    with pytest.raises(HemasegUsageError, match="^tile: "):
        check_numbers(tile=7)
    check_numbers(tile=128, cell_diameter=24.0, epochs=1)


def test_train_refuses_zero_epochs_and_batch(wbc_folder, tmp_path):
    for args, option in ((["--epochs", "0"], "--epochs"), (["--batch-size", "0"], "--batch-size"),
                         (["--lr", "0"], "--lr"), (["--val-fraction", "1.5"], "--val-fraction"),
                         (["--val-fraction", "0"], "--val-fraction"),  # 0 still held one image out (stop 63)
                         (["--init", "nosuch"], "--init"),  # exit 1 before, where --model nosuch is 2
                         (["--init", "nuclei"], "--init"),  # another task's model: exit 1 before (stop 64)
                         # an exported ONNX file (no weights to train): exit 1 before (stop 65)
                         (["--init", str(Path(__file__).parents[1] / "src/hemaseg/weights/wbc.onnx")], "--init"),
                         (["--device", "cuda"], "--device")):  # train had no --device (DESIGN.md: all commands)
        res = runner.invoke(app, ["train", "wbc", "--data", str(wbc_folder), "--out", str(tmp_path / "r"), *args])
        _one_line_usage(res, option)
        assert not (tmp_path / "r").exists()


def test_unusable_output_locations_are_refused_before_any_work(photos, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        ["segment", str(photos), "--out", str(blocker / "sub")],
        ["segment", str(photos), "--out", str(blocker)],
        ["analyze", str(photos), "--out", str(tmp_path / "o"), "--coco", str(blocker / "c.json")],
        ["analyze", str(photos), "--out", str(tmp_path / "o"), "--cvat", str(tmp_path)],
        ["train", "wbc", "--data", str(photos), "--out", str(blocker)],
        ["evaluate", "wbc", "--data", str(photos), "--json", str(blocker / "e.json")],
        ["crop", str(photos), "--out", str(blocker)],
    ]
    for args in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert len([ln for ln in res.output.splitlines() if ln.strip()]) == 1, (args, res.output)
    assert not (tmp_path / "o").exists()


def test_cuda_without_a_gpu_is_a_usage_error(photos, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _one_line_usage(runner.invoke(app, ["segment", str(photos), "--out", str(tmp_path / "o"), "--device", "cuda"]),
                    "--device")
    for command in (["classify", "-d", str(photos), "-o", str(tmp_path / "p.csv")], ["explain", str(photos)]):
        _one_line_usage(runner.invoke(app, command + ["--device", "cuda"]), "--device")


def test_coco_rle_needs_coco(photos, tmp_path):
    _one_line_usage(runner.invoke(app, ["analyze", str(photos), "--out", str(tmp_path / "o"), "--coco-rle"]),
                    "--coco-rle")


def test_models_prints_the_measured_figures():
    """Case 11: `hemaseg models` printed the training-time mAP 0.605 of `cells`, not the measured 0.881."""
    from hemaseg.models.registry import WEIGHTS_DIR

    card = json.loads((WEIGHTS_DIR / "cells.json").read_text())
    measured = card["metrics"]["val_pipeline"]["map50"]
    res = runner.invoke(app, ["models"])
    line = next(ln for ln in res.output.splitlines() if ln.startswith("bundled: cells "))
    assert f"map50={measured:.3f}" in line and f"{card['metrics']['val']['map50']:.3f}" not in line


def test_weights_of_another_architecture_are_one_line(photos, tmp_path, tiny_model_path):
    """Case 9: weights that do not fit the card's architecture printed a 65-line torch error."""
    card = json.loads(tiny_model_path.with_suffix(".json").read_text())
    card["architecture"]["kwargs"]["widths"] = [8, 16, 32]
    wrong = tmp_path / "wrong.safetensors"
    wrong.write_bytes(tiny_model_path.read_bytes())
    wrong.with_suffix(".json").write_text(json.dumps(card))
    res = runner.invoke(app, ["segment", str(photos), "--out", str(tmp_path / "o"), "--model", str(wrong)])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "do not fit" in lines[0], res.output


def test_the_python_functions_refuse_a_model_of_another_task_and_take_params_as_a_dict():
    """A U-Net given as the typer or the cells model failed deep inside (IndexError, TypeError); a dict of
    post-processing parameters failed with an AttributeError."""
    import numpy as np

    import hemaseg
    from hemaseg.errors import HemasegUsageError

    blank = np.full((64, 64, 3), 230, np.uint8)
    for call, what in ((lambda: hemaseg.analyze(blank, cells_model="wbc"), "cells_model: wbc is a wbc model"),
                       (lambda: hemaseg.analyze(blank, type_model="nuclei"), "type_model: nuclei is a nuclei model"),
                       (lambda: hemaseg.classify(blank, model="wbc"), "needs a wbc-type model"),
                       (lambda: hemaseg.segment(blank, model="wbc-type"), "does not segment"),
                       (lambda: hemaseg.segment(blank, params={"nope": 1}), "no post-processing parameter nope")):
        with pytest.raises(HemasegUsageError, match=what):
            call()
    seg = hemaseg.segment(blank, params={"red_outside": 0.5})  # a known name: taken
    assert seg.count == 0
    model, card = hemaseg.load_model("wbc")  # a card naming a task this hemaseg lacks: one error, no KeyError
    with pytest.raises(hemaseg.HemasegInputError, match="names task 'rbcx'"):
        hemaseg.segment(blank, model=(model, {**card, "task": "rbcx"}))
    assert "HemasegUsageError" in hemaseg.__all__ and hemaseg.HemasegUsageError is HemasegUsageError
    with pytest.raises(HemasegUsageError, match="nuclei is a nuclei model"):  # was None on an empty image
        hemaseg.estimate_diameter(blank, model="nuclei")
    import torch  # device="auto": torch's RuntimeError before

    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(hemaseg.load_model("wbc", device="auto")[0].parameters()).device.type == want


def test_the_python_functions_read_option_values_as_the_command_line_does():
    """params values as --post reads them ("false" was taken as true, "0.2" failed nine frames deep, -1 was taken);
    numpy numbers taken as numbers (np.float32(200) was refused); device "auto" and a missing GPU in one line
    (torch's own error before)."""
    import hemaseg
    from hemaseg.errors import HemasegUsageError

    image = hemaseg.read_image(hemaseg.__path__[0] + "/samples/BloodImage_00000.jpg")
    off = hemaseg.segment(image, params={"red_cytoplasm": False}).objects[0]["area"]
    assert hemaseg.segment(image, params={"red_cytoplasm": "false"}).objects[0]["area"] == off
    assert off != hemaseg.segment(image).objects[0]["area"]
    for bad, says in (({"red_ring": -1}, "from 0.0 to 10.0"), ({"red_ring": "abc"}, "takes a float"),
                      ({"red_cytoplasm": 3}, "takes a bool")):
        with pytest.raises(HemasegUsageError, match=says):
            hemaseg.segment(image, params=bad)
    assert hemaseg.segment(image, cell_diameter=np.float32(200), tile=np.int64(512)).cell_diameter == 200
    assert hemaseg.segment(image, device="auto").count == 1
    with pytest.raises(HemasegUsageError, match="not a device"):
        hemaseg.segment(image, device="gpu")


def test_errors_survive_pickling_and_keep_values_that_look_like_flags():
    """A Dask worker's error is pickled to the client: both errors failed to unpickle (TypeError: missing
    'reason'). A value such as '--onnx' or a path holding '--' is the user's, not a flag to respell."""
    import pickle

    from hemaseg.errors import HemasegInputError, HemasegUsageError

    for exc in (HemasegInputError("/data/--x/a.png", "no such file"), HemasegUsageError("--tile", "7 is not allowed")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc) and back.reason == exc.reason
    exc = HemasegUsageError("--backend", "'--onnx' is not a backend; use --backend onnx")
    assert str(exc) == "backend: '--onnx' is not a backend; use backend onnx" and exc.option == "--backend"


def test_segment_refuses_what_its_tasks_would_fail_on_inside():
    """A segment audit: overlap = tile divided by zero in the tiling, params='red_ring=0.2' was an AttributeError,
    tta='yes' was taken as True, block_size=0 in params hung; a complete WbcParams was used unchecked (stop 60)."""
    import hemaseg
    from hemaseg.errors import HemasegUsageError
    from hemaseg.tasks.wbc import WbcParams

    img = np.full((64, 64, 3), 230, np.uint8)
    for kw, option in [({"model": "nuclei", "tile": 128, "overlap": 128}, "overlap"),
                       ({"params": "red_ring=0.2"}, "params"), ({"tta": "yes"}, "tta"),
                       ({"params": {"block_size": 0}}, "params"), ({"params": {"red_ring": float("nan")}}, "params"),
                       ({"params": WbcParams(block_size=0)}, "params"), ({"params": WbcParams(red_ring=-1.0)}, "params")]:
        with pytest.raises(HemasegUsageError) as err:
            hemaseg.segment(img, cell_diameter=40, **{"model": "wbc", **kw})
        assert err.value.argument == option, kw
    assert hemaseg.segment(img, model="nuclei", cell_diameter=20, tile=128, overlap=64).count == 0
    assert hemaseg.segment(img, cell_diameter=40, tile=None, overlap=None).count == 0  # None: the defaults
    assert hemaseg.segment(img, cell_diameter=40, params=WbcParams(red_ring=0.2)).count == 0  # a good object passes


def test_post_ranges_keep_the_documented_values():
    """A review of the ranges: rescale_tolerance 0 ('the older rule'), downscales [] (only the 1x reading),
    in_range 1 and clump_ratio 0 (off) are documented values and must pass; first_pass_factors [] must not."""
    from hemaseg.engine.task import param_value
    from hemaseg.tasks.cells.infer import CellsParams
    from hemaseg.tasks.smear10.infer import SmearParams
    from hemaseg.tasks.wbc import WbcParams

    assert param_value(CellsParams(), "rescale_tolerance", "0") == 0.0
    assert param_value(SmearParams(), "downscales", "[]") == ()
    assert param_value(SmearParams(), "in_range", "1.0") == 1.0 and param_value(SmearParams(), "clump_ratio", 0) == 0
    with pytest.raises(ValueError, match="at least 1 number"):
        param_value(WbcParams(), "first_pass_factors", "[]")


@pytest.mark.parametrize("option,model", [("--model", "wbc"), ("--type-model", "cells")])
def test_analyze_refuses_a_model_of_another_task_before_any_photo(photos, tmp_path, option, model):
    """A walkthrough: `analyze --model wbc` failed each photo on it (exit 1) and left an empty batch in --out, so the
    corrected run was then refused as a batch to --resume."""
    out = tmp_path / "o"
    line = _one_line_usage(runner.invoke(app, ["analyze", str(photos), "--out", str(out), option, model]), option)
    assert "model, not a" in line and not out.exists()


@pytest.mark.parametrize("command", [["segment", "--task", "nuclei"], ["classify", "-f"], ["analyze", "--out", "OUT"]])
def test_a_model_that_does_not_load_is_one_line_naming_model(photos, tmp_path, command):
    """A walkthrough: `segment --model nope` said "nope: no such model file ..." without naming the option, as every
    other usage error does (and analyze said "--model nope: ...")."""
    args = [a if a != "OUT" else str(tmp_path / "o") for a in command] + [str(photos / "a.png"), "--model", "nope"]
    line = _one_line_usage(runner.invoke(app, args), "--model")
    assert line.startswith("--model: nope: no such model file")


def test_an_output_file_never_replaces_a_photo(photos, tmp_path):
    """A walkthrough: `classify -o smear.jpg`, `analyze --coco smear.jpg` and `convert ... smear.jpg` replaced the
    photo by CSV or JSON text, exit 0."""
    victim = tmp_path / "victim.jpg"
    Image.new("RGB", (8, 8)).save(victim)
    before = victim.read_bytes()
    cases = [(["classify", "-f", str(photos / "a.png"), "-o", str(victim)], "--output"),
             (["analyze", str(photos), "--out", str(tmp_path / "o"), "--coco", str(victim)], "--coco"),
             (["convert", "--from", "cvat", "--to", "coco", str(tmp_path / "none.xml"), str(victim)], "OUT")]
    for args, option in cases:
        line = _one_line_usage(runner.invoke(app, args), option)
        assert "is an image" in line
    assert victim.read_bytes() == before


def test_analyze_takes_params_as_a_dict_as_segment_does():
    """A docstring audit (stop 63): hemaseg.analyze(params={...}) was an AttributeError deep inside."""
    import hemaseg
    from hemaseg.errors import HemasegUsageError

    photo = hemaseg.__path__[0] + "/samples/BloodImage_00000.jpg"
    assert hemaseg.analyze(photo, params={"min_area_fraction": 0.2}).counts["wbc"] == 1
    with pytest.raises(HemasegUsageError, match="params: a str"):
        hemaseg.analyze(photo, params="relative_size=0.5")
    with pytest.raises(HemasegUsageError, match="params"):
        hemaseg.analyze(photo, params={"nosuch": 1})


@pytest.mark.parametrize("command", [["segment", "--method", "hsv", "--out", "OUT"], ["crop", "--out", "OUT"],
                                     ["classify", "-o", "OUT.csv", "-f"]])
def test_an_empty_folder_beside_a_photo_is_a_failed_input(photos, tmp_path, command):
    """A walkthrough: `analyze x/s.jpg empty --out o` (and classify, explain) gave exit 0 without a word, where the
    same empty folder alone gives "no images found", exit 1. Now one line naming it; the photo is still done."""
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [a.replace("OUT", str(tmp_path / "o")) for a in command] + [str(photos / "a.png")]
    args += ["-d", str(empty)] if command[0] == "classify" else [str(empty)]
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and f"{empty}: no images" in res.output, res.output
    assert (tmp_path / "o").exists() or (tmp_path / "o.csv").exists()


def test_explain_out_beside_an_input_file_and_a_classify_csv_named_as_an_image_are_refused(photos, tmp_path):
    """A walkthrough: `explain crops/x.jpg --out crops` wrote Grad-CAM PNGs among the crops (then classified as
    crops), and `classify -o crops/x.png` wrote a CSV named as an image there."""
    _one_line_usage(runner.invoke(app, ["explain", str(photos / "a.png"), "--out", str(photos)]), "--out")
    _one_line_usage(runner.invoke(app, ["classify", "-f", str(photos / "a.png"), "-o", str(tmp_path / "p.png")]),
                    "--output")
    assert sorted(p.name for p in photos.iterdir()) == ["a.png"] and not (tmp_path / "p.png").exists()


def test_a_missing_classify_folder_is_one_failed_input_not_also_a_crop(photos, tmp_path):
    """Stop 64's empty-folder line had left a missing -d falling through to the crop list: said twice ("not a
    folder", then "no such file") and counted as a crop that failed."""
    missing = tmp_path / "nope"
    res = runner.invoke(app, ["classify", "-f", str(photos / "a.png"), "-d", str(missing), "-o", str(tmp_path / "p.csv")])
    assert res.exit_code == 1 and res.output.count(str(missing)) == 1 and "1/1 crops classified" in res.output, \
        res.output


def test_train_init_by_a_bundled_name_beside_a_folder_of_that_name(wbc_folder, tmp_path, monkeypatch):
    """A docs audit (stop 66): README's `segment --task wbc photos/ --out wbc` made the next line's
    `train wbc --init wbc` take that output folder for the model ("folder holds no model.safetensors", exit 1),
    where `--model wbc` meant the bundled model."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wbc").mkdir()
    (tmp_path / "wbc" / "a.png").write_bytes(b"not a model")
    res = runner.invoke(app, ["train", "wbc", "--init", "wbc", "--data", str(wbc_folder), "--out", "run", "--epochs", "1",
                              "--batch-size", "2", "--crop", "64", "--samples-per-epoch", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "state.json").read_text())["config"]["init"] == "wbc"


def test_an_arch_other_than_the_init_models_is_refused_not_dropped():
    """A wbc fine-tune walkthrough (stop 68): `train wbc --arch smp-unet --init wbc` trained the start's unet-dropout
    without a word; the same architecture named, or none, is the fine-tune as before."""
    from hemaseg.errors import HemasegUsageError
    from hemaseg.tasks import get_task

    task = get_task("wbc")
    with pytest.raises(HemasegUsageError, match="smp-unet: init wbc is a unet-dropout"):
        task.train_config(arch="smp-unet", init="wbc", data=["x"])
    assert task.train_config(arch="unet-dropout", init="wbc", data=["x"]).arch == "unet-dropout"
    assert task.train_config(init="wbc", data=["x"]).arch == "unet-dropout"
