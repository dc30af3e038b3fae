import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hemaseg.cli import app
from hemaseg.models.registry import SAMPLE_PHOTO, WEIGHTS_DIR
from hemaseg.version import __version__

runner = CliRunner()


def _images(tmp_path, n=3, size=64):
    from helpers import toy_wbc

    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    d.mkdir()
    for i in range(n):
        Image.fromarray(toy_wbc(rng, size)[0]).save(d / f"img{i}.png")
    return d


def test_segment_writes_contracted_files(tmp_path, tiny_model_path):
    src = _images(tmp_path)
    out = tmp_path / "out"
    res = runner.invoke(app, ["segment", "--task", "wbc", str(src), "--out", str(out), "--model",
                              str(tiny_model_path), "--overlay", "--cell-diameter", "24"])
    assert res.exit_code == 0, res.output
    for i in range(3):
        label = np.array(Image.open(out / f"img{i}.png"))
        assert label.dtype == np.uint8 and label.shape == (64, 64)
        assert set(np.unique(label)) <= {0, 128, 255}
        meta = json.loads((out / f"img{i}.json").read_text())
        assert meta["width"] == 64 and meta["height"] == 64 and meta["count"] == len(meta["masks"])
        overlay = np.array(Image.open(out / f"img{i}_overlay.png"))
        assert overlay.shape == (64, 64, 3)
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_batch_with_corrupt_file_finishes_and_exits_1(tmp_path, tiny_model_path):
    src = _images(tmp_path)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    res = runner.invoke(app, ["segment", str(src), "--out", str(out), "--model", str(tiny_model_path),
                              "--cell-diameter", "24"])
    assert res.exit_code == 1
    bad_lines = [ln for ln in res.output.splitlines() if "broken.png" in ln]
    assert len(bad_lines) == 1 and "corrupt" in bad_lines[0]
    assert sorted(p.name for p in out.glob("*.png")) == ["img0.png", "img1.png", "img2.png"]


def test_a_loop_of_links_is_one_failed_input_and_costs_no_other(tmp_path, tiny_model_path):
    """Stop 68 (stop 67's list): a link leading back to itself given by name ended the whole command with exit 1 and
    nothing written (``Path.resolve`` raised); in a folder it was left out without a word."""
    src = _images(tmp_path, n=2)
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (src / "inner.png").symlink_to(src / "inner.png")
    for args in (["segment", "--task", "wbc", "--model", str(tiny_model_path), "--cell-diameter", "24"],
                 ["crop"]):
        out = tmp_path / f"out_{args[0]}"
        res = runner.invoke(app, [*args, str(src / "img0.png"), str(tmp_path / "loop.png"), str(src), "--out", str(out)])
        assert res.exit_code == 1, res.output
        for name in ("loop.png", "inner.png"):
            assert [ln for ln in res.output.splitlines() if ln.endswith(f"{name}: a loop of links, no file")], res.output
        if args[0] == "segment":
            assert sorted(p.name for p in out.glob("*.png")) == ["img0.png", "img1.png"]


def test_segment_never_writes_over_the_masks_paired_with_its_input_images(tmp_path, tiny_model_path):
    """A wbc fine-tune walkthrough (stop 68): `segment data/images --out data/masks` replaced a lab's ground-truth
    masks with predictions, exit 0 (the next `train` learnt from them)."""
    src = _images(tmp_path, n=2)
    data = tmp_path / "data"
    data.mkdir()
    shutil.move(str(src), data / "images")
    (data / "masks").mkdir()
    for f in (data / "images").iterdir():
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(data / "masks" / f.name)
    before = {f.name: f.read_bytes() for f in (data / "masks").iterdir()}
    for given in ([str(data / "images")], [str(data / "images" / "img0.png")]):
        res = runner.invoke(app, ["segment", "--task", "wbc", *given, "--out", str(data / "masks"), "--model",
                                  str(tiny_model_path), "--cell-diameter", "24"])
        assert res.exit_code == 2 and "holds the masks paired with the images" in res.output, res.output
    assert {f.name: f.read_bytes() for f in (data / "masks").iterdir()} == before
    res = runner.invoke(app, ["segment", "--task", "wbc", str(data / "images"), "--out", str(data / "predicted"),
                              "--model", str(tiny_model_path), "--cell-diameter", "24"])
    assert res.exit_code == 0, res.output


def test_bad_usage_exits_2(tmp_path):
    assert runner.invoke(app, ["segment", "x.png", "--task", "nope"]).exit_code == 2
    assert runner.invoke(app, ["segment", "x.png", "--device", "tpu"]).exit_code == 2
    assert runner.invoke(app, ["segment"]).exit_code == 2


@pytest.mark.parametrize("args, names", [(["analyze", "--pixel-size", "abc"], "--pixel-size"),
                                         (["analyze", "--no-such-option"], "--no-such-option"),
                                         (["segment"], "images"),
                                         # an option's value missing at the end named `hemaseg` (stop 65)
                                         (["export", "wbc", "--out", "x.onnx", "--format"], "--format"),
                                         (["serve", "--port"], "--port")])
def test_errors_the_command_line_library_finds_are_one_line_naming_the_option(args, names):
    res = runner.invoke(app, args, prog_name="hemaseg")
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1, res.output  # no usage block, no boxed panel
    assert lines[0].startswith(f"hemaseg {args[0]}: ") and names in lines[0]


def test_evaluate_json_and_grid(tmp_path, wbc_folder, tiny_model_path):
    js, grid = tmp_path / "e.json", tmp_path / "worst.png"
    res = runner.invoke(app, ["evaluate", "wbc", "--data", str(wbc_folder), "--model", str(tiny_model_path),
                              "--json", str(js), "--grid", str(grid), "--cell-diameter", "24"])
    assert res.exit_code == 0, res.output
    d = json.loads(js.read_text())
    assert d["n_images"] == 10 and len(d["per_image"]) == 10
    assert 0.0 <= d["mean"]["dice_cell"] <= 1.0
    assert "MEAN (10 images)" in res.output
    assert Image.open(grid).size[0] > 100
    run = d["run"]  # what was scored, by what: the file alone says it
    assert run["task"] == "wbc" and run["data"] == [str(wbc_folder)] and run["model"] == str(tiny_model_path)
    assert run["cell_diameter"] == 24 and run["split"] is None and run["method"] is None and run["post"] == []
    assert run["hemaseg"] == __version__ and "model_versions" in run and run["date"][:2] == "20"


def test_train_cli_and_resume(tmp_path, wbc_folder):
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "wbc", "--data", str(wbc_folder), "--out", str(run), "--epochs", "1",
                              "--crop", "32", "--batch-size", "4", "--samples-per-epoch", "4"])
    assert res.exit_code == 0, res.output
    assert (run / "model.safetensors").exists() and (run / "curves.png").exists()
    res = runner.invoke(app, ["train", "wbc", "--resume", str(run)])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "state.json").read_text())["epoch"] == 1
    before = (run / "state.json").read_bytes()
    for task in ("nuclei", "wbc-type", "cells"):  # another task's run: a usage error naming --resume (was exit 1)
        res = runner.invoke(app, ["train", task, "--resume", str(run)])
        assert res.exit_code == 2 and "--resume" in res.output and f"a wbc run, not a {task} run" in res.output, \
            (task, res.output)
    assert (run / "state.json").read_bytes() == before
    import torch  # a smear10 walkthrough (stop 67): "going on with N torch thread(s)" was said before the refusal

    (run / "state.json").write_text(json.dumps({**json.loads(before), "threads": torch.get_num_threads() + 1}))
    res = runner.invoke(app, ["train", "nuclei", "--resume", str(run)])
    assert res.exit_code == 2 and "thread" not in res.output, res.output


def test_a_resume_goes_on_with_the_threads_the_run_began_on(tmp_path, wbc_folder):
    """A kill-and-resume check (stop 65): --threads was not kept, so a run begun with --threads 1 and resumed
    without it went on with torch's default and ended 1e-7 away from an unbroken run (52 of 67 tensors)."""
    import torch

    from hemaseg.engine.train import recover

    threads = torch.get_num_threads()
    run = tmp_path / "run"
    try:
        res = runner.invoke(app, ["train", "wbc", "--data", str(wbc_folder), "--out", str(run), "--epochs", "1",
                                  "--crop", "32", "--batch-size", "4", "--samples-per-epoch", "4", "--threads", "1",
                                  "--device", "auto"])
        assert res.exit_code == 0 and json.loads((run / "state.json").read_text())["threads"] == 1, res.output
        torch.set_num_threads(2)
        res = runner.invoke(app, ["train", "wbc", "--resume", str(run)])
        assert res.exit_code == 0 and torch.get_num_threads() == 1, res.output
        res = runner.invoke(app, ["train", "wbc", "--resume", str(run), "--threads", "2"])
        assert res.exit_code == 0 and "the run began on 1" in res.output, res.output
    finally:
        torch.set_num_threads(threads)
    # a killed cache write's temp file in a sub-folder of the run (wbc-type's crops/) goes with the resume
    (run / "crops").mkdir()
    (run / "crops" / ".k.npz.xtz78pq4.tmp.npz").write_bytes(b"")
    recover(run)
    assert not list((run / "crops").iterdir())


