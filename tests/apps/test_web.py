"""hemaseg serve (issue 27): the real page in headless Chromium (upload the bundled sample, see the
counts, correct one WBC in the gallery, download counts.csv reflecting the correction), and the
Flask test client (bad uploads get a message and the server goes on; a correction recounts the
counts, the differential and every download file)."""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import socket
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemaseg.apps.web import Session, create_app
from hemaseg.core.vocabulary import WBC_TYPES
from hemaseg.pipelines.analyze import Analysis, count_records

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "hemaseg" / "samples" / "BloodImage_00000.jpg"
# HEMASEG_WEB_SCREENSHOT=docs/web.png: the browser test saves its screenshot of the analysed sample there.
SCREENSHOT = os.environ.get("HEMASEG_WEB_SCREENSHOT")


def _record(kind: str, x: int, y: int, r: int = 6, **extra) -> dict:
    """A seed-003 record: a square of side 2r at (x, y) of class ``kind``."""
    category = kind if kind in ("rbc", "platelet", "wbc") else "wbc"
    return {"class_name": kind, "category": category, "score": 0.9, "area": 4 * r * r,
            "bounding_box": {"x1": x - r, "y1": y - r, "x2": x + r, "y2": y + r},
            "vertices": [[x - r, y - r], [x + r, y - r], [x + r, y + r], [x - r, y + r]], **extra}


def _analysis(filename: str = "smear.png") -> tuple[np.ndarray, Analysis]:
    """A 64x64 photo's analysis by hand: 2 RBCs, a platelet, a neutrophil (0.90), a lymphocyte
    (0.60) and a WBC the typer was unsure of (0.40, untyped)."""
    image = np.full((64, 64, 3), 220, np.uint8)
    probs = lambda top, p: {t: (p if t == top else round((1 - p) / 4, 4)) for t in WBC_TYPES}  # noqa: E731
    masks = [_record("rbc", 10, 10), _record("rbc", 30, 10), _record("platelet", 50, 10, 3),
             _record("neutrophil", 10, 40, type_probs=probs("neutrophil", 0.9)),
             _record("lymphocyte", 30, 40, type_probs=probs("lymphocyte", 0.6)),
             _record("wbc", 50, 40, type_probs=probs("monocyte", 0.4), unsure=True)]
    counts = {"rbc": 2, "wbc": 3, "platelet": 1, "neutrophil": 1, "lymphocyte": 1, "monocyte": 0,
              "eosinophil": 0, "basophil": 0}
    entry = {"filename": filename, "height": 64, "width": 64, "cell_diameter": 12.0, "scale": 1.0, "masks": masks}
    crops = [np.full((16, 16, 3), v, np.uint8) for v in (10, 20, 30)]
    return image, Analysis(entry, counts, np.zeros((64, 64), np.int32), 12.0, crops, WBC_TYPES,
                           {"cells": "hand-made", "wbc-type": "hand-made"})


def _csv_rows(text: str) -> dict[str, dict[str, str]]:
    return {row["filename"]: row for row in csv.DictReader(io.StringIO(text))}


@pytest.fixture
def client(tmp_path):
    pytest.importorskip("flask", reason="hemaseg serve needs Flask: pip install 'hemaseg[web]'")
    app = create_app(tmp_path / "work", max_upload_mb=0.05)
    app.config["TESTING"] = True
    c = app.test_client()
    res = c.get("/")
    assert res.status_code == 302
    sid = res.headers["Location"].rstrip("/").split("/")[-1]
    return c, sid, app.extensions["hemaseg"].get(sid)


def test_count_records_counts_as_the_pipeline_does():
    _, a = _analysis()
    assert count_records(a.entry["masks"], a.types) == a.counts


