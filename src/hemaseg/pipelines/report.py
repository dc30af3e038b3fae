"""Outputs of ``hemaseg analyze``: counts.csv and a self-contained report.html (no server, no
external files: images are embedded as data URIs)."""
from __future__ import annotations

import base64
import csv
import heapq
import html
import io
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from hemaseg.core.vocabulary import CATEGORIES, EXPORT_LABELS, NOT_IN_DIFFERENTIAL, WBC_TYPES
from hemaseg.io.writers import atomic_path, write_text
from hemaseg.pipelines.analyze import Analysis, call_of, call_probs, differential, differential_size, floor2
from hemaseg.pipelines.segment import RED_CELL_UM, diameter_from_pixel_size
from hemaseg.version import __version__


def export_labels(entries: list[dict]) -> list[str]:
    """:data:`EXPORT_LABELS`, then any further class name in ``entries`` (sorted): an untyped WBC
    (``wbc``) or a PBC class (``ig``, ``erythroblast``) is exported under its own label, not lost.

    >>> export_labels([{"masks": [{"class_name": "wbc"}, {"class_name": "rbc"}]}])[-1]
    'wbc'
    """
    extra = sorted({m["class_name"] for e in entries for m in e["masks"]} - set(EXPORT_LABELS))
    return [*EXPORT_LABELS, *extra]

COUNT_COLUMNS = ["filename", "rbc", "wbc", "platelet", *WBC_TYPES,
                 *(f"{t}{s}" for t in WBC_TYPES for s in ("_pct", "_pct_lo", "_pct_hi"))]
BATCH_ROW = "(all images)"  # counts.csv's last row: every photo of the batch pooled
MIN_DIFFERENTIAL = 100  # WBCs: a manual differential counts at least this many (CLSI H20)
RESEARCH_ONLY = "Research use only, not for diagnosis."
BY_TYPE_SHOWN = 40  # a batch's gallery by type: the least sure cells of each type shown (memory flat in the photos)
CONFIDENCE_NOTE = ("The number under each cell is the classifier confidence, calibrated: the typer's probability "
                   "for the type shown, temperature-scaled on held-out cells so that it matches how often such "
                   "calls were right there (e.g. about 8 in 10 at 0.80). On another lab's photos it may be too high.")


def pooled_counts(analyses: list[Analysis]) -> dict[str, int]:
    """Counts of every photo added up: rbc, wbc, platelet and each type any of them counts."""
    keys = dict.fromkeys([*CATEGORIES, *(t for a in analyses for t in a.types)])
    return {k: sum(a.counts.get(k, 0) for a in analyses) for k in keys}


def pooled_types(analyses: list[Analysis], types: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The types counted in a batch: the five, then any further one a typer names (``types``: the batch's typer's,
    so a batch whose every photo failed keeps the columns of one that did not)."""
    return tuple(dict.fromkeys([*WBC_TYPES, *types, *(t for a in analyses for t in a.types)]))


def counts_csv(analyses: list[Analysis], types: tuple[str, ...] = ()) -> str:
    """CSV text: one row per image, then one row (``filename`` :data:`BATCH_ROW`) for all of them
    pooled. DESIGN.md columns: counts, then each type's differential in percent with its exact
    binomial 95 % interval (``<type>_pct``, ``_pct_lo``, ``_pct_hi``); further types the typer
    names (``ig``, ``erythroblast``, ...) are appended as columns the same way; the last column,
    ``unsure``, counts the WBCs in no type's count (their type left to a person), so that ``wbc`` is the
    types' counts plus ``unsure``. A row with no typed WBC has no share (``_pct`` empty) and the
    interval 0-100: nothing is known, not "0 %". ``types``: the typer's (:func:`pooled_types`)."""
    types = pooled_types(analyses, types)
    extra = [t for t in types if t not in WBC_TYPES]
    extra_pct = [t for t in extra if t not in NOT_IN_DIFFERENTIAL]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COUNT_COLUMNS + extra + [f"{t}{s}" for t in extra_pct for s in ("_pct", "_pct_lo", "_pct_hi")]
               + ["unsure"])

    def row(name: str, counts: dict[str, int], kinds: tuple[str, ...]) -> list:
        diff = differential(counts, kinds)
        typed = differential_size(counts, kinds) > 0

        def pct(t: str) -> list[str]:  # no typed WBC: no share (empty), an interval of 0-100
            v = diff.get(t, (0.0, 0.0, 100.0))
            return [f"{v[0]:.1f}" if typed else "", f"{v[1]:.1f}", f"{v[2]:.1f}"]

        return [name, *(counts.get(c, 0) for c in ("rbc", "wbc", "platelet")),
                *(counts.get(t, 0) for t in WBC_TYPES), *(v for t in WBC_TYPES for v in pct(t)),
                *(counts.get(t, 0) for t in extra), *(v for t in extra_pct for v in pct(t)),
                counts.get("wbc", 0) - sum(counts.get(t, 0) for t in kinds)]

    for a in analyses:
        w.writerow(row(a.entry["filename"], a.counts, a.types))
    if analyses:
        w.writerow(row(BATCH_ROW, pooled_counts(analyses), types))
    return buf.getvalue()