def test_bundled_model_on_sample_photo(tmp_path):
    """The shipped model finds the one neutrophil of the bundled BCCD photo."""
    if not (WEIGHTS_DIR / "wbc.safetensors").exists():
        import pytest

        pytest.fail("bundled wbc model missing")
    from pathlib import Path

    import hemaseg

    sample = Path(hemaseg.__file__).parent / "samples" / "BloodImage_00000.jpg"
    out = tmp_path / "out"
    res = runner.invoke(app, ["segment", str(sample), "--out", str(out)])
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "BloodImage_00000.json").read_text())
    assert meta["count"] == 1
    box = meta["masks"][0]["bounding_box"]
    # VOC box of the WBC in BCCD: x 260-491, y 177-376.
    assert abs((box["x1"] + box["x2"]) / 2 - 375) < 40 and abs((box["y1"] + box["y2"]) / 2 - 276) < 40
    label = np.array(Image.open(out / "BloodImage_00000.png"))
    assert label.shape == (480, 640) and (label == 255).sum() > 2000


def test_segment_post_processing_parameters_by_name(tmp_path):
    """--post NAME=VALUE sets the task's post-processing parameters (Cellpose-style named knobs): it
    reaches the post-processing, and a wrong name, kind or sign is one usage error naming it."""
    from helpers import toy_wbc

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(toy_wbc(np.random.default_rng(0), 120, radius=30)[0]).save(src / "a.png")

    def count(*post):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        res = runner.invoke(app, ["segment", str(src), "--out", str(out), "--cell-diameter", "60",
                                  *[a for p in post for a in ("--post", p)]])
        assert res.exit_code == 0, res.output
        return json.loads((out / "a.json").read_text())["count"]

    assert count() == 1
    assert count("min_cell_fraction=4") == 0  # the smallest cell kept is now 4 cells' area
    assert count("red_cytoplasm=false", "first_pass_factors=[0.5, 1]") == 1
    assert count("first_pass_factors=0.5,1") == 1  # the form its error message shows (stop 63)
    assert count("red_cells=none") == 1
    # A segment audit: block_size=0 and open_radius=100 hung, cell_open=1e6 asked for 10 PiB, scale_deadband=0
    # divided by zero, NaN passed, size_model=wbc-type failed on every image: each is one line before any work.
    for bad, says in [("nope=1", "red_ring"), ("red_cytoplasm=0.5", "takes a bool"), ("red_ring=-1", "from 0.0"),
                      ("red_ring", "NAME=VALUE"), ("red_cells=no-such-model", "no such model"),
                      ("block_size=0", "at least 64"), ("open_radius=100", "from 0.0 to 0.5"),
                      ("cell_open=1e6", "from 0.0 to 0.5"), ("scale_deadband=0", "from 1.0"),
                      ("red_ring=NaN", "finite"), ("red_ring=Infinity", "finite"),
                      ("first_pass_factors=[]", "at least 1 number"), ("first_pass_factors=[0]", "numbers from"),
                      ("first_pass_factors=a,b", "numbers separated by commas (default 0.5,1.0,2.0)"),
                      ("size_model=wbc-type", "not a cells model"), ("red_cells=nuclei", "not a cells model"),
                      # a post-processing audit (stop 65): no field of WbcParams (a traceback), no margin (garbage)
                      ("RANGES={}", "NAME one of"), ("__doc__=x", "NAME one of"),
                      ("block_margin=0", "from 0.6")]:
        res = runner.invoke(app, ["segment", str(src), "--out", str(tmp_path / "x"), "--post", bad])
        assert res.exit_code == 2 and says in res.output, (bad, res.output)
    res = runner.invoke(app, ["segment", str(src), "--out", str(tmp_path / "y"), "--method", "hsv", "--post", "red_ring=0.2"])
    assert res.exit_code == 2 and "--post" in res.output


def test_a_cards_postprocess_is_checked_and_read_as_post_reads_it(tmp_path):
    """A post-processing audit (stop 65): a card's "postprocess" was used unchecked: an int for a float knob made
    `--post max_reach=1.2` "takes a int", a negative value ran silently, an unknown name failed on every image (with
    --post, a traceback). Each is now read as --post reads it, or one line naming --model, exit 2."""
    import shutil

    from helpers import toy_wbc
    from hemaseg.models.registry import WEIGHTS_DIR

    src = tmp_path / "a.png"
    Image.fromarray(toy_wbc(np.random.default_rng(0), 120, radius=30)[0]).save(src)
    card = json.loads((WEIGHTS_DIR / "wbc.json").read_text())
    for name, post in (("int", {"max_reach": 1}), ("bogus", {"bogus": 1}), ("neg", {"red_ring": -5})):
        (tmp_path / name).mkdir()
        shutil.copy(WEIGHTS_DIR / "wbc.safetensors", tmp_path / name / "wbc.safetensors")
        (tmp_path / name / "wbc.json").write_text(json.dumps({**card, "postprocess": post}))
    res = runner.invoke(app, ["segment", str(src), "--out", str(tmp_path / "o1"), "--cell-diameter", "60",
                              "--model", str(tmp_path / "int" / "wbc.safetensors"), "--post", "max_reach=1.2"])
    assert res.exit_code == 0, res.output
    for name, says in (("bogus", "names no post-processing parameter 'bogus'"), ("neg", "red_ring takes a number")):
        for post in ([], ["--post", "red_ring=0.2"]):
            res = runner.invoke(app, ["segment", str(src), "--out", str(tmp_path / f"o-{name}"), "--model",
                                      str(tmp_path / name / "wbc.safetensors"), *post])
            lines = res.output.strip().splitlines()
            assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("--model") and says in lines[0], \
                res.output
    # knobs whose default is a dict of numbers or None: checked too (each image failed on them, or NaN gave garbage)
    from hemaseg.engine.task import param_value
    from hemaseg.tasks.cells.infer import CellsParams
    from hemaseg.tasks.smear10.infer import SmearParams

    assert param_value(CellsParams(), "relative_size", '{"rbc": 1, "wbc": 1.7, "platelet": 0.3}')["wbc"] == 1.7
    for bad in ('{"wbc": 2.0}', '{"rbc": NaN, "wbc": 1.6, "platelet": 0.35}', '{"rbc": -1, "wbc": 1.6, "platelet": 1}'):
        with pytest.raises(ValueError, match="relative_size"):
            param_value(CellsParams(), "relative_size", bad)
    assert param_value(SmearParams(), "clump_ratio", "2.5") == 2.5 and param_value(SmearParams(), "clump_ratio",
                                                                                    "null") is None
    with pytest.raises(ValueError, match="clump_ratio takes a number, or null"):
        param_value(SmearParams(), "clump_ratio", "abc")
    # a None-default dict knob (the platelet re-scorer): a re-scorer this version can run, {} or null (a review:
    # 1, "abc", [1, 2] or {"a": 1} were taken and failed on every image)
    card = json.loads((WEIGHTS_DIR / "cells.json").read_text())
    good = card["postprocess"]["platelet_rescore"]
    assert param_value(CellsParams(), "platelet_rescore", good) == good
    assert param_value(CellsParams(), "platelet_rescore", "null") is None
    assert param_value(CellsParams(), "platelet_rescore", {}) == {}
    for bad in ("1", "abc", "[1, 2]", '{"a": 1}', {**good, "coef": good["coef"][:-1]}, {**good, "scale": [0] * 12}):
        with pytest.raises(ValueError, match="platelet_rescore takes"):
            param_value(CellsParams(), "platelet_rescore", bad)