def test_bad_uploads_get_a_message_and_the_server_goes_on(client, tmp_path):
    c, sid, session = client
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a PNG")
    cases = [({"image": (io.BytesIO(bad.read_bytes()), "broken.png")}, 400, "broken.png: not an image"),
             ({"image": (io.BytesIO(b"counts"), "notes.txt")}, 400, "notes.txt: not an image file"),
             ({"image": (io.BytesIO(b""), "empty.jpg")}, 400, "empty.jpg: empty file"),
             ({"image": (io.BytesIO(os.urandom(80_000)), "huge.jpg")}, 413, "file too large"),
             ({}, 400, "no file in the upload"),
             # the limit is the photo's (52,428 bytes here), not the request's with its multipart headers
             ({"image": (io.BytesIO(os.urandom(52_400)), "just.jpg")}, 400, "just.jpg: not an image"),
             # a second photo in one request was dropped without a word
             ({"image": [(io.BytesIO(b"a"), "one.jpg"), (io.BytesIO(b"b"), "two.jpg")]}, 400, "2 files in one upload")]
    for data, status, text in cases:
        res = c.post(f"/api/s/{sid}/images", data=data, content_type="multipart/form-data")
        assert res.status_code == status, (text, res.get_json())
        assert res.get_json()["error"].startswith(text), res.get_json()
    # Still answering: the page, the state (with the failures listed), and nothing was analysed.
    assert c.get(f"/s/{sid}").status_code == 200
    state = c.get(f"/api/s/{sid}/state").get_json()
    assert state["images"] == [] and state["totals"] == {"rbc": 0, "wbc": 0, "platelet": 0}
    # (a photo over the limit is listed too, as every other refused file: a walkthrough, stop 71)
    assert [f["filename"] for f in state["failed"]] == ["broken.png", "notes.txt", "empty.jpg", "huge.jpg", "just.jpg"]
    assert c.get(f"/api/s/{sid}/download/counts.csv").status_code == 404  # nothing to download yet
    assert c.get("/api/s/no-such-session/state").status_code == 404
    assert c.get(f"/api/s/{sid}/download/..%2Fsecret").status_code == 404
    assert not any(session.folder.glob("*.json"))


def test_a_correction_recounts_counts_differential_and_files(client):
    c, sid, session = client
    session.add(*_analysis())
    state = c.get(f"/api/s/{sid}/state").get_json()
    # Gallery: least sure first (the unsure one, then the lymphocyte, then the neutrophil).
    assert [(g["cell"], g["class_name"]) for g in state["gallery"]] == [(5, "wbc"), (4, "lymphocyte"),
                                                                       (3, "neutrophil")]
    assert state["n_differential"] == 2 and state["untyped"] == 1
    assert c.get(f"/api/s/{sid}/thumb/0/4.png").data[:8] == b"\x89PNG\r\n\x1a\n"
    assert c.get(f"/api/s/{sid}/thumb/0/0.png").status_code == 404  # an RBC has no thumbnail

    # The lymphocyte was a neutrophil; the unsure cell is a monocyte.
    res = c.post(f"/api/s/{sid}/cells/0/4", json={"type": "neutrophil"})
    assert res.status_code == 200, res.get_json()
    state = c.post(f"/api/s/{sid}/cells/0/5", json={"type": "monocyte"}).get_json()
    diff = {d["type"]: d for d in state["differential"]}
    assert (diff["neutrophil"]["count"], diff["lymphocyte"]["count"], diff["monocyte"]["count"]) == (2, 0, 1)
    assert diff["neutrophil"]["pct"] == pytest.approx(66.7) and diff["neutrophil"]["lo"] < 66.7 < diff["neutrophil"]["hi"]
    assert state["n_differential"] == 3 and state["untyped"] == 0 and state["totals"]["wbc"] == 3

    rows = _csv_rows(c.get(f"/api/s/{sid}/download/counts.csv").data.decode())
    row = rows["smear.png"]
    assert (row["neutrophil"], row["lymphocyte"], row["monocyte"]) == ("2", "0", "1")
    assert row["neutrophil_pct"] == "66.7" and row["lymphocyte_pct"] == "0.0"
    masks = json.loads(c.get(f"/api/s/{sid}/download/results.json").data)["data"]["0"]["masks"]
    assert masks[4]["class_name"] == "neutrophil" and masks[4]["corrected_from"] == "lymphocyte"
    assert masks[5]["class_name"] == "monocyte" and "unsure" not in masks[5]
    coco = json.loads(c.get(f"/api/s/{sid}/download/coco.json").data)
    names = {cat["id"]: cat["name"] for cat in coco["categories"]}
    assert [names[a["category_id"]] for a in coco["annotations"]][3:] == ["neutrophil", "neutrophil", "monocyte"]
    cvat = ET.fromstring(c.get(f"/api/s/{sid}/download/cvat.xml").data)
    assert [p.get("label") for p in cvat.iter("polygon")][3:] == ["neutrophil", "neutrophil", "monocyte"]

    # Back to the typer's call: no longer marked corrected; unknown types and non-WBCs refused.
    state = c.post(f"/api/s/{sid}/cells/0/4", json={"type": "lymphocyte"}).get_json()
    assert next(g for g in state["gallery"] if g["cell"] == 4)["corrected_from"] is None
    for cell, body in ((4, {"type": "dragon"}), (0, {"type": "neutrophil"}), (9, {"type": "neutrophil"})):
        res = c.post(f"/api/s/{sid}/cells/0/{cell}", json=body)
        assert res.status_code == 400 and res.get_json()["error"], res.get_json()


