"""The one output-naming rule (issue 20, cases 1 and 2): an output never replaces an input, and
two inputs never write the same file."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from helpers import toy_wbc
from hemaseg.cli import app
from hemaseg.errors import HemasegUsageError
from hemaseg.io.outputs import output_stems

runner = CliRunner()


def _photo(path: Path, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = toy_wbc(np.random.default_rng(seed), 64)[0]
    Image.fromarray(img).save(path)
    return np.array(Image.open(path))


def test_same_stems_are_disambiguated_and_said():
    stems, notes = output_stems([Path("a/001.png"), Path("b/001.jpg"), Path("c/002.png")], Path("o"),
                                [".png", ".json"])
    assert stems == {Path("a/001.png"): "001_png", Path("b/001.jpg"): "001_jpg", Path("c/002.png"): "002"}
    assert len(notes) == 1 and "a/001.png" in notes[0] and "001_jpg.*" in notes[0]
    # same name and suffix in two folders: the folder goes into the name
    stems, _ = output_stems([Path("a/x.png"), Path("b/x.png")], Path("o"), [".png"])
    assert stems[Path("a/x.png")] != stems[Path("b/x.png")]
    # an input named like another input's overlay
    stems, _ = output_stems([Path("x.png"), Path("x_overlay.png")], Path("o"), [".png", "_overlay.png"])
    files = [stems[p] + e for p in stems for e in (".png", "_overlay.png")]
    assert len(set(files)) == len(files)


def test_output_onto_an_input_is_refused(tmp_path):
    with pytest.raises(HemasegUsageError, match="would replace the input"):
        output_stems([tmp_path / "cell.png"], tmp_path, [".png", ".json"])
    with pytest.raises(HemasegUsageError, match="coco") as err:
        output_stems([tmp_path / "a.png"], tmp_path / "o", [".png"], fixed=[("--coco", tmp_path / "a.png")])
    assert err.value.option == "--coco"  # the command line's flag, which the CLI prints


def test_segment_into_the_input_folder_refuses_and_keeps_the_photo(tmp_path, tiny_model_path):
    """Case 1: `segment d --out d` replaced d/cell.png with the label mask and exited 0."""
    d = tmp_path / "d"
    before = _photo(d / "cell.png")
    for given, said in ((d, "the input folder"), (d / "cell.png", "cell.png")):
        res = runner.invoke(app, ["segment", str(given), "--out", str(d), "--model", str(tiny_model_path),
                                  "--cell-diameter", "24"])
        assert res.exit_code == 2
        assert len(res.output.strip().splitlines()) == 1 and "--out" in res.output and said in res.output
        assert np.array_equal(np.array(Image.open(d / "cell.png")), before)
        assert sorted(p.name for p in d.iterdir()) == ["cell.png"]


def test_no_output_folder_is_an_input_folder(tmp_path, tiny_model_path):
    """An analyze audit: `analyze d --out d` wrote its overlays among the photos; every later run (even
    --overwrite or --resume) took an overlay for a photo. segment (its label PNGs) and explain (reading
    sub-folders: an --out inside the input folder) likewise."""
    d = tmp_path / "d"
    _photo(d / "cell.jpg")
    for args in (["analyze", str(d), "--out", str(d)],
                 ["segment", str(d), "--out", str(d), "--model", str(tiny_model_path)],
                 ["explain", str(d), "--out", str(d / "ex")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and "input folder" in res.output and len(res.output.strip().splitlines()) == 1, res.output
        assert sorted(p.name for p in d.iterdir()) == ["cell.jpg"]


def test_two_inputs_of_one_name_keep_both_results(tmp_path, tiny_model_path):
    """Case 2: a/001.png and b/001.jpg printed "2/2 segmented" and kept one result; the wbc-seg layout
    (NNN.bmp + NNN.png) overwrote the photo's result with the ground truth's."""
    _photo(tmp_path / "a" / "001.png", 1)
    _photo(tmp_path / "b" / "001.jpg", 2)
    _photo(tmp_path / "w" / "002.bmp", 3)
    Image.fromarray(toy_wbc(np.random.default_rng(3), 64)[1]).save(tmp_path / "w" / "002.png")
    out = tmp_path / "out"
    res = runner.invoke(app, ["segment", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "w"),
                              "--out", str(out), "--model", str(tiny_model_path), "--cell-diameter", "24"])
    assert res.exit_code == 0, res.output
    assert "001_png.*" in res.output  # said which names were used
    # wbc-seg's grey 002.png beside its photo 002.bmp is its label map: left out, said (stop 69)
    assert "1 label image(s) left out" in res.output and "002.png" in res.output
    names = sorted(p.name for p in out.glob("*.json"))
    assert names == ["001_jpg.json", "001_png.json", "002.json"]
    sources = {json.loads((out / n).read_text())["filename"] for n in names}
    assert len(sources) == 3


def test_fixed_files_never_take_each_others_or_an_inputs_output(tmp_path):
    """An analyze audit: `--coco x --cvat x` kept only the COCO file, `--coco OUT/a_overlay.png` replaced
    the overlay, and `--coco OUT/results.json` the results (all exit 0)."""
    o = tmp_path / "o"
    with pytest.raises(HemasegUsageError) as err:
        output_stems([tmp_path / "a.png"], o, ["_overlay.png"], fixed=[("--cvat", tmp_path / "same.json"),
                                                                          ("--coco", tmp_path / "same.json")])
    assert err.value.option == "--coco" and "written by --cvat too" in err.value.reason
    with pytest.raises(HemasegUsageError, match="output of") as err:
        output_stems([tmp_path / "a.png"], o, ["_overlay.png"], fixed=[("--coco", o / "a_overlay.png")])
    assert err.value.option == "--coco"
    with pytest.raises(HemasegUsageError, match="written by out too"):
        output_stems([tmp_path / "a.png"], o, ["_overlay.png"], fixed=[("--out", o / "results.json"),
                                                                          ("--coco", o / "results.json")])
    stems, notes = output_stems([tmp_path / "a.png"], o, ["_overlay.png"], fixed=[("--coco", o / "all.json"),
                                                                                    ("--cvat", None)])
    assert stems == {tmp_path / "a.png": "a"} and notes == []


def test_a_reserved_stem_is_renamed_and_said():
    """An analyze audit: a photo named run.jpg wrote its part over the batch's parts/run.json."""
    stems, notes = output_stems([Path("in/run.jpg"), Path("in/b.jpg")], Path("o"), ["_overlay.png"],
                                reserved=["run"])
    assert stems == {Path("in/run.jpg"): "run_jpg", Path("in/b.jpg"): "b"}
    assert len(notes) == 1 and "kept for the run's own files" in notes[0] and "run_jpg.*" in notes[0]
    stems, _ = output_stems([Path("in/RUN.png")], Path("o"), [".png"], reserved=["run"])
    assert stems[Path("in/RUN.png")].lower() != "run"  # case-insensitive file systems