def test_python_dash_m_runs_the_same_command_line():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "hemaseg", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "Usage: hemaseg" in res.stdout and "segment" in res.stdout
    res = subprocess.run([sys.executable, "-m", "hemaseg", "segment", "--task", "nope", "x.png"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "nope" in res.stdout + res.stderr


def test_evaluate_never_writes_over_its_data_or_one_output_over_the_other(tmp_path, wbc_folder):
    """--grid onto a mask, --json onto an image, --json and --grid one file: refused before any work (the mask was
    replaced by a picture grid, the image by JSON, the grid lost); a model of another task is refused too (it scored
    0.0 everywhere, or failed deep inside)."""
    mask, image = wbc_folder / "000.png", wbc_folder / "001.bmp"
    before = mask.read_bytes(), image.read_bytes()
    for args, says in ((["--grid", str(mask)], "--grid"), (["--json", str(image)], "--json"),
                       (["--json", str(tmp_path / "x.out"), "--grid", str(tmp_path / "x.out")], "also --json"),
                       (["--model", "nuclei"], "is a nuclei model, not a wbc model"),
                       (["--model", "smear10"], "is a smear10 model, not a wbc model")):
        res = runner.invoke(app, ["evaluate", "wbc", "--data", str(wbc_folder), *args])
        assert res.exit_code == 2 and says in res.output, (args, res.output)
    assert (mask.read_bytes(), image.read_bytes()) == before and not (tmp_path / "x.out").exists()


def test_evaluate_split_that_is_no_split_json_is_a_usage_error(tmp_path, wbc_folder):
    """--split naming a file that is not JSON, or JSON but no object: one line naming --split, exit 2, as a missing
    file is (it was exit 1, as if an image had failed)."""
    for name, text, says in (("bad.json", "{val", "cannot read it as a split JSON"), ("list.json", "[1]", "object"),
                             ("gone.json", None, "no such file")):
        split = tmp_path / name
        if text is not None:
            split.write_text(text)
        res = runner.invoke(app, ["evaluate", "wbc", "--data", str(wbc_folder), "--split", str(split)])
        assert res.exit_code == 2 and "--split" in res.output and says in res.output, (name, res.output)


def test_evaluate_twice_in_its_data_folder(wbc_folder, tiny_model_path, monkeypatch):
    """The first run's worst_cases.png in the data folder was taken for data: the second run was refused (exit 2).
    Only the images and masks the task reads there are inputs."""
    monkeypatch.chdir(wbc_folder)
    for _ in range(2):
        res = runner.invoke(app, ["evaluate", "wbc", "--data", ".", "--model", str(tiny_model_path)])
        assert res.exit_code == 0 and (wbc_folder / "worst_cases.png").exists(), res.output
    res = runner.invoke(app, ["evaluate", "wbc", "--data", ".", "--model", str(tiny_model_path), "--grid", "003.png"])
    assert res.exit_code == 2 and "003.png is a file of the data" in res.output, res.output


def test_classify_refuses_a_segmentation_model_and_crop_an_input_where_its_crops_go(tmp_path):
    from helpers import toy_wbc

    img, _ = toy_wbc(np.random.default_rng(0), 96)
    Image.fromarray(img).save(tmp_path / "cell.png")
    for model in ("wbc", "smear10"):  # answered NO_WBC for every crop, or an IndexError
        res = runner.invoke(app, ["classify", "-f", str(tmp_path / "cell.png"), "--model", model,
                                  "-o", str(tmp_path / "p.csv")])
        assert res.exit_code == 2 and f"is a {model} model, not a wbc-type model" in res.output
    assert not (tmp_path / "p.csv").exists()
    (tmp_path / "c" / "unknown").mkdir(parents=True)
    later = tmp_path / "c" / "unknown" / "cell_1.png"
    Image.fromarray(img).save(later)
    before = later.read_bytes()
    res = runner.invoke(app, ["crop", str(tmp_path / "cell.png"), str(later), "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "where the crops go" in res.output and later.read_bytes() == before
    # a run stopped before its crops.csv (or the file deleted): its crops are still there, and refused the same way
    res = runner.invoke(app, ["crop", str(tmp_path / "cell.png"), "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "holds the crops of an earlier run" in res.output and not (tmp_path / "c" / "crops.csv").exists()


def test_evaluate_scores_the_good_pairs_beside_a_bad_one_and_says_which(tmp_path, wbc_folder):
    """A corrupt mask, a mask of another size or a folder that is not there: one line each, the other pairs
    scored and written, exit 1 (nothing was scored before); no pair at all: exit 1, no table."""
    (wbc_folder / "003.png").write_bytes(b"junk")
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(wbc_folder / "004.png")
    res = runner.invoke(app, ["evaluate", "wbc", "--data", str(wbc_folder), "--data", str(tmp_path / "nosuch"),
                              "--json", str(tmp_path / "s.json"), "--grid", str(tmp_path / "g.png")])
    assert res.exit_code == 1, res.output
    assert "003.png: not an image" in res.output and "does not match" in res.output and "nosuch: not a folder" in res.output
    out = json.loads((tmp_path / "s.json").read_text())
    assert out["n_images"] == 8 and len(out["failed"]) == 3 and (tmp_path / "g.png").exists()
    res = runner.invoke(app, ["evaluate", "wbc", "--data", str(tmp_path / "nosuch")])
    assert res.exit_code == 1 and "nosuch" in res.output and "MEAN" not in res.output


def test_an_earlier_grid_at_the_root_of_a_smear10_wbctype_or_voc_folder_is_no_input(tmp_path):
    """For the tasks with readers of their own (smear10, wbc-type, cells) any file under --data was taken for
    data: a second `evaluate` run from inside the data folder refused its own earlier worst_cases.png. Now only
    what the task scores, its label files and the images beside them are refused."""
    import pytest

    from hemaseg.cli import _not_an_input
    from hemaseg.errors import HemasegUsageError
    from hemaseg.tasks import get_task

    def img(path, size=(16, 16, 3)):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full(size, 200, np.uint8)).save(path)

    smear, crops, voc = tmp_path / "smear", tmp_path / "crops", tmp_path / "voc"
    img(smear / "images" / "a.png")
    img(smear / "segments" / "a.png")
    img(crops / "neutrophil" / "n1.png")
    img(crops / "neutrophil" / "stray.png")  # any image in a type folder is a crop
    img(voc / "JPEGImages" / "p.jpg")
    (voc / "Annotations").mkdir()
    (voc / "Annotations" / "p.xml").write_text(
        "<annotation><size><width>16</width><height>16</height></size><object><name>RBC</name><bndbox>"
        "<xmin>1</xmin><ymin>1</ymin><xmax>8</xmax><ymax>8</ymax></bndbox></object></annotation>")
    for task, root, inputs in (("smear10", smear, ["images/a.png", "segments/a.png"]),
                               ("wbc-type", crops, ["neutrophil/n1.png", "neutrophil/stray.png"]),
                               ("cells", voc, ["JPEGImages/p.jpg", "Annotations/p.xml"])):
        spec = get_task(task)
        img(root / "worst_cases.png")
        _not_an_input(root / "worst_cases.png", "--grid", [str(root)], spec)  # an earlier run's grid: no input
        for rel in inputs:
            with pytest.raises(HemasegUsageError, match="is a file of the data"):
                _not_an_input(root / rel, "--grid", [str(root)], spec)
    # a second map of a smear (classes/ beside segments/), a YOLO photo whose label cannot be read, a YOLO
    # class list, a wbc-seg image without its mask, TXL-PBC's data.yaml for the wbc task: user data all
    img(smear / "classes" / "a.png", (16, 16))
    yolo = tmp_path / "yolo"
    img(yolo / "images" / "val" / "b.png")
    (yolo / "labels" / "val").mkdir(parents=True)
    (yolo / "labels" / "val" / "b.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    (yolo / "obj.names").write_text("wbc\nrbc\nplatelet\n")
    (yolo / "data.yaml").write_text("names: [wbc, rbc, platelet]\n")
    seg = tmp_path / "seg"
    img(seg / "001.bmp")
    img(seg / "001.png", (16, 16))
    img(seg / "002.bmp")
    (seg / "data.yaml").write_text("names: [wbc]\n")
    for task, root, rel in (("smear10", smear, "segments/a.png"), ("smear10", smear, "classes/a.png"),
                            ("cells", yolo, "images/val/b.png"), ("cells", yolo, "obj.names"),
                            ("wbc", seg, "002.bmp"), ("wbc", seg, "data.yaml")):
        with pytest.raises(HemasegUsageError, match="is a file of the data"):
            _not_an_input(root / rel, "--json", [str(root)], get_task(task))


def test_crop_and_synth_refuse_what_they_took_without_a_word(tmp_path, monkeypatch):
    """`crop --method hsv --device banana` ran; `synth --seed -5` was a numpy traceback; a second `synth` into the
    same folder replaced the first run's smears with others (another size) and kept the rest: a mixed set."""
    from helpers import toy_wbc

    img, _ = toy_wbc(np.random.default_rng(0), 96)
    Image.fromarray(img).save(tmp_path / "cell.png")
    res = runner.invoke(app, ["crop", str(tmp_path / "cell.png"), "--out", str(tmp_path / "c"), "--device", "banana"])
    assert res.exit_code == 2 and "--device" in res.output and not (tmp_path / "c").exists()
    res = runner.invoke(app, ["synth", "--n", "1", "--size", "64", "--out", str(tmp_path / "s"), "--seed", "-5"])
    assert res.exit_code == 2 and "--seed" in res.output and not (tmp_path / "s").exists()
    res = runner.invoke(app, ["synth", "--n", "2", "--size", "64", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    before = (tmp_path / "s" / "images" / "test_00000.png").read_bytes()
    res = runner.invoke(app, ["synth", "--n", "1", "--size", "96", "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "--first 2" in res.output, res.output
    assert (tmp_path / "s" / "images" / "test_00000.png").read_bytes() == before


def test_list_images_takes_a_file_named_like_a_pattern_and_each_file_once(tmp_path, monkeypatch):
    from hemaseg.io.images import list_images

    (tmp_path / "a").mkdir()
    for name in ("img[1].jpg", "x.jpg"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a" / name)
    monkeypatch.chdir(tmp_path)
    got = list_images(["a/img[1].jpg", "a/x.jpg", "a/../a/x.jpg", "./a/x.jpg"])
    assert [p.name for p in got] == ["img[1].jpg", "x.jpg"]


def test_a_glob_lists_its_images_and_one_matching_none_is_named(tmp_path, monkeypatch):
    """segment's glob listed a notes.txt it matched as a failed image (exit 1) where classify skipped it, and a
    glob matching nothing vanished unsaid; both commands now list inputs with io.images.expand_inputs (stop 60)."""
    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((64, 64, 3), 230, np.uint8)).save(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "notes.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["segment", "in/*", "--out", "o1", "--method", "hsv"])
    assert res.exit_code == 0 and "notes.txt" not in res.output, res.output
    res = runner.invoke(app, ["segment", "in/*.bmp", "in/a.png", "--out", "o2", "--method", "hsv"])
    assert res.exit_code == 1 and "in/*.bmp: no image matches it" in res.output, res.output
    assert (tmp_path / "o2" / "a.png").exists()  # the other input still segmented


def test_a_train_refused_before_its_first_checkpoint_leaves_nothing_to_resume(tmp_path, wbc_folder):
    """`train wbc --data /nonexist --out r` failed (exit 1) but left r/state.json, so the mended command was told
    'r already holds a training run; continue it with --resume'; --crop 100 (not a multiple of the U-Net's stride)
    was a traceback after training had started."""
    out = tmp_path / "r"
    res = runner.invoke(app, ["train", "wbc", "--data", str(tmp_path / "nonexist"), "--out", str(out)])
    assert res.exit_code == 1 and "not a folder" in res.output and not out.exists(), res.output
    res = runner.invoke(app, ["train", "wbc", "--data", str(wbc_folder), "--out", str(out), "--crop", "100",
                              "--epochs", "1"])
    assert res.exit_code == 2 and "--crop" in res.output and "stride" in res.output, res.output
    assert not out.exists()
    out.mkdir()  # an empty folder given as --out stays, and holds nothing after the refusal
    res = runner.invoke(app, ["train", "smear10", "--data", str(tmp_path / "nonexist"), "--out", str(out)])
    assert res.exit_code == 1 and "not a folder" in res.output and list(out.iterdir()) == [], res.output


def test_train_refuses_an_architecture_its_task_does_not_train_and_inputs_inside_out(tmp_path, wbc_folder):
    """A training-loop review (stop 60): --arch wbc-ensemble / maskrcnn for wbc was a TypeError or a failure on the
    first batch (leaving state.json behind), and --overwrite deleted a --split lying in --out before reading it."""
    out = tmp_path / "r"
    for arch in ("wbc-ensemble", "maskrcnn", "nosuch"):
        res = runner.invoke(app, ["train", "wbc", "--data", str(wbc_folder), "--out", str(out), "--arch", arch])
        assert res.exit_code == 2 and "--arch" in res.output and "unet-dropout" in res.output, res.output
        assert not out.exists()
    out.mkdir()
    split = out / "split.json"
    split.write_text('{"train": [], "val": []}')
    res = runner.invoke(app, ["train", "wbc", "--data", str(wbc_folder), "--out", str(out), "--split", str(split),
                              "--overwrite"])
    assert res.exit_code == 2 and "--split" in res.output and "lies in --out" in res.output, res.output
    assert split.exists()
    # ... but data of one's own inside --out, under a name the run does not write, is no clash (a review)
    own = tmp_path / "r2"
    shutil.copytree(wbc_folder, own / "mine")
    res = runner.invoke(app, ["train", "wbc", "--data", str(own / "mine"), "--out", str(own), "--crop", "100"])
    assert res.exit_code == 2 and "--crop" in res.output and "lies in --out" not in res.output, res.output
    # --out inside a --data folder: the next run on that folder read the run's files as data (a walkthrough, stop 69)
    res = runner.invoke(app, ["train", "wbc", "--data", str(own / "mine"), "--out", str(own / "mine" / "run")])
    assert res.exit_code == 2 and res.output.startswith("--out:") and "lies inside --data" in res.output, res.output
    assert not (own / "mine" / "run").exists()


def test_train_refuses_an_out_folder_holding_a_model_it_would_replace(tmp_path, wbc_folder):
    """A walkthrough (stop 63): `train --out mymodel`, a folder holding model.safetensors and model.json that
    --model takes, replaced both without a word (only a state, split or checkpoint counted as a run)."""
    from hemaseg.engine.train import prepare_run

    out = tmp_path / "mymodel"
    out.mkdir()
    (out / "model.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"weights")
    (out / "notes.txt").write_text("mine")
    res = runner.invoke(app, ["train", "wbc", "--data", str(wbc_folder), "--out", str(out), "--epochs", "1"])
    assert res.exit_code == 2 and "model.safetensors, model.json" in res.output and "--overwrite" in res.output
    assert (out / "model.safetensors").read_bytes() == b"weights"
    assert prepare_run(out, overwrite=True) == out  # --overwrite replaces them: the run's files go, the rest stays
    assert not (out / "model.json").exists() and (out / "notes.txt").read_text() == "mine"


def test_a_data_folder_given_twice_counts_once_and_one_inside_another_is_refused(tmp_path, wbc_folder, monkeypatch):
    """A walkthrough (stop 63): `--data ds --data ./ds` made evaluate score 24 of 12 images and train split 19/5
    with every validation image also trained on."""
    monkeypatch.chdir(wbc_folder.parent)
    name = wbc_folder.name
    res = runner.invoke(app, ["evaluate", "wbc", "--data", name, "--data", f"./{name}", "--method", "hsv",
                              "--grid", str(tmp_path / "g.png")])
    assert res.exit_code == 0 and "MEAN (10 images)" in res.output, res.output
    (wbc_folder / "sub").mkdir()
    res = runner.invoke(app, ["evaluate", "wbc", "--data", name, "--data", f"{name}/sub", "--method", "hsv"])
    assert res.exit_code == 2 and f"{name}/sub lies inside {name}" in res.output, res.output
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "wbc", "--data", name, "--data", f"{name}/sub", "--out", str(out)])
    assert res.exit_code == 2 and "lies inside" in res.output and not out.exists(), res.output


def test_evaluate_grid_replaces_only_its_own_picture_and_is_a_png(tmp_path, wbc_folder):
    """A walkthrough (stop 63): `evaluate --grid photo_keep.png` replaced a photo, and `--grid x.jpg` wrote PNG
    bytes under a JPEG name."""
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(photo)
    base = ["evaluate", "wbc", "--data", str(wbc_folder), "--method", "hsv"]
    res = runner.invoke(app, base + ["--grid", str(photo)])
    assert res.exit_code == 2 and "no picture hemaseg wrote" in res.output, res.output
    assert Image.open(photo).size == (8, 8)
    res = runner.invoke(app, base + ["--grid", str(tmp_path / "g.jpg")])
    assert res.exit_code == 2 and "ending in .png" in res.output and not (tmp_path / "g.jpg").exists(), res.output
    grid = tmp_path / "g.png"
    for _ in range(2):  # the second run replaces the first run's picture
        res = runner.invoke(app, base + ["--grid", str(grid)])
        assert res.exit_code == 0, res.output
    assert Image.open(grid).info.get("Software") == "hemaseg evaluate"


def test_batchnorm_recalibration_takes_batches_with_weights():
    """It unpacked (image, target) only: a BatchNorm network (--arch smp-unet) trained with per-pixel weights
    (nuclei's contact weights, smear10's and cells' class balance) failed after its first epoch."""
    import torch

    from hemaseg.engine.train import recalibrate_batchnorm

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    x = torch.randn(4, 3, 8, 8) * 3 + 2
    recalibrate_batchnorm(model, [(x, torch.zeros(4), torch.ones(4))])
    assert torch.allclose(model[1].running_mean, model[0](x).mean((0, 2, 3)), atol=1e-4)


def test_crop_writes_apart_from_its_photos_and_names_a_grey_one(tmp_path, caplog):
    """A walkthrough: `crop in/a.jpg --out in` wrote crops.csv and unknown/ among the photos (exit 0); on a grey
    photo it said, naming no photo, to try a --method crop does not have."""
    from helpers import toy_wbc

    img, _ = toy_wbc(np.random.default_rng(0), 96)
    (tmp_path / "in").mkdir()
    Image.fromarray(img).save(tmp_path / "in" / "cell.png")
    res = runner.invoke(app, ["crop", str(tmp_path / "in" / "cell.png"), "--out", str(tmp_path / "in")])
    assert res.exit_code == 2 and res.output.startswith("--out") and [p.name for p in (tmp_path / "in").iterdir()] == ["cell.png"]
    Image.fromarray(img.mean(2).astype(np.uint8)).save(tmp_path / "grey.png")
    res = runner.invoke(app, ["crop", str(tmp_path / "grey.png"), "--out", str(tmp_path / "c")])
    said = caplog.text + res.output
    assert res.exit_code == 0 and f"{tmp_path / 'grey.png'}: the hsv method needs a colour photo" in said
    assert said.count(f"{tmp_path / 'grey.png'}: the hsv") == 1 and "use the model" in said, said
    # the summary names the photos in which no WBC was found (stop 66's Left list: it gave a count of crops alone)
    assert f"no WBC found in 1 image(s): {tmp_path / 'grey.png'}" in res.output, res.output
    Image.fromarray(img).save(tmp_path / "cell.png")
    res = runner.invoke(app, ["crop", str(tmp_path / "cell.png"), "--out", str(tmp_path / "c2")])
    assert res.exit_code == 0 and "no WBC found" not in res.output and (tmp_path / "c2" / "unknown").is_dir(), res.output


def test_crop_takes_the_model_and_the_cell_diameter_as_every_command_does(tmp_path):
    """A walkthrough: `crop` had no --model nor --cell-diameter (DESIGN.md: every command takes both), so a lab's
    own WBC model could not cut its crops."""
    from pathlib import Path

    import hemaseg

    sample = Path(hemaseg.__file__).parent / "samples" / "BloodImage_00000.jpg"
    res = runner.invoke(app, ["crop", str(sample), "--out", str(tmp_path / "m"), "--method", "model", "--model", "wbc",
                              "--cell-diameter", "150"])
    assert res.exit_code == 0 and len((tmp_path / "m" / "crops.csv").read_text().splitlines()) == 2, res.output
    for args, option in ((["--model", "wbc"], "--model"), (["--cell-diameter", "80"], "--cell-diameter"),
                         (["--method", "model", "--model", "nuclei"], "--model")):
        res = runner.invoke(app, ["crop", str(sample), "--out", str(tmp_path / "x"), *args])
        assert res.exit_code == 2 and res.output.startswith(option) and not (tmp_path / "x").exists(), (args, res.output)


def test_train_says_each_image_it_leaves_out_for_want_of_its_label(tmp_path, wbc_folder, caplog):
    """A walkthrough: `train wbc` on a folder with one mask missing dropped that image without a word, where
    `evaluate wbc` names it."""
    import json

    (wbc_folder / "003.png").unlink()
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "wbc", "--data", str(wbc_folder), "--out", str(run), "--epochs", "1",
                              "--crop", "32", "--batch-size", "4", "--samples-per-epoch", "4"])
    # trained on the rest, exit 1 as any batch with a bad file (a walkthrough, stop 68: exit 0)
    assert res.exit_code == 1 and "1 input(s) left out of training" in res.output, res.output
    assert "no validation images" not in res.output  # (validated: the line is for runs that were not)
    assert (run / "model.safetensors").is_file() and json.loads((run / "state.json").read_text())["finished"]
    assert any("003.bmp: left out of training: no mask" in r.getMessage() for r in caplog.records), caplog.text
    split = json.loads((run / "split.json").read_text())
    assert not any("003" in str(e) for part in ("train", "val") for e in split[part])


def test_train_names_every_unreadable_pair_and_trains_on_the_others(tmp_path, wbc_folder, caplog):
    """A nuclei walkthrough (stop 67): `train` stopped at the first unreadable pair and named it alone (fix, rerun, the
    next); `evaluate` named all. Each is named now and left out; a resumed run whose pair became unreadable stops."""
    import json

    (wbc_folder / "002.bmp").write_bytes(b"not an image")
    (wbc_folder / "005.png").write_bytes(b"\x89PNG broken")
    run = tmp_path / "run"
    small = ["--epochs", "1", "--crop", "32", "--batch-size", "4", "--samples-per-epoch", "4"]
    res = runner.invoke(app, ["train", "wbc", "--data", str(wbc_folder), "--out", str(run), *small])
    assert res.exit_code == 1 and "2 input(s) left out of training" in res.output, res.output
    said = [r.getMessage() for r in caplog.records if "left out of training" in r.getMessage()]
    assert len(said) == 2 and "002.bmp" in said[0] and "005.png" in said[1], said
    split = json.loads((run / "split.json").read_text())
    kept = [e for part in ("train", "val") for e in split[part]]
    assert len(kept) == 8 and not any("002" in str(e) or "005" in str(e) for e in kept), kept
    (wbc_folder / "007.png").write_bytes(b"broken too")
    (run / "state.json").write_text(json.dumps({**json.loads((run / "state.json").read_text()), "done": False}))
    res = runner.invoke(app, ["train", "wbc", "--resume", str(run)])
    assert res.exit_code == 1 and "restore them to resume" in res.output, res.output


def test_evaluate_says_when_a_run_is_scored_on_its_own_training_images(tmp_path, wbc_folder):
    """A nuclei walkthrough (stop 67): `evaluate nuclei --model RUN --data <its training folder>` scored the run on its
    own training images without a word (cells said so since stop 66); now every pair task does."""
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "wbc", "--data", str(wbc_folder), "--out", str(run), "--epochs", "1",
                              "--crop", "32", "--batch-size", "4", "--samples-per-epoch", "4"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["evaluate", "wbc", "--data", str(wbc_folder), "--model", str(run), "--grid",
                              str(tmp_path / "g.png")])
    assert res.exit_code == 0 and "8 of the 10 images scored are this model's own training images" in res.output, \
        res.output
    res = runner.invoke(app, ["evaluate", "wbc", "--data", str(wbc_folder), "--model", str(run), "--split",
                              str(run / "split.json"), "--grid", str(tmp_path / "g2.png")])
    assert res.exit_code == 0 and "own training" not in res.output, res.output


def test_resume_of_a_folder_holding_no_run_is_a_usage_error(tmp_path):
    """A walkthrough: `train smear10 --resume runs/nonexist` exited 1, as if an input had failed."""
    for target in (tmp_path / "nonexist", tmp_path):
        res = runner.invoke(app, ["train", "smear10", "--resume", str(target)])
        assert res.exit_code == 2 and res.output.startswith("--resume") and "nothing to resume" in res.output, \
            res.output


def test_post_help_lists_every_knob_with_the_models_value_and_what_it_does():
    """A post-processing audit (stop 65): the knobs' names were listed only by an error message, and the bundled
    cards' own thresholds (nuclei: seed_threshold 0.4 where the code says 0.5) were said nowhere."""
    import dataclasses

    from hemaseg.engine.task import param_docs
    from hemaseg.tasks import get_task

    for task in ("wbc", "nuclei", "cells", "smear10"):
        params = get_task(task).Params
        docs = param_docs(params)
        names = [f.name for f in dataclasses.fields(params) if f.init]
        assert set(docs) == set(names) and all(docs.values()), (task, set(names) - set(docs))  # each documented
        args = ["analyze", "--post", "help"] if task == "cells" else ["segment", "x.png", "--task", task, "--post",
                                                                       "help"]
        res = runner.invoke(app, args)
        lines = res.output.strip().splitlines()
        assert res.exit_code == 0 and len(lines) == len(names) + 1, res.output
        assert [ln.split(" = ")[0].strip() for ln in lines[1:]] == names
    res = runner.invoke(app, ["segment", "x.png", "--task", "nuclei", "--post", "help"])
    assert "seed_threshold = 0.4 [0.5]: interior probability" in res.output  # the card's value, the class default
    # the README's `--post help` with no image (a nuclei walkthrough, stop 67: "Missing argument 'images'", exit 2)
    res = runner.invoke(app, ["segment", "--task", "nuclei", "--post", "help"])
    assert res.exit_code == 0 and "seed_threshold = 0.4" in res.output, res.output
    res = runner.invoke(app, ["segment", "--task", "nuclei", "--post", "seed_threshold=0.3"])
    assert res.exit_code == 2 and "Missing argument 'images'" in res.output, res.output
    # a wrong value names the model's own value, not the class default (a walkthrough: "(default 0.5)" for 0.4)
    res = runner.invoke(app, ["segment", "x.png", "--task", "nuclei", "--post", "seed_threshold=abc"])
    assert res.exit_code == 2 and "takes a float (this model's: 0.4)" in res.output, res.output
    import hemaseg  # the Python API checks against the class's own values: it says "default", as it is (a review)

    with pytest.raises(Exception, match=r"takes a float \(default 0.5\)"):
        hemaseg.segment(np.zeros((64, 64, 3), np.uint8), model="nuclei", params={"seed_threshold": "abc"})


def test_a_folder_of_sub_folders_is_said_to_be_searched_no_deeper(tmp_path):
    """A walkthrough (stop 66): `analyze photos` with photos only in sub-folders said "no images found", exit 1,
    and not that sub-folders are not searched (a quoted glob reaches them)."""
    (tmp_path / "photos" / "day1").mkdir(parents=True)
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(tmp_path / "photos" / "day1" / "a.png")
    for cmd in (["analyze"], ["segment"]):
        res = runner.invoke(app, [*cmd, str(tmp_path / "photos"), "--out", str(tmp_path / "o")])
        assert res.exit_code == 1 and "sub-folders are not searched" in res.output and "**" in res.output, res.output


def test_images_in_sub_folders_beside_top_level_ones_are_counted_as_not_searched(tmp_path):
    """A walkthrough (stop 70): `analyze batch` with photos at its top and 25 more in batch/a, batch/b analysed the top
    ones and passed over the rest without a word (exit 0)."""
    (tmp_path / "photos" / "day1").mkdir(parents=True)
    for name in ("top.png", "day1/a.png", "day1/b.png"):
        Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(tmp_path / "photos" / name)
    for cmd in (["analyze"], ["segment"], ["crop"]):
        res = runner.invoke(app, [*cmd, str(tmp_path / "photos"), "--out", str(tmp_path / cmd[0])])
        assert res.exit_code == 0, res.output
        assert "2 image file(s) in its sub-folders (e.g. " in res.output and "are not searched" in res.output
    # this command's own --out inside the folder is not counted (a review: its masks and overlays were)
    for _ in range(2):
        res = runner.invoke(app, ["segment", str(tmp_path / "photos"), "--out", str(tmp_path / "photos" / "seg")])
        assert res.exit_code == 0 and "2 image file(s) in its sub-folders" in res.output, res.output
    res = runner.invoke(app, ["segment", str(tmp_path / "photos" / "day1"), "--out", str(tmp_path / "o2")])
    assert res.exit_code == 0 and "not searched" not in res.output, res.output
    (tmp_path / "p2" / "day1").mkdir(parents=True)  # its sub-folder given too (a folder, or a glob's files)
    for name in ("top.png", "day1/a.png"):
        Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(tmp_path / "p2" / name)
    for given in ([str(tmp_path / "p2" / "day1")], [str(tmp_path / "p2" / "day1" / "*.png")]):
        res = runner.invoke(app, ["segment", str(tmp_path / "p2"), *given, "--out", str(tmp_path / "o3"), "--overlay"])
        assert res.exit_code == 0 and "not searched" not in res.output, (given, res.output)


def test_evaluate_scores_the_post_processing_a_lab_runs(tmp_path, wbc_folder):
    """A wbc fine-tune walkthrough (stop 68): segment takes --post, evaluate did not, so a lab could not score the
    settings it runs. The same names and values; a bad one is exit 2 naming it."""
    base = ["evaluate", "wbc", "--data", str(wbc_folder), "--cell-diameter", "24"]  # the bundled model
    runs = {}
    for name, post in (("card", []), ("strict", ["--post", "min_cell_fraction=0.9"])):
        res = runner.invoke(app, [*base, *post, "--json", str(tmp_path / f"{name}.json"), "--grid",
                                  str(tmp_path / "g.png")])
        assert res.exit_code == 0, res.output
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert runs["strict"]["post"] == ["min_cell_fraction=0.9"] and "post" not in runs["card"]
    dice = {k: [r["dice_cell"] for r in v["per_image"]] for k, v in runs.items()}
    assert dice["strict"] != dice["card"], dice  # the setting reached the scoring
    res = runner.invoke(app, [*base, "--post", "no_such=1", "--grid", str(tmp_path / "g.png")])
    assert res.exit_code == 2 and "--post" in res.output, res.output


def test_crop_types_cuts_the_wbcs_a_results_file_lists_into_their_types_folders(tmp_path):
    """Stop 67's Left list: the types a lab corrects in `hemaseg serve` (its results.json) or CVAT did not become
    crops for `train wbc-type`. `crop --types FILE` cuts each WBC the file lists into OUT/<its type>/, unsure
    and untyped ones into unknown/; photos the file does not list and entries of photos not given are summed
    up; a photo of another size, a box outside its photo and a class of no known kind are named (a review)."""
    import os

    from hemaseg.io.annotations import box_vertices, write_results
    from hemaseg.io.datasets import find_labelled_cells

    rng = np.random.default_rng(0)
    photos = {}
    for rel in ("a/x.png", "b/y.png", "c/w.png"):
        p = tmp_path / "photos" / rel
        p.parent.mkdir(parents=True)
        photos[rel] = rng.integers(0, 255, (60, 80, 3), np.uint8)
        Image.fromarray(photos[rel]).save(p)

    def rec(name, box, **extra):
        x1, y1, x2, y2 = box
        return {"class_name": name, "bounding_box": {"x1": x1, "y1": y1, "x2": x2, "y2": y2},
                "vertices": box_vertices(*box), **extra}

    entries = [{"filename": "x.png", "height": 60, "width": 80,
                "masks": [rec("neutrophil", (10, 10, 30, 30), category="wbc", corrected_from="monocyte"),
                          rec("wbc", (40, 20, 60, 40), category="wbc", unsure=True),
                          rec("rbc", (0, 0, 10, 10), category="rbc")]},
               # a name recorded from another folder (analyze run elsewhere, the folder since renamed): its end
               {"filename": "../old_name/b/y.png", "height": 60, "width": 80,
                "masks": [rec("Lymphocytes", (50, 30, 70, 50)),  # a file's own spelling, no category
                          rec("monocyte", (90, 10, 99, 20))]},  # outside the photo: named, the rest cut
               {"filename": "z.png", "height": 60, "width": 80, "masks": [rec("monocyte", (1, 1, 9, 9))]}]
    write_results(tmp_path / "results.json", entries)
    out = tmp_path / "crops"
    res = runner.invoke(app, ["crop", str(tmp_path / "photos" / "*" / "*.png"), "--types",
                              str(tmp_path / "results.json"), "--out", str(out)])
    assert res.exit_code == 1 and "WBC 2 of" in res.output and "lies outside the photo; left out" in res.output
    assert f"entries of {tmp_path / 'results.json'} that match none of the photos given: 1: z.png" in res.output
    assert f"photos {tmp_path / 'results.json'} does not list: 1: {tmp_path / 'photos' / 'c' / 'w.png'}" in res.output
    assert "3 WBC crops from 2/2 photos" in res.output, res.output
    found = sorted((p.relative_to(out).as_posix(), c) for p, c in find_labelled_cells(out))
    assert found == [("lymphocyte/y_1.png", "lymphocyte"), ("neutrophil/x_1.png", "neutrophil"),
                     ("unknown/x_2.png", "unknown")], found
    # the box grown by --margin (0.15 of 20 px = 3 px a side), cut from the photo's own pixels
    assert np.array_equal(np.asarray(Image.open(out / "neutrophil" / "x_1.png")), photos["a/x.png"][7:33, 7:33])
    rows = (out / "crops.csv").read_text().splitlines()
    assert rows[1] == f"neutrophil/x_1.png,{tmp_path / 'photos' / 'a' / 'x.png'},7,7,33,33,neutrophil,results"
    assert len(rows) == 4  # every crop written is listed, none of a failed WBC
    # an --out holding crops of an earlier run in any type folder (here one this run would not write) is refused
    (tmp_path / "old" / "monocyte").mkdir(parents=True)
    Image.fromarray(photos["a/x.png"]).save(tmp_path / "old" / "monocyte" / "m.png")
    res = runner.invoke(app, ["crop", str(tmp_path / "photos" / "a"), "--types", str(tmp_path / "results.json"),
                              "--out", str(tmp_path / "old")])
    assert res.exit_code == 2 and "old/monocyte holds crops of an earlier run" in res.output, res.output
    # a link to a photo beside the photo itself is one photo; a subset of photos: the rest summed up, exit 0
    os.symlink(tmp_path / "photos" / "a", tmp_path / "photos" / "link")
    write_results(tmp_path / "r1.json", entries[:1])
    res = runner.invoke(app, ["crop", str(tmp_path / "photos" / "a"), str(tmp_path / "photos" / "link"), "--types",
                              str(tmp_path / "r1.json"), "--out", str(tmp_path / "c1")])
    assert res.exit_code == 0 and "2 WBC crops from 1/1 photos" in res.output and "does not list" not in res.output
    # a photo of another size than the file says: named, not cut in the wrong place
    entries[1]["height"] = 120
    write_results(tmp_path / "r2.json", entries[:2])
    res = runner.invoke(app, ["crop", str(tmp_path / "photos" / "b"), "--types", str(tmp_path / "r2.json"),
                              "--out", str(tmp_path / "c2")])
    assert res.exit_code == 1 and "y.png: is 80x60 px" in res.output and "says 80x120" in res.output, res.output
    assert not (tmp_path / "c2" / "lymphocyte").exists()
    # a class of no known kind (a blast, not counted as a WBC by its name) or a type the typer does not know:
    # refused before anything is written (a blast was dropped unsaid)
    for name in ("blast", "ghost"):
        entries[0]["masks"][0]["class_name"] = name
        entries[0]["masks"][0].pop("category", None)
        write_results(tmp_path / "r3.json", entries[:1])
        res = runner.invoke(app, ["crop", str(tmp_path / "photos" / "a"), "--types", str(tmp_path / "r3.json"),
                                  "--out", str(tmp_path / "c3")])
        assert res.exit_code == 2 and res.output.startswith("--types:") and name in res.output, res.output
        assert not (tmp_path / "c3").exists()
    # no photo the file lists (an empty results.json, or the photos of another batch): exit 1, said
    write_results(tmp_path / "r4.json", [])
    res = runner.invoke(app, ["crop", str(tmp_path / "photos" / "a"), "--types", str(tmp_path / "r4.json"),
                              "--out", str(tmp_path / "c4")])
    assert res.exit_code == 1 and "no photo given is one" in res.output and "(0 entries)" in res.output, res.output
    res = runner.invoke(app, ["crop", str(tmp_path / "photos" / "a"), "--types", str(tmp_path / "nope"),
                              "--out", str(tmp_path / "c5")])
    assert res.exit_code == 2 and "nope: no such file or folder" in res.output, res.output


def test_segment_of_a_lab_folder_leaves_its_label_images_out(tmp_path, tiny_model_path):
    """Stop 67's Left list: `segment` of a lab's training folder (X.png beside X_mask.png) segmented each mask as a
    photo. A label image beside its photo is left out when a folder brings it in, said once; given by name, kept."""
    src = _images(tmp_path, n=2)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(src / "img0_mask.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(src / "lone_mask.png")  # no photo beside it: a photo
    common = ["--model", str(tiny_model_path), "--cell-diameter", "24"]
    res = runner.invoke(app, ["segment", "--task", "wbc", str(src), "--out", str(tmp_path / "o"), *common])
    assert res.exit_code == 0 and "1 label image(s) left out" in res.output and "img0_mask.png" in res.output
    assert sorted(p.name for p in (tmp_path / "o").glob("*.json")) == ["img0.json", "img1.json", "lone_mask.json"]
    res = runner.invoke(app, ["segment", "--task", "wbc", str(src / "img0.png"), str(src / "img0_mask.png"), "--out",
                              str(tmp_path / "o2"), *common])
    assert res.exit_code == 0 and "left out" not in res.output and (tmp_path / "o2" / "img0_mask.json").is_file()
    # wbc-seg's layout: NNN.bmp beside its grey label map NNN.png (a review)
    ws = tmp_path / "ws"
    ws.mkdir()
    Image.open(src / "img1.png").convert("RGB").save(ws / "001.bmp")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(ws / "001.png")
    res = runner.invoke(app, ["segment", "--task", "wbc", str(ws), "--out", str(tmp_path / "o3"), *common])
    assert res.exit_code == 0 and "1 label image(s) left out" in res.output and "001.png" in res.output
    assert [p.name for p in (tmp_path / "o3").glob("*.json")] == ["001.json"]
    # a colour photo saved as a palette PNG beside a JPEG of its stem is no label map (a review)
    Image.open(src / "img1.png").convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE).save(ws / "002.png")
    Image.open(src / "img1.png").convert("RGB").save(ws / "002.jpg")
    res = runner.invoke(app, ["segment", "--task", "wbc", str(ws), "--out", str(tmp_path / "o4"), *common])
    assert res.exit_code == 0 and "1 label image(s) left out" in res.output, res.output
    assert sorted(p.name for p in (tmp_path / "o4").glob("*.json")) == ["001.json", "002_jpg.json", "002_png.json"]


def test_a_glob_over_a_dsb_folder_leaves_its_masks_out(tmp_path, tiny_model_path):
    """A nuclei walkthrough (stop 70): the hint's quoted glob 'mylab/**/*.png' over a DSB folder segmented its
    masks/*.png as images (31 'nuclei' found in them)."""
    from helpers import make_dsb

    make_dsb(tmp_path / "dsb", n=2)
    res = runner.invoke(app, ["segment", "--task", "wbc", str(tmp_path / "dsb" / "**" / "*.png"), "--out",
                              str(tmp_path / "o"), "--model", str(tiny_model_path), "--cell-diameter", "24"])
    assert res.exit_code == 0 and "label image(s) left out" in res.output and "/masks/" in res.output, res.output
    assert len(list((tmp_path / "o").glob("*.json"))) == 2
    masks = next((tmp_path / "dsb").glob("*/masks"))  # a masks folder named by the user is segmented (a review)
    res = runner.invoke(app, ["segment", "--task", "wbc", str(masks), "--out", str(tmp_path / "o2"), "--model",
                              str(tiny_model_path), "--cell-diameter", "24"])
    assert res.exit_code == 0 and "left out" not in res.output, res.output
    assert len(list((tmp_path / "o2").glob("*.json"))) == len(list(masks.glob("*.png")))


def test_crop_types_cuts_a_corrected_wbc_from_the_photo_whose_pixels_the_entry_records(tmp_path):
    """A walkthrough (stop 69): another batch's photo of the same name and size took a lab's corrections (a
    lymphocyte cut into basophil/), and serve's second x.png (renamed x~2.png) matched nothing. analyze records
    each photo's pixels (pixels_sha256): they settle a tie of names, find a renamed photo, refuse another photo."""
    from hemaseg.io.annotations import box_vertices, write_results
    from hemaseg.io.images import pixels_sha256

    rng = np.random.default_rng(1)
    pics = {}
    for day in ("dayA", "dayB"):
        (tmp_path / day).mkdir()
        pics[day] = rng.integers(0, 255, (50, 50, 3), np.uint8)
        Image.fromarray(pics[day]).save(tmp_path / day / "x.png")
    box = {"x1": 10, "y1": 10, "x2": 30, "y2": 30}
    entry = {"filename": "x.png", "height": 50, "width": 50, "pixels_sha256": pixels_sha256(pics["dayB"]),
             "masks": [{"class_name": "basophil", "category": "wbc", "bounding_box": box,
                        "vertices": box_vertices(10, 10, 30, 30)}]}
    write_results(tmp_path / "r.json", [entry, {**entry, "filename": "y~2.png"}])
    both = [str(tmp_path / "dayA"), str(tmp_path / "dayB")]
    res = runner.invoke(app, ["crop", *both, "--types", str(tmp_path / "r.json"), "--out", str(tmp_path / "c")])
    # both entries are dayB's pixels: one photo listed twice, cut once and the other said (stop 71: cut twice before)
    assert res.exit_code == 1 and "1 WBC crops from 1/1 photos" in res.output, res.output
    assert "y~2.png: the same pixels as its entry x.png (one photo listed twice)" in res.output
    rows = (tmp_path / "c" / "crops.csv").read_text().splitlines()[1:]
    assert [r.split(",")[1] for r in rows] == [str(tmp_path / "dayB" / "x.png")]
    res = runner.invoke(app, ["crop", str(tmp_path / "dayA"), "--types", str(tmp_path / "r.json"), "--out",
                              str(tmp_path / "c2")])
    assert res.exit_code == 1 and "matched by name" in res.output and "pixels differ" in res.output, res.output
    assert not (tmp_path / "c2" / "basophil").exists()
    # serve's x.png (dayA's pixels) and x~2.png (dayB's), only dayB given: its name matches the first entry, its
    # pixels the second, which is cut (a review: dayB was refused on its name and both corrections lost)
    entry_a = {**entry, "pixels_sha256": pixels_sha256(pics["dayA"])}
    write_results(tmp_path / "r3.json", [entry_a, {**entry, "filename": "x~2.png"}])
    res = runner.invoke(app, ["crop", str(tmp_path / "dayB"), "--types", str(tmp_path / "r3.json"), "--out",
                              str(tmp_path / "c3")])
    assert res.exit_code == 1 and "1 WBC crops from 1/1 photos" in res.output, res.output
    # the entry named, not the photo (which was cut, by the other entry: a walkthrough, stop 71)
    assert "r3.json: x.png: matched by name" in res.output and "no photo given has its pixels" in res.output, res.output
    assert (tmp_path / "c3" / "basophil" / "x_1.png").is_file()


def test_the_own_training_note_finds_a_split_the_card_names_from_the_repository(tmp_path, monkeypatch):
    """A walkthrough (stop 71): `evaluate wbc-type --data bccd-wbc` scored the bundled typer on 227 of its own 283
    training crops without the note a run gets: its card names benchmarks/splits/wbc-type-3labs.json, a path from the
    repository (entries too), and only a file named split.json was read. Names in the split's source folder (wbc-seg's
    002.bmp, DSB's <id>.png in <id>/images/) count too."""
    import hemaseg.engine.evaluate as ev

    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    (repo / "benchmarks" / "splits").mkdir(parents=True)
    elsewhere.mkdir()
    data = tmp_path / "shared" / "data"
    (data / "dsb" / "abc" / "images").mkdir(parents=True)
    for f in (data / "crops" / "a.png", data / "crops" / "b.png", data / "seg" / "002.bmp", data / "dsb" / "abc" / "images" / "abc.png"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    (repo / "benchmarks" / "splits" / "t.json").write_text(json.dumps(
        {"train": [["../shared/data/crops/a.png", "neutrophil"]], "val": [["../shared/data/crops/b.png", "monocyte"]]}))
    (repo / "benchmarks" / "splits" / "s.json").write_text(json.dumps({"source": "../shared/data/seg", "train": ["002.bmp"]}))
    (repo / "benchmarks" / "splits" / "d.json").write_text(json.dumps({"source": "../shared/data/dsb", "train": ["abc.png"]}))
    monkeypatch.setattr(ev, "REPO_ROOT", repo)
    monkeypatch.chdir(elsewhere)
    card = {"training": {"split": "benchmarks/splits/t.json"}}
    note = ev.own_training_note("wbc-type", card, [data / "crops" / "a.png", data / "crops" / "b.png"], "crops")
    assert note and note[0].startswith("note: 1 of the 2 crops scored are this model's own training crops (") and \
        str(repo / "benchmarks" / "splits" / "t.json") in note[0]
    assert ev.own_training_note("wbc-type", card, [data / "crops" / "b.png"], "crops") == []
    for name, image in (("s", data / "seg" / "002.bmp"), ("d", data / "dsb" / "abc" / "images" / "abc.png")):
        assert ev.own_training_note("m", {"training": {"split": f"benchmarks/splits/{name}.json"}}, [image]), name


def test_segment_json_says_where_the_cell_diameter_came_from(tmp_path):
    """Stop 70's list: a nuclei JSON's cell_diameter was the model's trained median when nothing was measured, unsaid."""
    import hemaseg

    sample = hemaseg.read_image(SAMPLE_PHOTO)[:240, 160:480]
    Image.fromarray(sample).save(tmp_path / "cells.png")
    Image.fromarray(np.full((64, 64, 3), 230, np.uint8)).save(tmp_path / "blank.png")
    res = runner.invoke(app, ["segment", "--task", "cells", str(tmp_path / "cells.png"), str(tmp_path / "blank.png"),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    said = {n: json.loads((tmp_path / "o" / f"{n}.json").read_text())["cell_diameter_from"] for n in ("cells", "blank")}
    assert said == {"cells": "measured", "blank": "model"}
    res = runner.invoke(app, ["segment", "--task", "cells", str(tmp_path / "cells.png"), "--cell-diameter", "90",
                              "--out", str(tmp_path / "g")])
    assert json.loads((tmp_path / "g" / "cells.json").read_text())["cell_diameter_from"] == "given"
    assert hemaseg.analyze(np.full((64, 64, 3), 230, np.uint8)).entry["cell_diameter_from"] == "model"
    res = runner.invoke(app, ["segment", "--task", "cells", str(tmp_path / "cells.png"), "--pixel-size", "0.08",
                              "--out", str(tmp_path / "p")])  # a size from the pixel scale is no size given (a review)
    assert json.loads((tmp_path / "p" / "cells.json").read_text())["cell_diameter_from"] == "pixel size"
    res = runner.invoke(app, ["segment", "--task", "wbc", "--method", "hsv", str(tmp_path / "blank.png"), "--out",
                              str(tmp_path / "m")])  # a classical method says no source, a blank image too
    assert res.exit_code == 0 and "cell_diameter_from" not in json.loads((tmp_path / "m" / "blank.json").read_text())


def test_crop_types_checks_a_coco_files_pixels_and_cuts_a_photo_listed_twice_once(tmp_path):
    """A walkthrough (stop 71): analyze's --coco (and serve's coco.json) carried no photo pixels, so `crop --types`
    cut another batch's photos of the same names with the first batch's types, exit 0; a results.json listing one
    photo twice (given through two folders) had its WBCs cut twice, one crop a copy of the other."""
    from hemaseg.io.annotations import read_coco, write_coco, write_results
    from hemaseg.io.images import pixels_sha256

    rng = np.random.default_rng(1)
    day1, day2 = (rng.integers(0, 255, (60, 80, 3), np.uint8) for _ in range(2))
    for folder, pixels in (("day1", day1), ("day2", day2)):
        (tmp_path / folder).mkdir()
        Image.fromarray(pixels).save(tmp_path / folder / "f01.png")
    box = {"x1": 10, "y1": 10, "x2": 30, "y2": 30}
    wbc = {"class_name": "eosinophil", "category": "wbc", "score": 0.9, "bounding_box": box,
           "vertices": [[10, 10], [30, 10], [30, 30], [10, 30]]}
    entry = {"filename": "f01.png", "height": 60, "width": 80, "pixels_sha256": pixels_sha256(day1), "masks": [wbc]}
    write_coco(tmp_path / "day1.json", [entry])
    assert read_coco(tmp_path / "day1.json")[0]["pixels_sha256"] == pixels_sha256(day1)
    res = runner.invoke(app, ["crop", str(tmp_path / "day2"), "--types", str(tmp_path / "day1.json"), "--out",
                              str(tmp_path / "c2")])
    assert res.exit_code == 1 and "whose pixels differ" in res.output and not (tmp_path / "c2" / "eosinophil").exists()
    res = runner.invoke(app, ["crop", str(tmp_path / "day1"), "--types", str(tmp_path / "day1.json"), "--out",
                              str(tmp_path / "c1")])
    assert res.exit_code == 0 and len(list((tmp_path / "c1" / "eosinophil").iterdir())) == 1, res.output
    write_results(tmp_path / "twice.json", [entry, {**entry, "filename": "copy/f01.png"}])
    res = runner.invoke(app, ["crop", str(tmp_path / "day1"), "--types", str(tmp_path / "twice.json"), "--out",
                              str(tmp_path / "ct")])
    assert res.exit_code == 1 and "one photo listed twice" in res.output, res.output
    assert len(list((tmp_path / "ct" / "eosinophil").iterdir())) == 1
