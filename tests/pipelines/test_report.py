"""counts.csv (the differential with its 95 % intervals, the batch pooled) and report.html (what a lab
files: sample, date, versions, the interval and the cells it rests on, unsure cells apart)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from hemaseg import __version__
from hemaseg.cli import app
from hemaseg.core.vocabulary import WBC_TYPES
from hemaseg.pipelines.analyze import Analysis
from hemaseg.pipelines.report import BATCH_ROW, RESEARCH_ONLY, counts_csv, report_html

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "hemaseg" / "samples" / "BloodImage_00000.jpg"


def _wbc(name: str, probs: dict[str, float], unsure: bool = False) -> dict:
    rec = {"class_name": "wbc" if unsure else name, "category": "wbc", "score": 0.9,
           "bounding_box": {"x1": 1, "x2": 9, "y1": 1, "y2": 9}, "vertices": [[1, 1], [8, 1], [8, 8]],
           "type_probs": probs}
    if unsure:
        rec["unsure"] = True
    return rec


def _analysis(name: str, counts: dict[str, int], masks: list[dict] = (), **entry) -> Analysis:
    full = {"rbc": 10, "platelet": 1, **{t: 0 for t in WBC_TYPES}, **counts}
    full["wbc"] = sum(full[t] for t in WBC_TYPES) + sum(1 for m in masks if m.get("unsure"))
    wbcs = [m for m in masks if m["category"] == "wbc"]
    return Analysis({"filename": name, "height": 20, "width": 30, **entry, "masks": list(masks)}, full,
                    np.zeros((20, 30), np.int32), 8.0, [np.full((8, 8, 3), 100, np.uint8)] * len(wbcs),
                    models={"cells": "cells, sha256 0123456789ab", "wbc-type": "wbc-type, calibrated"})


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_counts_csv_has_the_interval_beside_each_percentage_and_a_pooled_row():
    a = _analysis("a.png", {"neutrophil": 40, "lymphocyte": 20})
    b = _analysis("b.png", {"neutrophil": 20, "lymphocyte": 40})
    text = counts_csv([a, b])
    header = text.splitlines()[0].split(",")
    assert header[:9] == ["filename", "rbc", "wbc", "platelet", *WBC_TYPES]
    assert header[9:15] == ["neutrophil_pct", "neutrophil_pct_lo", "neutrophil_pct_hi",
                            "lymphocyte_pct", "lymphocyte_pct_lo", "lymphocyte_pct_hi"]
    assert len(header) == 9 + 3 * 5 + 1 and header[-1] == "unsure"
    first, second, pooled = _rows(text)
    assert [pooled[k] for k in ("filename", "rbc", "wbc", "neutrophil")] == [BATCH_ROW, "20", "120", "60"]
    # 60 of 120: 50 %, exact 95 % interval 40.7-59.3; 40 of 60: 66.7 %, 53.3-78.3.
    assert [pooled[f"neutrophil_pct{s}"] for s in ("", "_lo", "_hi")] == ["50.0", "40.7", "59.3"]
    assert [first[f"neutrophil_pct{s}"] for s in ("", "_lo", "_hi")] == ["66.7", "53.3", "78.3"]
    # No basophil among 60: up to 6.0 %.
    assert [first[f"basophil_pct{s}"] for s in ("", "_lo", "_hi")] == ["0.0", "0.0", "6.0"]
    assert second["lymphocyte_pct"] == "66.7"


def test_counts_csv_with_no_typed_wbc_and_no_image():
    row, pooled = _rows(counts_csv([_analysis("a.png", {})]))
    assert [row[f"monocyte_pct{s}"] for s in ("", "_lo", "_hi")] == ["", "0.0", "100.0"]  # nothing known: no share
    assert counts_csv([]).count("\n") == 1  # the header only


def _sections(page: str) -> list[str]:
    return [s.split("</h2>")[0] for s in page.split("<h2")[1:]]


def test_report_says_what_a_lab_needs_and_warns_on_few_cells():
    unsure = _wbc("", {"neutrophil": 0.41, "lymphocyte": 0.38, "monocyte": 0.21}, unsure=True)
    sure = [_wbc("neutrophil", {"neutrophil": 0.97, "lymphocyte": 0.03}),
            _wbc("lymphocyte", {"lymphocyte": 0.84, "neutrophil": 0.16})]
    a = _analysis("photos/a.png", {"neutrophil": 1, "lymphocyte": 1}, [*sure, unsure], sample_id="S-17",
                  pixel_size_um=0.25)
    page = report_html([a], [np.zeros((20, 30, 3), np.uint8)], date="2025-01-02 03:04:05 +0000")
    for text in (RESEARCH_ONLY, "S-17", "2025-01-02 03:04:05 +0000", f"hemaseg {__version__}",
                 "cells, sha256 0123456789ab", "wbc-type, calibrated", "0.25 µm/px",
                 "classifier confidence, calibrated", "Clopper-Pearson"):
        assert text in page, text
    assert page.count(RESEARCH_ONLY) == 2  # at the top and at the end
    assert "Rests on <strong>2</strong> typed white cell(s) of 3 found; 1 whose type" in page
    assert 'class="warning"' in page and "fewer than the 100" in page
    # 1 of 2 neutrophils: 50 %, 1.3-98.7.
    assert "<td>neutrophil</td><td>1</td><td>50.0</td><td>1.3 - 98.7</td>" in page
    # The unsure cell is listed apart, before the image's own gallery, with its two likeliest types.
    heads = _sections(page)
    review = next(i for i, h in enumerate(heads) if "For review: 1 white cell" in h)
    assert review < next(i for i, h in enumerate(heads) if "photos/a.png" in h)
    assert "a.png: neutrophil 0.41 / lymphocyte 0.38" in page
    # The image's gallery: typed cells only, least sure first.
    gallery = page.split("photos/a.png</h2>")[1]
    assert gallery.index("lymphocyte 0.84") < gallery.index("neutrophil 0.97") and "0.41" not in gallery


def test_report_without_warning_sample_or_scale():
    a = _analysis("a.png", {"neutrophil": 60, "lymphocyte": 40})
    page = report_html([a], [np.zeros((20, 30, 3), np.uint8)])
    assert 'class="warning"' not in page and "For review" not in page
    assert "not given (hemaseg analyze --sample-id ID)" in page and "pixel scale</th><td>not known" in page
    assert "<td>neutrophil</td><td>60</td><td>60.0</td><td>49.7 - 69.7</td>" in page
    assert "red-cell diameter 8.0 px; RBC 10" in page


def test_report_says_a_diameter_no_red_cell_measured():
    """A walkthrough: a blank image's section read "red-cell diameter 44.9 px" (the model's trained size), as if
    measured."""
    page = report_html([_analysis("blank.png", {"rbc": 0})], [np.zeros((20, 30, 3), np.uint8)])
    assert "red-cell diameter 8.0 px (no red cell found to measure it by); RBC 0" in page


def test_report_labels_a_wbc_by_the_call_made_and_says_its_rules(tmp_path):
    """A report audit (stop 65): a WBC whose top type, platelet, was ruled out for its size showed the platelet's
    probability as its type's ("neutrophil 0.70", where the call's was 0.67) and the review list named a platelet;
    the rule that made a type unsure was said nowhere; the review list named photos by base name only (two x.jpg
    of two folders alike); a diameter taken from --pixel-size read as measured; a blank field said nothing."""
    big = {**_wbc("neutrophil", {"neutrophil": 0.35, "lymphocyte": 0.2, "platelet": 0.45}), "diameter": 20.0}
    unsure = {**_wbc("", {"platelet": 0.6, "monocyte": 0.2, "lymphocyte": 0.2}, unsure=True), "diameter": 20.0}
    a = _analysis("s1/x.jpg", {"neutrophil": 1}, [big, unsure])  # red cells 8 px: a 20-px cell is no platelet
    b = _analysis("s2/x.jpg", {"rbc": 0, "platelet": 0}, [], pixel_size_um=1.0)
    b.cell_diameter = 7.5
    page = report_html([a, b], [np.zeros((20, 30, 3), np.uint8)] * 2, min_confidence=0.5)
    gallery = page.split("s1/x.jpg</h2>")[1]
    assert "neutrophil 0.63" in gallery and "0.45" not in gallery  # 0.636, rounded down (stop 71)
    # platelet 0.6 for a cell too big for one: the typer and the size disagree, the others keep their own (stop 71)
    assert "s1/x.jpg: monocyte 0.20 / lymphocyte 0.20" in page and "platelet 0.60" not in page
    assert "calibrated probability under 0.5" in page and "unsure type</th>" in page
    assert "(7.5 µm at the pixel scale, not measured)" in page and "no cell found: a blank or unusable field?" in page
    # the report_html date is the analysis's (no record there says when it was analysed: no "report written")
    page = report_html([a], [np.zeros((20, 30, 3), np.uint8)], date="2025-01-02 03:04:05 +0000")
    assert "<th>date of analysis</th><td>2025-01-02 03:04:05 +0000</td>" in page and "report written" not in page
    # dates of other offsets (a Dask worker's, a clock change) in time order, not as text
    from hemaseg.pipelines.report import _span

    assert _span(["2026-10-25 02:30:00 +0200", "2026-10-25 02:10:00 +0100"]) == \
        "2026-10-25 02:30:00 +0200 to 2026-10-25 02:10:00 +0100"


def test_cli_analyze_sample_id_in_results_report_and_counts(tmp_path):
    """The bundled models on the bundled photo (one WBC: the warning shows)."""
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["analyze", str(SAMPLE), "--out", str(out), "--sample-id", "LAB-2025-001"])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["0"]["sample_id"] == "LAB-2025-001"
    page = (out / "report.html").read_text()
    assert "LAB-2025-001" in page and RESEARCH_ONLY in page and 'class="warning"' in page
    assert "sha256 " in page and "trained with hemaseg" in page
    rows = _rows((out / "counts.csv").read_text())
    assert [r["filename"] for r in rows] == [str(SAMPLE), BATCH_ROW]
    assert {"neutrophil_pct_lo", "neutrophil_pct_hi", "ig_pct_lo", "ig_pct_hi"} <= set(rows[0])
    bad = CliRunner().invoke(app, ["analyze", str(SAMPLE), "--out", str(out), "--sample-id", " "])
    assert bad.exit_code == 2 and "--sample-id" in bad.output
    bad = CliRunner().invoke(app, ["analyze", str(SAMPLE), "--out", str(out), "--min-confidence", "2"])
    assert bad.exit_code == 2 and "--min-confidence" in bad.output


def test_report_shows_the_cells_outside_the_differential_in_each_images_row():
    """An erythroblast a PBC typer names is a WBC found but no leukocyte: out of the differential, said so,
    and in its own column of the per-image table, so that each row's types add up to its WBCs."""
    full = {"rbc": 10, "platelet": 0, **{t: 0 for t in WBC_TYPES}, "neutrophil": 2, "erythroblast": 1, "ig": 0, "wbc": 3}
    a = Analysis({"filename": "a.png", "height": 20, "width": 30, "masks": []}, full, np.zeros((20, 30), np.int32),
                 8.0, [], WBC_TYPES + ("ig", "erythroblast"), {})
    page = report_html([a], [np.zeros((20, 30, 3), np.uint8)])
    assert "outside the differential, though among the WBCs found: erythroblast 1" in page
    # the WBC count a lab signs leaves nucleated red cells out (walkthroughs, stop 71: the total counted them unsaid)
    assert "Of the 3 WBCs found, 1 the typer calls erythroblasts (nucleated red cells, 50.0 per 100 other WBCs): " \
           "the WBC count without them is <strong>2</strong>" in page
    per_image = page.split("Counts per image</h2>")[1].split("</table>")[0]
    assert "<th>erythroblast</th>" in per_image and "<td>a.png</td><td>10</td><td>3</td><td>0</td><td>2</td>" in per_image
    row = per_image.split("<td>a.png</td>")[1].split("</tr>")[0]
    cells = [int(c) for c in row.replace("</td>", "").split("<td>")[1:]]
    assert cells[1] == sum(cells[3:])  # WBC = the types + erythroblast + unsure


