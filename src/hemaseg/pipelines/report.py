"""Outputs of ``hemaseg analyze``: counts.csv and a self-contained report.html (no server, no
external files: images are embedded as data URIs)."""
from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path

import cv2
import numpy as np

from hemaseg.core.vocabulary import WBC_TYPES
from hemaseg.io.writers import write_text
from hemaseg.pipelines.analyze import Analysis

COUNT_COLUMNS = ["filename", "rbc", "wbc", "platelet", *WBC_TYPES, *(f"{t}_pct" for t in WBC_TYPES)]


def counts_csv(analyses: list[Analysis]) -> str:
    """CSV text: one row per image (DESIGN.md columns, then the differential in percent); further
    types the typer names (``ig``, ``erythroblast``, ...) are appended as columns, as DESIGN.md says."""
    extra = [t for t in dict.fromkeys(t for a in analyses for t in a.types) if t not in WBC_TYPES]
    extra_pct = [t for t in extra if any(t in a.differential for a in analyses)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COUNT_COLUMNS + extra + [f"{t}_pct" for t in extra_pct])
    for a in analyses:
        diff = a.differential
        w.writerow([a.entry["filename"], *(a.counts[c] for c in ("rbc", "wbc", "platelet")),
                    *(a.counts[t] for t in WBC_TYPES), *(f"{diff[t]:.1f}" for t in WBC_TYPES),
                    *(a.counts.get(t, 0) for t in extra), *(f"{diff.get(t, 0.0):.1f}" for t in extra_pct)])
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
.thumbs{display:flex;flex-wrap:wrap;gap:.4em}.thumbs figure{margin:0;text-align:center;font-size:.8em}
img.overlay{max-width:100%;border:1px solid #ccc}.failed{color:#a00}"""


def report_html(analyses: list[Analysis], overlays: list[np.ndarray], failed: list[tuple[str, str]] | None = None,
                title: str = "hemaseg smear report") -> str:
    """One HTML page: totals and differential, then per image its counts, overlay and WBC thumbnails."""
    total = {k: sum(a.counts[k] for a in analyses) for k in ("rbc", "wbc", "platelet", *WBC_TYPES)}
    typed = sum(total[t] for t in WBC_TYPES)
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{html.escape(title)}</title>"
             f"\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>"]
    parts.append(f"<p>{len(analyses)} image(s) analysed. Outlines: red = RBC, blue = WBC, yellow = platelet.</p>")
    parts.append("<h2>Totals</h2>" + _table(["", "RBC", "WBC", "platelets"],
                                            [["all images", total["rbc"], total["wbc"], total["platelet"]]]))
    parts.append("<h2>WBC differential</h2>" + _table(
        ["type", "count", "percent"],
        [[t, total[t], f"{100 * total[t] / typed:.1f}" if typed else "-"] for t in WBC_TYPES]))
    parts.append("<h2>Counts per image</h2>" + _table(
        ["image", "RBC", "WBC", "platelets", *WBC_TYPES],
        [[a.entry["filename"], a.counts["rbc"], a.counts["wbc"], a.counts["platelet"], *(a.counts[t] for t in WBC_TYPES)]
         for a in analyses]))
    if failed:
        items = "".join(f"<li>{html.escape(p)}: {html.escape(r)}</li>" for p, r in failed)
        parts.append(f"<h2 class=\"failed\">Not analysed</h2><ul class=\"failed\">{items}</ul>")
    for a, ov in zip(analyses, overlays):
        name = html.escape(a.entry["filename"])
        parts.append(f"<h2>{name}</h2><p>{a.entry['width']}x{a.entry['height']} px, red-cell diameter "
                     f"{a.cell_diameter:.1f} px; RBC {a.counts['rbc']}, WBC {a.counts['wbc']}, platelets "
                     f"{a.counts['platelet']}</p>")
        parts.append(f"<img class=\"overlay\" alt=\"overlay of {name}\" src=\"{_data_uri(ov)}\">")
        wbcs = [r for r in a.entry["masks"] if r["category"] == "wbc"]
        if wbcs:
            figs = "".join(
                f"<figure><img alt=\"{html.escape(r['class_name'])}\" src=\"{_data_uri(c, 96, '.png')}\">"
                f"<figcaption>{html.escape(r['class_name'])} {max(r.get('type_probs', {'': 1}).values()):.2f}"
                "</figcaption></figure>" for r, c in zip(wbcs, a.wbc_crops))
            parts.append(f"<div class=\"thumbs\">{figs}</div>")
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def write_report(path: str | Path, analyses: list[Analysis], overlays: list[np.ndarray],
                 failed: list[tuple[str, str]] | None = None) -> Path:
    return write_text(path, report_html(analyses, overlays, failed))