def test_session_writes_every_file_atomically(tmp_path):
    s = Session(tmp_path / "s")
    s.add(*_analysis("a.png"))
    s.add(*_analysis("b.png"))
    s.correct(1, 3, "wbc")  # b's neutrophil: back to review
    names = sorted(p.name for p in s.folder.iterdir())
    assert names == ["coco.json", "counts.csv", "cvat.xml", "overlays", "results.json", "uploads"]  # no temp left
    rows = _csv_rows((s.folder / "counts.csv").read_text())
    assert rows["a.png"]["neutrophil"] == "1" and rows["b.png"]["neutrophil"] == "0"
    assert rows["(all images)"]["neutrophil"] == "1" and rows["(all images)"]["wbc"] == "6"
    assert Image.open(s.folder / "overlays" / "1.png").size == (64, 64)


def test_serve_refuses_a_bad_port_or_host_in_one_line_before_loading_models():
    pytest.importorskip("flask", reason="hemaseg serve needs Flask: pip install 'hemaseg[web]'")
    from typer.testing import CliRunner

    from hemaseg.cli import app

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        for args, option in ((["--port", "70000"], "--port"), (["--port", str(taken)], "--port"),
                             (["--host", "192.0.2.1"], "--host"), (["--max-upload-mb", "0"], "--max-upload-mb"), (["--backend", "gpu"], "--backend"),
                             (["--port", "0", "--model", "no-such-model"], "--model: no-such-model"),
                             # a model of another task: every photo failed, blamed for it (a walkthrough, stop 65)
                             (["--port", "0", "--model", "wbc"], "--model: wbc is a wbc model"),
                             (["--port", "0", "--type-model", "cells"], "--type-model: cells is a cells model")):
            res = CliRunner().invoke(app, ["serve", *args])
            lines = [ln for ln in res.output.splitlines() if ln.strip()]
            assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith(option), (args, res.output)


# ---------------------------------------------------------------- the page in headless Chromium
def _browser_or_skip():
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (pip install selenium)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("the browser test needs Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver; `make test` installs them when run as root)")
    return webdriver, chromium, driver


@pytest.fixture
def live_server(tmp_path):
    pytest.importorskip("flask", reason="hemaseg serve needs Flask: pip install 'hemaseg[web]'")
    from werkzeug.serving import make_server

    app = create_app(tmp_path / "work")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", app.extensions["hemaseg"]
    server.shutdown()
    thread.join(10)


@pytest.fixture
def browser(tmp_path, monkeypatch):
    webdriver, chromium, chromedriver = _browser_or_skip()
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium-manager: download nothing
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1250", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    yield driver, downloads
    driver.quit()