def test_a_batch_report_shows_its_cells_by_type_least_sure_first_and_at_most_a_page_of_each(monkeypatch):
    """Issue 24: the gallery sorted by confidence; for a batch, a CellaVision-like screen of every photo's cells
    grouped by type (each photo's own gallery stayed sorted within that photo only)."""
    import hemaseg.pipelines.report as report

    monkeypatch.setattr(report, "BY_TYPE_SHOWN", 2)
    a = _analysis("a.png", {"neutrophil": 2}, [_wbc("neutrophil", {"neutrophil": 0.9, "lymphocyte": 0.1}),
                                               _wbc("neutrophil", {"neutrophil": 0.6, "lymphocyte": 0.4})])
    b = _analysis("b.png", {"neutrophil": 1, "lymphocyte": 1},
                  [_wbc("lymphocyte", {"lymphocyte": 0.8, "neutrophil": 0.2}),
                   _wbc("neutrophil", {"neutrophil": 0.7, "lymphocyte": 0.3}),
                   _wbc("", {"neutrophil": 0.5, "lymphocyte": 0.5}, unsure=True)])
    page = report_html([a, b], [np.zeros((20, 30, 3), np.uint8)] * 2)
    section = page.split("White cells by type</h2>")[1].split("<h2>")[0]
    assert "<h3>neutrophil: 3 cell(s), the 2 least sure shown</h3>" in section
    assert "<h3>lymphocyte: 1 cell(s)</h3>" in section and section.index("neutrophil:") < section.index("lymphocyte:")
    neutrophils = section.split("<h3>lymphocyte")[0]
    assert neutrophils.index("a.png: 0.60") < neutrophils.index("b.png: 0.70") and "0.90" not in neutrophils
    assert "0.50" not in section  # the unsure cell is in the review list, not under a type
    # one photo: its own gallery is the same screen, not repeated
    assert "White cells by type" not in report_html([a], [np.zeros((20, 30, 3), np.uint8)])