def _data_uri(image: np.ndarray, max_side: int = 1024, fmt: str = ".jpg") -> str:
    h, w = image.shape[:2]
    f = min(1.0, max_side / max(h, w))
    if f < 1:
        image = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    params = [cv2.IMWRITE_JPEG_QUALITY, 85] if fmt == ".jpg" else []
    ok, buf = cv2.imencode(fmt, np.ascontiguousarray(image[..., ::-1]), params)
    mime = "jpeg" if fmt == ".jpg" else "png"
    return f"data:image/{mime};base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}
table.meta td,table.meta th{text-align:left}.ruo{font-weight:bold}
.warning{border:2px solid #c60;background:#fff4e5;padding:.5em .8em;font-weight:bold}
.thumbs{display:flex;flex-wrap:wrap;gap:.4em}.thumbs figure{margin:0;text-align:center;font-size:.8em}
.review figure{border:2px solid #c60;padding:2px}img.overlay{max-width:100%;border:1px solid #ccc}.failed{color:#a00}"""


def _confidence(record: dict, rbc_diameter: float | None) -> float:
    """The calibrated probability of the type the typer called a WBC (:func:`call_of`: a platelet call ruled out
    for a cell too big is no confidence; 1.0 for an untyped record)."""
    return call_of(record, rbc_diameter)[1]


def _top_types(record: dict, rbc_diameter: float | None, k: int = 2) -> str:
    """The ``k`` most probable types of a WBC, without a platelet call ruled out for its size (the others
    renormalised, as :func:`call_of`)."""
    return " / ".join(f"{t} {floor2(p)}" for t, p in call_probs(record, rbc_diameter)[:k])


def _pixel_scale(entries: list[dict]) -> str:
    sizes = sorted({e["pixel_size_um"] for e in entries if e.get("pixel_size_um")})
    if not sizes:
        return "not known (no µm per px given or in the files); red-cell diameters in px are under each image"
    missing = sum(1 for e in entries if not e.get("pixel_size_um"))
    text = ", ".join(f"{s:g} µm/px" for s in sizes)
    return text + (f" ({missing} image(s) without one)" if missing else "")


def repeated_photos(entries: list[dict]) -> list[tuple[str, str]]:
    """(name, name of the first with the same pixels) of each entry whose photo an earlier entry already holds
    (the same file given twice, through a link or a copy): its cells would be counted twice in the totals.

    >>> repeated_photos([{"filename": "a.jpg", "pixels_sha256": "1"}, {"filename": "b/a.jpg", "pixels_sha256": "1"},
    ...                  {"filename": "c.jpg", "pixels_sha256": "2"}])
    [('b/a.jpg', 'a.jpg')]
    """
    first: dict[str, str] = {}
    out = []
    for e in entries:
        h = e.get("pixels_sha256")
        if h and h in first:
            out.append((e["filename"], first[h]))
        elif h:
            first[h] = e["filename"]
    return out


def _post_said(entries: list[dict]) -> str:
    """The cells post-processing knobs given over the model card's (``--post``), as the entries record them."""
    given = {}
    for e in entries:
        for k, v in (e.get("postprocess") or {}).items():
            given.setdefault(k, [])
            if v not in given[k]:
                given[k].append(v)
    if not given:
        return "the cells model's own"
    return "; ".join(f"{k}={' or '.join(map(str, v))}" for k, v in sorted(given.items())) + " (given, --post)"


def _thumbs(cells: list[tuple[dict, str, str]], cls: str = "") -> str:
    """Thumbnails: (record, data URI, label) each."""
    figs = "".join(f"<figure><img alt=\"{html.escape(label)}\" src=\"{uri}\">"
                   f"<figcaption>{html.escape(label)}</figcaption></figure>" for _, uri, label in cells)
    return f"<div class=\"thumbs{' ' + cls if cls else ''}\">{figs}</div>"


STAMP = "%Y-%m-%d %H:%M:%S %z"  # the report's dates: local time with its offset


def timestamp() -> str:
    """Now, as the report writes dates (:data:`STAMP`)."""
    return datetime.now().astimezone().strftime(STAMP)


def _span(times: list[str]) -> str:
    """The first and last of ``times`` (:data:`STAMP` strings, perhaps of other offsets: a Dask worker's, a
    clock change), compared as instants."""
    order = sorted(times, key=lambda t: datetime.strptime(t, STAMP))
    return order[0] if order[0] == order[-1] else f"{order[0]} to {order[-1]}"


def image_record(analysis: Analysis, overlay: np.ndarray, analysed: str | None = None) -> dict:
    """What the batch files need of one photo, JSON-ready: its results ``entry``, ``counts``,
    ``types``, ``cell_diameter``, ``models``, the report's downscaled ``overlay`` (a JPEG data URI)
    and one ``crops`` thumbnail (PNG data URI) per WBC of ``entry["masks"]``, in mask order; ``analysed``: when
    the photo was analysed (a batch's parts keep it; the report dates the analysis by it)."""
    return {"entry": analysis.entry, "counts": dict(analysis.counts), "types": list(analysis.types),
            "cell_diameter": float(analysis.cell_diameter), "models": dict(analysis.models),
            "overlay": _data_uri(overlay), "crops": [_data_uri(c, 96, ".png") for c in analysis.wbc_crops],
            **({"analysed": analysed} if analysed else {})}


def light_analysis(record: dict) -> Analysis:
    """An :class:`Analysis` of an :func:`image_record` without its masks, crops or label image:
    what :func:`counts_csv` and :func:`pooled_counts` read."""
    entry = {k: v for k, v in record["entry"].items() if k != "masks"}
    return Analysis({**entry, "masks": []}, dict(record["counts"]), None, float(record["cell_diameter"]), [],
                    tuple(record["types"]), dict(record["models"]))


def report_chunks(records: Iterable[dict], failed: list[tuple[str, str]] | None = None,
                  title: str = "hemaseg smear report", date: str | None = None,
                  min_confidence: float | None = None) -> Iterator[str]:
    """The parts of :func:`report_html`, from :func:`image_record` records, one after another.
    ``records`` is iterated twice (totals first, then the images), so it may read them from disk
    one at a time: only the counts and the unsure cells' thumbnails are held. ``min_confidence``, when given,
    is said as the rule that made a WBC's type unsure."""
    date = date or timestamp()
    times: list[str] = []  # when each photo was analysed (a batch resumed: earlier than the report)
    undated = 0  # photos whose record says not (parts of a batch begun before they did)
    light: list[Analysis] = []
    unsure: list[tuple[str, dict, str, float]] = []
    n_unsure: list[int] = []
    any_crops = False
    by_type: dict[str, list] = {}  # type -> heap of (-confidence, order, label, crop): its least sure cells
    n_typed: dict[str, int] = {}
    for rec in records:
        light.append(light_analysis(rec))
        if rec.get("analysed"):
            times.append(str(rec["analysed"]))
        else:
            undated += 1
        wbcs = [m for m in rec["entry"]["masks"] if m["category"] == "wbc"]
        rbc_d = float(rec["cell_diameter"])
        mine = [(rec["entry"]["filename"], r, c, rbc_d) for r, c in zip(wbcs, rec["crops"]) if r.get("unsure")]
        unsure += mine
        n_unsure.append(len(mine))
        any_crops = any_crops or bool(rec["crops"])
        for r, c in zip(wbcs, rec["crops"]):
            if r.get("unsure") or r["class_name"] == "wbc":  # listed for review, or no typer asked
                continue
            conf = _confidence(r, rbc_d)
            n_typed[r["class_name"]] = n_typed.get(r["class_name"], 0) + 1
            heap = by_type.setdefault(r["class_name"], [])
            item = (-conf, sum(n_typed.values()), f"{rec['entry']['filename']}: {floor2(conf)}", c)
            (heapq.heappush if len(heap) < BY_TYPE_SHOWN else heapq.heappushpop)(heap, item)
    entries = [a.entry for a in light]
    counts = pooled_counts(light)
    types = pooled_types(light)
    kinds = [t for t in types if t not in NOT_IN_DIFFERENTIAL]
    n_diff = differential_size(counts, types)
    samples = list(dict.fromkeys(str(e["sample_id"]) for e in entries if e.get("sample_id") is not None))
    models: dict[str, list[str]] = {}
    for a in light:
        for role, label in a.models.items():
            models.setdefault(role, [])
            if label not in models[role]:
                models[role].append(label)

    yield (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
           f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>")
    yield f"<p class=\"ruo\">{RESEARCH_ONLY}</p>"
    meta = [["sample", ", ".join(samples) if samples else "not given (hemaseg analyze --sample-id ID)"],
            *([["date of analysis", _span(times) + (f" ({undated} photo(s): not recorded)" if undated else "")],
               ["report written", date]] if times else [["date of analysis", date]]),
            ["software", f"hemaseg {__version__}"],
            *([f"{role} model", "; ".join(labels)] for role, labels in models.items()),
            ["pixel scale", _pixel_scale(entries)],
            ["cells post-processing", _post_said(entries)],
            *([["unsure type", f"a WBC whose type's calibrated probability is under {min_confidence:g} "
                               "(--min-confidence), a grey photo's WBCs, and one the typer calls a platelet though "
                               "too big for one are listed for review, counted in no type" if min_confidence
                               else "none: every WBC typed (--min-confidence 0)"]]
              if min_confidence is not None else []),
            ["images", f"{len(light)} analysed" + (f", {len(failed)} not analysed" if failed else "")]]
    yield "<table class=\"meta\"><tbody>" + "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in meta) + "</tbody></table>"
    yield ("<p>Outlines: red = RBC, blue = WBC, yellow = platelet; each WBC carries its type (first four "
           "letters; WBC? = type unsure).</p>")
    yield "<h2>Totals</h2>" + _table(["", "RBC", "WBC", "platelets"],
                                     [["all images", counts["rbc"], counts["wbc"], counts["platelet"]]])
    if counts.get("erythroblast"):  # nucleated red cells are found as WBCs; a lab's WBC count leaves them out
        n_e = counts["erythroblast"]
        yield (f"<p>Of the {counts['wbc']} WBCs found, {n_e} the typer calls erythroblasts (nucleated red cells, "
               f"{100 * n_e / max(1, counts['wbc'] - n_e):.1f} per 100 other WBCs): the WBC count without them is "
               f"<strong>{counts['wbc'] - n_e}</strong> (counts.csv's wbc column holds every WBC found).</p>")

    diff = differential(counts, types)
    yield "<h2>WBC differential</h2>"
    yield (f"<p>Rests on <strong>{n_diff}</strong> typed white cell(s) of {counts['wbc']} found"
           + (f"; {len(unsure)} whose type the classifier is unsure of are listed for review below and "
              "counted in no type" if unsure else "") + ".</p>")
    repeated = repeated_photos(entries)
    if repeated:
        yield (f"<p class=\"warning\">Warning: {len(repeated)} photo(s) hold the same pixels as another given before "
               "(" + html.escape("; ".join(f"{a} as {b}" for a, b in repeated[:5])) + ("; ..." if len(repeated) > 5 else "")
               + "): their cells are counted again in the totals and the differential.</p>")
    if n_diff < MIN_DIFFERENTIAL:
        yield (f"<p class=\"warning\">Warning: this differential rests on {n_diff} white cell(s), fewer than "
               f"the {MIN_DIFFERENTIAL} of a manual differential. Each percentage is uncertain by the width "
               "of its 95 % interval; count more fields before relying on it.</p>")
    yield _table(["type", "count", "percent", "95 % interval"],
                 [[t, counts.get(t, 0), f"{diff[t][0]:.1f}" if n_diff else "-",
                   f"{diff[t][1]:.1f} - {diff[t][2]:.1f}" if n_diff else "-"] for t in kinds])
    beside = [t for t in types if t in NOT_IN_DIFFERENTIAL and counts.get(t, 0)]
    if beside:
        yield ("<p>Not leukocytes, so outside the differential, though among the WBCs found: "
               + ", ".join(f"{t} {counts[t]}" for t in beside) + ".</p>")
    yield ("<p>Interval: exact binomial (Clopper-Pearson), the interval Rümke's table gives; it covers "
           "counting chance only, not classifier errors.</p>")

    yield "<h2>Counts per image</h2>" + _table(
        ["image", "RBC", "WBC", "platelets", *kinds, *beside, "unsure"],
        [[a.entry["filename"], a.counts["rbc"], a.counts["wbc"], a.counts["platelet"],
          *(a.counts.get(t, 0) for t in [*kinds, *beside]), n] for a, n in zip(light, n_unsure)]
        + [["all images", counts["rbc"], counts["wbc"], counts["platelet"],
            *(counts.get(t, 0) for t in [*kinds, *beside]), len(unsure)]])
    if failed:
        items = "".join(f"<li>{html.escape(p)}: {html.escape(r)}</li>" for p, r in failed)
        yield f"<h2 class=\"failed\">Not analysed</h2><ul class=\"failed\">{items}</ul>"

    if unsure:
        unsure.sort(key=lambda frcd: _confidence(frcd[1], frcd[3]))
        rule = (f" (the type's calibrated probability under {min_confidence:g}, hemaseg analyze "
                "--min-confidence; a grey photo's WBCs; a cell the typer calls a platelet, too big for one)"
                if min_confidence else "")
        yield (f"<h2>For review: {len(unsure)} white cell(s) of unsure type</h2><p>Unsure{rule}. Each says why, "
               "then its most probable types with their calibrated probabilities (rounded down), least sure first. "
               "Not counted in the differential.</p>")
        yield _thumbs([(r, c, f"{f}: " + (f"{r['unsure_reason']}; " if r.get("unsure_reason") else "")
                        + _top_types(r, d)) for f, r, c, d in unsure], "review")
    del unsure
    if any_crops:
        unfitted = any("not fitted to it" in label for labels in models.values() for label in labels)
        yield f"<p>{CONFIDENCE_NOTE}" + (" Here the typer's temperature was not fitted to its own held-out cells "
                                         "(too few of them; its model line says so): its confidences are "
                                         "uncalibrated." if unfitted else "") + "</p>"
    if len(light) > 1 and by_type:  # as a CellaVision review screen: the batch's cells by type, least sure first
        yield ("<h2>White cells by type</h2><p>The typed white cells of every photo, by type, least sure first "
               f"(at most {BY_TYPE_SHOWN} a type; each photo's own cells are under it below).</p>")
        for t in [*[t for t in types if t in by_type], *sorted(set(by_type) - set(types))]:
            cells = sorted(by_type[t], key=lambda item: (-item[0], item[1]))
            shown = f", the {len(cells)} least sure shown" if n_typed[t] > len(cells) else ""
            yield f"<h3>{html.escape(t)}: {n_typed[t]} cell(s){shown}</h3>"
            yield _thumbs([(None, c, label) for _, _, label, c in cells])
    del by_type, light
    for rec in records:
        e = rec["entry"]
        name = html.escape(e["filename"])
        scale = f", {e['pixel_size_um']:g} µm/px" if e.get("pixel_size_um") else ""
        c = rec["counts"]
        # with no red cell found the diameter is the one given, or the model's trained one: nothing measured it
        unmeasured = " (no red cell found to measure it by)" if not c.get("rbc") else ""
        if e.get("pixel_size_um") and float(rec["cell_diameter"]) == diameter_from_pixel_size("cells", e["pixel_size_um"]):
            unmeasured = f" ({RED_CELL_UM:g} µm at the pixel scale, not measured)"
        elif e.get("cell_diameter_from") == "given":
            unmeasured = " (given, --cell-diameter: not measured)"
        if not (c.get("rbc") or c.get("wbc") or c.get("platelet")):
            unmeasured += "; no cell found: a blank or unusable field?"
        yield (f"<h2>{name}</h2><p>{e['width']}x{e['height']} px{scale}, red-cell diameter "
               f"{float(rec['cell_diameter']):.1f} px{unmeasured}; RBC {c['rbc']}, WBC {c['wbc']}, "
               f"platelets {c['platelet']}</p>")
        yield f"<img class=\"overlay\" alt=\"overlay of {name}\" src=\"{rec['overlay']}\">"
        wbcs = [r for r in e["masks"] if r["category"] == "wbc"]
        rbc_d = float(rec["cell_diameter"])
        typed = sorted(((r, u) for r, u in zip(wbcs, rec["crops"]) if not r.get("unsure")),
                       key=lambda ru: _confidence(ru[0], rbc_d))
        if typed:
            yield _thumbs([(r, u, f"{r['class_name']} {floor2(_confidence(r, rbc_d))}") for r, u in typed])
    yield f"<p class=\"ruo\">{RESEARCH_ONLY}</p>"
    yield "</body>\n</html>\n"


def report_html(analyses: list[Analysis], overlays: list[np.ndarray], failed: list[tuple[str, str]] | None = None,
                title: str = "hemaseg smear report", date: str | None = None,
                min_confidence: float | None = None) -> str:
    """One HTML page: sample, date, versions; totals and the differential with its 95 % intervals
    and the number of WBCs it rests on (a warning under :data:`MIN_DIFFERENTIAL`); the cells whose
    type is unsure, for review; then per image its counts, overlay and WBC gallery (least sure first).
    ``date`` defaults to now."""
    records = [image_record(a, ov) for a, ov in zip(analyses, overlays)]
    return "\n".join(report_chunks(records, failed, title, date, min_confidence))


def write_report(path: str | Path, analyses: list[Analysis], overlays: list[np.ndarray],
                 failed: list[tuple[str, str]] | None = None, date: str | None = None) -> Path:
    return write_text(path, report_html(analyses, overlays, failed, date=date))


def write_report_records(path: str | Path, records: Iterable[dict], failed: list[tuple[str, str]] | None = None,
                         title: str = "hemaseg smear report", date: str | None = None,
                         min_confidence: float | None = None) -> Path:
    """:func:`report_html` of :func:`image_record` records (iterated twice), written as it is made,
    atomically: the page is never one string in memory."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:  # (write_text)
        for k, chunk in enumerate(report_chunks(records, failed, title, date, min_confidence)):
            f.write(("\n" if k else "") + chunk)
    return Path(path)
