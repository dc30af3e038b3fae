"""``hemaseg export --format bioimageio``: a tiny U-Net's package passes the bioimage.io spec's
validation and bioimageio.core's test (the TorchScript weights, through the pre- and post-processing
the package describes, reproduce the test output hemaseg computed); a package whose described
processing is not hemaseg's fails and is not written."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("bioimageio.spec", reason="bioimage.io export needs the [bioimageio] extra "
                                                "(pip install 'hemaseg[train,bioimageio]')")
pytest.importorskip("bioimageio.core", reason="reproducing the test output needs bioimageio.core ([bioimageio] extra)")

import hemaseg.pipelines.bioimageio as bio  # noqa: E402
from helpers import TINY  # noqa: E402
from hemaseg.errors import HemasegInputError, HemasegUsageError  # noqa: E402
from hemaseg.models.registry import create_model, load_model, save_model  # noqa: E402


@pytest.fixture
def sharp_model_path(tmp_path):
    """The tiny U-Net of conftest with its head's weights multiplied by 100, so that its class
    probabilities depend on the input enough to tell one normalisation from another (an untrained
    tiny net's hardly do: within bioimageio.core's 1e-3 tolerance)."""
    torch.manual_seed(0)
    model = create_model("unet-dropout", classes=3, **TINY).eval()
    with torch.no_grad():
        model.head.weight.mul_(100.0)
    card = {"name": "sharp", "task": "wbc", "classes": ["background", "cytoplasm", "nucleus"],
            "architecture": {"name": "unet-dropout", "kwargs": {"classes": 3, **TINY}},
            "normalization": {"type": "percentile", "low": 1.0, "high": 99.0}, "cell_diameter": 24.0}
    return save_model(model, tmp_path / "sharp", card)[0]


FILES = {"rdf.yaml", "weights_torchscript.pt", "test_input.npy", "test_output.npy", "sample_input.png",
         "sample_output.tif", "cover.png", "README.md", "hemaseg_card.json"}


def test_tiny_unet_package_passes_bioimageio_validation(sharp_model_path, tmp_path):
    out = tmp_path / "tiny.zip"
    summary = bio.export_bioimageio(sharp_model_path, out, scale=1.0, test_size=64)
    assert summary["status"] == "passed" and out.is_file()
    assert summary["test_input"] == [1, 3, 64, 64] and summary["stride"] == 4
    assert "passed: Reproduce test outputs from test inputs (torchscript)" in summary["checks"]
    assert any(c.startswith("passed: bioimageio.spec format validation") for c in summary["checks"])
    with zipfile.ZipFile(out) as z:
        assert FILES <= set(z.namelist())
        rdf = yaml.safe_load(z.read("rdf.yaml"))
        x = np.load(io.BytesIO(z.read("test_input.npy")))
        expected = np.load(io.BytesIO(z.read("test_output.npy")))
        scripted = torch.jit.load(io.BytesIO(z.read("weights_torchscript.pt")))
        readme = z.read("README.md").decode()
    # What the package describes: hemaseg's percentile normalisation in, softmax out, the card's classes.
    (inp,), (outp,) = rdf["inputs"], rdf["outputs"]
    assert rdf["type"] == "model" and rdf["format_version"].startswith("0.5")
    assert [a.get("id", a["type"]) for a in inp["axes"]] == ["batch", "channel", "y", "x"]
    assert inp["axes"][2]["size"] == {"min": 4, "step": 4}
    (scale_range,) = [p for p in inp["preprocessing"] if p["id"] == "scale_range"]
    assert (scale_range["kwargs"]["min_percentile"], scale_range["kwargs"]["max_percentile"]) == (1.0, 99.0)
    assert scale_range["kwargs"]["axes"] == ["y", "x"]  # per channel, as hemaseg's normalize
    assert {"id": "softmax", "kwargs": {"axis": "channel"}} in outp["postprocessing"]
    assert outp["axes"][1]["channel_names"] == ["background", "cytoplasm", "nucleus"]
    assert rdf["config"]["hemaseg"]["cell_diameter"] == 24.0
    assert "## Validation" in readme and "24 px" in readme
    # The test tensors: the raw photo in, the torch model's softmax through hemaseg's normalize out.
    assert x.shape == (1, 3, 64, 64) and x.dtype == np.float32 and x.max() > 1
    module, _ = load_model(sharp_model_path)
    norm = bio.normalize(x[0].transpose(1, 2, 0).astype(np.uint8)).transpose(2, 0, 1)[None]
    with torch.no_grad():
        logits = module.to(memory_format=torch.contiguous_format)(torch.from_numpy(np.ascontiguousarray(norm)))
        np.testing.assert_allclose(scripted(torch.from_numpy(np.ascontiguousarray(norm))), logits, atol=1e-5)
    np.testing.assert_allclose(expected, torch.softmax(logits, 1).numpy(), atol=1e-5)
    # The spec library alone, on the written file.
    from bioimageio.spec import load_description

    assert load_description(out, perform_io_checks=True).validation_summary.status in ("passed", "valid-format")


def test_package_with_other_processing_fails_and_is_not_written(sharp_model_path, tmp_path, monkeypatch):
    """A test output made with another normalisation than the one described (x / 255 instead of the
    percentiles) does not reproduce: the export refuses and writes nothing."""
    monkeypatch.setattr(bio, "normalize", lambda image, low, high: image.astype(np.float32) / 255.0)
    out = tmp_path / "bad"
    with pytest.raises(HemasegInputError, match=r"fails its checks \(Reproduce test outputs .* disagree"):
        bio.export_bioimageio(sharp_model_path, out, scale=1.0, test_size=64)
    assert not out.exists()


def test_refuses_what_has_no_bioimageio_description(tmp_path):
    with pytest.raises(HemasegInputError, match="not a U-Net"):
        bio.export_bioimageio("wbc-type", tmp_path / "c.zip", scale=1.0)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("x")
    with pytest.raises(HemasegUsageError, match="new \\(or empty\\) folder"):
        bio.export_bioimageio("wbc", busy, scale=1.0)
    assert not (tmp_path / "c.zip").exists()


def test_refuses_a_model_with_extra_outputs(tmp_path):
    from hemaseg.models.registry import create_model, save_model

    torch.manual_seed(0)
    card = {"name": "depth", "task": "nuclei", "classes": ["background", "nucleus", "boundary"],
            "aux_outputs": ["depth"], "architecture": {"name": "unet-dropout", "kwargs": {"classes": 4, **TINY}},
            "normalization": {"type": "percentile", "low": 1.0, "high": 99.0}, "cell_diameter": 12.0}
    st, _ = save_model(create_model("unet-dropout", classes=4, **TINY).eval(), tmp_path / "depth", card)
    with pytest.raises(HemasegInputError, match="extra outputs depth"):
        bio.export_bioimageio(st, tmp_path / "d.zip", scale=1.0)
    assert not (tmp_path / "d.zip").exists()


def test_cli_registers_the_format_and_refuses_a_classifier_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from hemaseg.cli import app
    from hemaseg.pipelines.export import EXPORTERS

    assert EXPORTERS["bioimageio"] is bio.export_bioimageio
    res = CliRunner().invoke(app, ["export", "wbc-type", "--format", "bioimageio", "--out", str(tmp_path / "c.zip")])
    assert res.exit_code == 1
    assert "not a U-Net" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "c.zip").exists()


def test_the_package_readme_names_commands_that_run():
    """The smear10 package told users to run `hemaseg segment --model smear10-unet-dropout` (its card's name, no
    bundled model; and without --task, segment runs the wbc task): both commands now take the model as exported."""
    import json

    from hemaseg.models.registry import WEIGHTS_DIR
    from hemaseg.pipelines.bioimageio import _readme
    from hemaseg.tasks import get_task

    card = json.loads((WEIGHTS_DIR / "smear10.json").read_text())
    text = _readme(card, get_task("smear10"), 32, 128, 0.331, 1.0, 99.0, "smear10")
    assert "`hemaseg segment --task smear10 --model smear10`" in text
    assert "`hemaseg export smear10 --format bioimageio`" in text and "smear10-unet-dropout`" not in text