def test_report_says_why_a_cell_is_unsure_the_settings_given_and_photos_given_twice():
    """A walkthrough (stop 71): the review list gave no reason (a grey photo's cell read "neutrophil 0.55" under
    "probability under 0.5"); 0.4957 read "0.50" under that threshold; --post knobs and a given --cell-diameter
    changed the counts and the report said neither; one photo given twice (two links) was counted twice unsaid."""
    grey = {**_wbc("", {"neutrophil": 0.55, "lymphocyte": 0.45}, unsure=True),
            "unsure_reason": "a grey photo: no stain colours to type by"}
    low = {**_wbc("", {"eosinophil": 0.4957, "neutrophil": 0.34}, unsure=True), "unsure_reason": "eosinophil 0.49, under 0.5"}
    a = _analysis("a.png", {}, [grey], pixels_sha256="f00", cell_diameter_from="given",
                  postprocess={"wbc_min_score": 0.95})
    b = _analysis("links/a.png", {}, [low], pixels_sha256="f00")
    page = report_html([a, b], [np.zeros((20, 30, 3), np.uint8)] * 2, min_confidence=0.5)
    assert "a.png: a grey photo: no stain colours to type by; neutrophil 0.55 / lymphocyte 0.45" in page
    assert "links/a.png: eosinophil 0.49, under 0.5; eosinophil 0.49 / neutrophil 0.34" in page and "0.50 /" not in page
    assert "<th>cells post-processing</th><td>wbc_min_score=0.95 (given, --post)</td>" in page
    assert "red-cell diameter 8.0 px (given, --cell-diameter: not measured)" in page
    assert "1 photo(s) hold the same pixels as another given before (links/a.png as a.png)" in page
    page = report_html([_analysis("c.png", {"neutrophil": 1})], [np.zeros((20, 30, 3), np.uint8)])
    assert "<th>cells post-processing</th><td>the cells model&#x27;s own</td>" in page and "same pixels" not in page
    assert "(given, --cell-diameter" not in page