@pytest.mark.timeout(180)
def test_page_upload_counts_correct_download(live_server, browser):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, sessions = live_server
    driver, downloads = browser
    # The page re-renders its tables and gallery on every change: an element found just before may go stale.
    wait = WebDriverWait(driver, 120, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,))
    driver.get(url + "/")
    assert "/s/" in driver.current_url
    sid = driver.current_url.rstrip("/").split("/")[-1]

    driver.find_element(By.ID, "files").send_keys(str(SAMPLE))  # what choosing the file in the dialog does
    msg = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#messages li"))[0]
    assert msg.text == "BloodImage_00000.jpg: analysed", msg.text
    session = sessions.get(sid)
    a = session.analyses[0]
    assert count_records(a.entry["masks"], a.types) == a.counts  # the web recount is the pipeline's count
    shown = {c: int(driver.find_element(By.ID, f"count-{c}").text) for c in ("rbc", "wbc", "platelet")}
    assert shown == {c: a.counts[c] for c in shown} and shown["rbc"] > 0 and shown["wbc"] > 0
    overlay = driver.find_element(By.CSS_SELECTOR, "figure.overlay img")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay))
    if SCREENSHOT:
        driver.save_screenshot(SCREENSHOT)

    # Correct the least sure WBC (the gallery's first) to another leukocyte type.
    thumb = driver.find_elements(By.CSS_SELECTOR, "#gallery .thumb")[0]
    old = thumb.get_attribute("data-type")
    cell = thumb.get_attribute("data-cell")
    new = next(t for t in WBC_TYPES if t != old)
    diff_count = lambda t: int(driver.find_element(By.CSS_SELECTOR, f"tr[data-type={t}] td.count").text)  # noqa: E731
    before = {t: diff_count(t) for t in WBC_TYPES}
    thumb.click()
    wait.until(lambda d: d.find_element(By.ID, "correct").is_displayed())
    driver.find_element(By.CSS_SELECTOR, f"#choices button[data-type={new}]").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"#gallery .thumb[data-cell='{cell}']")
               .get_attribute("data-type") == new)
    after = {t: diff_count(t) for t in WBC_TYPES}
    assert after[new] == before[new] + 1
    if old in WBC_TYPES:
        assert after[old] == before[old] - 1

    driver.find_element(By.ID, "download-counts").click()
    target = downloads / "counts.csv"
    deadline = time.time() + 30
    while not target.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert target.exists(), f"no download: {list(downloads.iterdir())}"
    row = _csv_rows(target.read_text())["BloodImage_00000.jpg"]
    assert int(row[new]) == a.counts[new] == before[new] + 1
    if old in WBC_TYPES:
        assert int(row[old]) == before[old] - 1
    n = sum(int(row[t]) for t in WBC_TYPES)
    assert float(row[f"{new}_pct"]) == pytest.approx(100 * int(row[new]) / n, abs=0.05)

    # A walkthrough: a failed upload was said at upload time only; a reload showed the results but not the failure.
    bad = downloads.parent / "notes.txt"
    bad.write_text("not a photo")
    driver.find_element(By.ID, "files").send_keys(str(bad))
    wait.until(lambda d: any("notes.txt" in li.text for li in d.find_elements(By.CSS_SELECTOR, "#messages li")))
    driver.refresh()
    wait.until(lambda d: d.find_elements(By.ID, "count-wbc"))
    said = [li.text for li in wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#messages li"))]
    assert len(said) == 1 and said[0].startswith("notes.txt: "), said


def test_the_same_photo_uploaded_twice_is_not_counted_twice(tmp_path):
    from hemaseg.errors import HemasegInputError

    session = Session(tmp_path / "work")
    image, a = _analysis("smear.png")
    session.add(image, a)
    Image.fromarray(image).save(tmp_path / "again.png")
    with pytest.raises(HemasegInputError, match="again.png: the same photo as smear.png"):
        session.analyze_file(tmp_path / "again.png", "again.png")  # refused before any analysis
    assert len(session.analyses) == 1 and session.state()["totals"]["wbc"] == 3


def test_uploads_side_by_side_keep_their_own_photos_names_and_count_once(tmp_path, monkeypatch):
    """Six photos named alike uploaded at once were stored under one file name (some analysed twice, others lost);
    the same photo uploaded three times at once counted three times; two photos named a.jpg gave COCO / CVAT
    files with two images of one name."""
    import hemaseg.apps.web as web

    def slow_analyze(image, filename, *args, **kwargs):
        time.sleep(0.2)
        _, a = _analysis(filename)
        a.entry["height"], a.entry["width"] = image.shape[:2]
        return a

    monkeypatch.setattr(web, "analyze", slow_analyze)
    session = Session(tmp_path / "work")
    assert len({session.next_upload() for _ in range(50)}) == 50
    paths = []
    for k in range(4):  # four different photos, all called same.jpg
        Image.fromarray(np.full((64, 64, 3), 100 + k, np.uint8)).save(tmp_path / f"p{k}.png")
        paths.append(tmp_path / f"p{k}.png")
    Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(tmp_path / "dup.png")
    errors = []

    def run(path, name):
        try:
            session.analyze_file(path, name)
        except Exception as exc:  # noqa: BLE001 (collected, checked below)
            errors.append(str(exc))

    threads = [threading.Thread(target=run, args=(p, "same.jpg")) for p in paths]
    threads += [threading.Thread(target=run, args=(tmp_path / "dup.png", "d.jpg")) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = sorted(a.entry["filename"] for a in session.analyses)
    assert names == ["d.jpg", "same.jpg", "same~2.jpg", "same~3.jpg", "same~4.jpg"], names
    assert len(errors) == 2 and all("the same photo as d.jpg" in e for e in errors), errors
    assert len(session.failed) == 2
    coco = json.loads((session.folder / "coco.json").read_text())
    assert len({i["file_name"] for i in coco["images"]}) == 5


def test_a_correction_body_that_is_no_json_object_is_a_400(client):
    c, sid, session = client
    image, a = _analysis()
    session.add(image, a)
    for body in ('["lymphocyte"]', '"lymphocyte"', '{"type":'):
        res = c.post(f"/api/s/{sid}/cells/0/4", data=body, content_type="application/json")
        assert res.status_code == 400 and "not a JSON object" in res.get_json()["error"], (body, res.data)


def test_opening_the_page_many_times_drops_empty_sessions_not_a_users_work(tmp_path):
    pytest.importorskip("flask")
    app = create_app(tmp_path / "work", max_sessions=3)
    c = app.test_client()
    sid = c.get("/").headers["Location"].rstrip("/").split("/")[-1]
    image, a = _analysis()
    app.extensions["hemaseg"].get(sid).add(image, a)
    for _ in range(10):  # a link prefetcher, a health check
        c.get("/")
    assert c.get(f"/api/s/{sid}/state").status_code == 200


def test_a_photos_reading_warnings_are_shown_with_it(client, tmp_path, monkeypatch):
    """A walkthrough (stop 65): a multi-page TIFF was analysed on its first plane without a word on the page,
    where the CLI says so. Its warnings come with the upload's answer and stay in the state (a reload shows them),
    named by the uploaded name, not the stored file's path; another photo's are not its."""
    import tifffile

    import hemaseg.apps.web as web

    def fake_analyze(image, filename, *args, **kwargs):
        _, a = _analysis(filename)
        a.entry["height"], a.entry["width"] = image.shape[:2]
        return a

    monkeypatch.setattr(web, "analyze", fake_analyze)
    c, sid, session = client
    tifffile.imwrite(tmp_path / "c5.tif", np.full((2, 40, 50, 3), 180, np.uint8))  # two fields in one file
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(tmp_path / "plain.png")
    answers = [c.post(f"/api/s/{sid}/images", data={"image": (io.BytesIO((tmp_path / n).read_bytes()), n)},
                      content_type="multipart/form-data") for n in ("c5.tif", "plain.png")]
    assert [r.status_code for r in answers] == [200, 200], [r.get_json() for r in answers]
    notes = answers[0].get_json()["notes"]
    assert len(notes) == 1 and notes[0].startswith("c5.tif: 2 planes") and "uploads" not in notes[0], notes
    assert answers[1].get_json()["notes"] == []
    assert [im["notes"] for im in c.get(f"/api/s/{sid}/state").get_json()["images"]] == [notes, []]

    # side by side (uploads run in threads): each photo gets its own warnings, every one of them
    log = logging.getLogger("hemaseg.pipelines.analyze")

    def warning_analyze(image, filename, *args, **kwargs):
        for k in range(20):
            log.warning("%s: warning %d", filename, k)
            time.sleep(0.002)
        return fake_analyze(image, filename)

    monkeypatch.setattr(web, "analyze", warning_analyze)
    session2 = Session(tmp_path / "work2")
    for k in range(4):
        Image.fromarray(np.full((40, 50, 3), 10 + k, np.uint8)).save(tmp_path / f"t{k}.png")
    threads = [threading.Thread(target=session2.analyze_file, args=(tmp_path / f"t{k}.png", f"t{k}.png"))
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = {im["filename"]: im["notes"] for im in session2.state()["images"]}
    assert got == {f"t{k}.png": [f"t{k}.png: warning {j}" for j in range(20)] for k in range(4)}, got


def test_a_correction_keeps_unsure_reason_true_and_an_upload_takes_the_files_scale(tmp_path, monkeypatch):
    """A walkthrough (stop 71): a grey photo's cell typed by hand kept "unsure_reason: a grey photo" in results.json,
    and one set to unsure by hand had none; the page called `analyze` without the file's pixel size, which
    `hemaseg analyze` sizes the red cells by (27 red cells on the page, 56 on the command line)."""
    import hemaseg.apps.web as web

    session = Session(tmp_path / "work")
    image, a = _analysis()
    a.entry["masks"][5]["unsure_reason"] = "a grey photo: no stain colours to type by"
    session.add(image, a)
    masks = a.entry["masks"]
    assert session.state()["gallery"][0]["reason"] == "a grey photo: no stain colours to type by"
    session.correct(0, 5, "monocyte")
    assert "unsure" not in masks[5] and "unsure_reason" not in masks[5]
    session.correct(0, 5, "wbc")  # back to the pipeline's call: its reason again
    assert masks[5]["unsure"] and masks[5]["unsure_reason"] == "a grey photo: no stain colours to type by"
    session.correct(0, 3, "wbc")  # a typed cell left for review by hand
    assert masks[3]["unsure"] and masks[3]["unsure_reason"] == "left for review by a person"
    saved = json.loads((tmp_path / "work" / "results.json").read_text())["data"]["0"]["masks"]
    assert saved[3]["unsure_reason"] == "left for review by a person"

    seen = {}
    monkeypatch.setattr(web, "analyze", lambda *args, **kw: seen.update(kw) or _analysis("tagged.png")[1])
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        tmp_path / "tagged.png", dpi=(254000 / 2.5, 254000 / 2.5))  # 0.25 µm per px
    session.analyze_file(tmp_path / "tagged.png", "tagged.png")
    assert seen["pixel_size"] == pytest.approx(0.25, rel=1e-3)


def test_an_upload_too_large_to_read_is_listed_by_the_name_the_page_sends(client):
    """A review (stop 71): an upload over the limit by more than Flask's reading margin was refused (413) before the
    upload's code ran, and so missing from the session's refused files, unlike one just over the limit."""
    c, sid, session = client
    res = c.post(f"/api/s/{sid}/images?name=big.jpg", data={"image": (io.BytesIO(os.urandom(400_000)), "big.jpg")},
                 content_type="multipart/form-data")
    assert res.status_code == 413 and res.get_json()["error"].startswith("file too large")
    assert [f["filename"] for f in c.get(f"/api/s/{sid}/state").get_json()["failed"]] == ["big.jpg"]