def test_a_chain_of_names_never_gives_two_inputs_one_output():
    """A segment audit: a/x.png, b/x.png, c/a_x_png.png, d/a_x_png_png.png and e/c_a_x_png_png.png: after four
    renaming rounds two inputs still wrote c_a_x_png_png.* ('5/5 segmented', four results); an input named
    x~1.png took another's last-round name."""
    chain = [Path("a/x.png"), Path("b/x.png"), Path("c/a_x_png.png"), Path("d/a_x_png_png.png"),
             Path("e/c_a_x_png_png.png"), Path("f/x~1.png"), Path("g/x~1.png")]
    stems, notes = output_stems(chain, Path("o"), [".png", ".json"])
    files = [(stems[p] + e).lower() for p in chain for e in (".png", ".json")]
    assert len(set(files)) == len(files) and notes


def test_no_output_beside_an_input_file(tmp_path, tiny_model_path):
    """A segment audit: `segment 'gt/*.bmp' --out gt` replaced wbc-seg's ground truth gt/001.png (beside
    gt/001.bmp) with its own label map, exit 0."""
    gt = tmp_path / "gt"
    _photo(gt / "001.bmp")
    Image.fromarray(toy_wbc(np.random.default_rng(0), 64)[1]).save(gt / "001.png")
    truth = (gt / "001.png").read_bytes()
    res = runner.invoke(app, ["segment", str(gt / "*.bmp"), "--out", str(gt), "--model", str(tiny_model_path),
                              "--cell-diameter", "24"])
    assert res.exit_code == 2 and "folder of the input" in res.output and len(res.output.strip().splitlines()) == 1
    assert (gt / "001.png").read_bytes() == truth and sorted(p.name for p in gt.iterdir()) == ["001.bmp", "001.png"]


def test_segment_reads_webp_in_a_folder_and_names_a_photo_given_as_model(tmp_path, tiny_model_path):
    """A segment audit: a folder's .webp and .gif were skipped unsaid (named, they were read); a photo given as
    --model said 'model card JSON not found beside the weights'; --pixel-size with nuclei was taken unsaid."""
    d = tmp_path / "d"
    d.mkdir()
    Image.fromarray(toy_wbc(np.random.default_rng(0), 64)[0]).save(d / "a.webp", lossless=True)
    out = tmp_path / "o"
    res = runner.invoke(app, ["segment", str(d), "--out", str(out), "--model", str(tiny_model_path),
                              "--cell-diameter", "24"])
    assert res.exit_code == 0 and (out / "a.json").exists(), res.output
    res = runner.invoke(app, ["segment", str(d), "--out", str(out), "--model", str(d / "a.webp")])
    assert res.exit_code == 2 and "not a model" in res.output and len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["segment", str(d), "--out", str(out), "--task", "nuclei", "--pixel-size", "0.25"])
    assert res.exit_code == 2 and "--pixel-size" in res.output and len(res.output.strip().splitlines()) == 1


def test_a_fixed_file_is_no_folder_the_outputs_go_into(tmp_path):
    """A review: `analyze p.jpg --out o --coco o` ran the whole batch, then a traceback (IsADirectoryError)."""
    o = tmp_path / "o"
    for target in (o, o / "a"):  # the output folder, a folder an output goes into (o/a/x.png)
        with pytest.raises(HemasegUsageError) as err:
            output_stems([tmp_path / "a.png"], o, ["_overlay.png", "/x.png"], fixed=[("--coco", target)])
        assert err.value.option == "--coco" and "folder" in err.value.reason
