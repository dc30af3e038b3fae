"""The local web page of ``hemaseg serve``: drop smear photos, see every cell outlined, the counts
and the WBC differential with its 95 % intervals, correct a WBC's type in the gallery, and download
results.json / counts.csv / COCO / CVAT that follow the corrections.

The page is plain HTML and a little JavaScript (``apps/templates``, ``apps/static``; no build
step), served by Flask (the ``web`` extra). Each browser tab is one :class:`Session`: its photos,
analyses and output files live in a folder of its own under the server's work folder. The
analysis is :func:`hemaseg.pipelines.analyze.analyze`, the files are written by the pipeline's
writers (:func:`~hemaseg.pipelines.report.counts_csv`, :func:`~hemaseg.io.annotations.write_results`,
:func:`~hemaseg.io.annotations.write_coco`, :func:`~hemaseg.io.annotations.write_cvat`), and a
correction recounts the corrected records as the pipeline counts them.
"""
from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from hemaseg.core.vocabulary import CATEGORIES, NOT_IN_DIFFERENTIAL
from hemaseg.engine.tiling import DEFAULT_TILE
from hemaseg.errors import HemasegError, HemasegInputError, HemasegUsageError
from hemaseg.io.annotations import write_coco, write_cvat, write_results
from hemaseg.io.images import IMAGE_SUFFIXES, pixels_sha256, read_image
from hemaseg.io.writers import atomic_path, write_png, write_text
from hemaseg.pipelines.analyze import (
    MIN_CONFIDENCE,
    Analysis,
    analyze,
    call_of,
    call_probs,
    count_records,
    differential,
    differential_size,
    draw_overlay,
)
from hemaseg.pipelines.report import (
    MIN_DIFFERENTIAL,
    RESEARCH_ONLY,
    counts_csv,
    export_labels,
    pooled_counts,
    pooled_types,
)
from hemaseg.pipelines.segment import file_pixel_size
from hemaseg.version import __version__

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
DEFAULT_PORT = 8765
DEFAULT_HOST = "127.0.0.1"
MAX_UPLOAD_MB = 50.0  # per request (one photo); Flask answers 413 above it
MULTIPART_ROOM = 64 * 1024  # bytes a request may hold beyond the photo: its multipart headers and boundaries
MAX_SESSIONS = 32  # beyond this a session is dropped (its folder too): an empty one first, else the oldest
# The files a session offers for download: name -> MIME type.
DOWNLOADS = {"results.json": "application/json", "counts.csv": "text/csv",
             "coco.json": "application/json", "cvat.xml": "application/xml"}
# COCO / CVAT label list, as `hemaseg analyze --coco/--cvat` writes it; any further class name the
# records carry (an unsure "wbc", "ig", "erythroblast") is appended after these.
UNTYPED = "wbc"  # the class name of a WBC whose type is left for a person to decide


def confidence(record: dict, rbc_diameter: float | None = None) -> float:
    """The typer's calibrated probability of the type it called a WBC (:func:`call_of`: not a platelet call ruled
    out for the cell's size; 1.0 when it has none)."""
    return call_of(record, rbc_diameter)[1]


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


class Session:
    """One user's photos, their analyses and corrections, and the files written from them.

    Parameters
    ----------
    folder
        Work folder of this session (created): ``uploads/`` (the photos as received),
        ``overlays/<k>.png``, and the :data:`DOWNLOADS` files, rewritten (atomically) after every
        analysis and correction.
    cells_model, type_model, device, tile, min_confidence, backend
        Passed to :func:`~hemaseg.pipelines.analyze.analyze`, as ``hemaseg analyze`` does.
    """

    def __init__(self, folder: str | Path, cells_model="cells", type_model="wbc-type", device: str = "cpu",
                 tile: int = DEFAULT_TILE, min_confidence: float = MIN_CONFIDENCE, backend: str = "auto") -> None:
        self.folder = Path(folder)
        (self.folder / "uploads").mkdir(parents=True, exist_ok=True)
        self.cells_model, self.type_model, self.device = cells_model, type_model, device
        self.tile, self.min_confidence, self.backend = tile, min_confidence, backend
        self.analyses: list[Analysis] = []
        self.images: list[np.ndarray] = []
        self.digests: list[str] = []  # of each photo's pixels: the same photo is not counted twice
        self.failed: list[tuple[str, str]] = []
        self.notes: list[list[str]] = []  # per photo: what reading or analysing it warned of (the CLI prints it)
        self.revision = 0  # bumped on every change: the page's cache-buster for overlays and files
        self.lock = threading.RLock()
        self.uploads = 0  # numbers each stored upload (taken under the lock: uploads run side by side)
        self.pending: dict[str, str] = {}  # digest -> name of each photo being analysed now
        self.reasons: dict[tuple[int, int], str | None] = {}  # the pipeline's unsure_reason of each cell corrected

    def next_upload(self) -> int:
        """A number no other upload of this session has (its stored file's prefix)."""
        with self.lock:
            self.uploads += 1
            return self.uploads - 1

    def _unique_name(self, filename: str) -> str:
        """``filename``, or ``stem~k.suffix`` when a photo of this session (or one being analysed) has that
        name: the downloads name photos by file name (COCO, CVAT, counts.csv rows)."""
        taken = {a.entry["filename"] for a in self.analyses} | set(self.pending.values())
        stem, suffix, k = Path(filename).stem, Path(filename).suffix, 2
        name = filename
        while name in taken:
            name, k = f"{stem}~{k}{suffix}", k + 1
        return name

    # ------------------------------------------------------------------ changes
    def analyze_file(self, path: str | Path, filename: str, lock: threading.Lock | None = None) -> Analysis:
        """Read ``path`` (:func:`~hemaseg.io.images.read_image`; a bad file raises
        :class:`~hemaseg.errors.HemasegInputError`), analyse it as ``filename`` and add it.
        ``lock`` serialises analyses across sessions (the CPU is shared)."""
        notes: list[str] = []
        try:
            with _warnings_of_this_thread(notes, {str(path): filename}):
                image = read_image(path)
        except HemasegInputError as exc:
            with self.lock:
                self.failed.append((filename, exc.reason))
            raise HemasegInputError(filename, exc.reason) from None
        digest = pixels_sha256(image)
        with self.lock:  # checked and reserved at once: the same photo uploaded twice side by side counts once
            first = (self.analyses[self.digests.index(digest)].entry["filename"] if digest in self.digests
                     else self.pending.get(digest))
            if first is not None:
                reason = f"the same photo as {first}, already in this session: not counted twice"
                self.failed.append((filename, reason))
                raise HemasegInputError(filename, reason)
            name = self._unique_name(filename)
            self.pending[digest] = name
        try:
            with lock or threading.Lock(), _warnings_of_this_thread(notes, {str(path): filename}):
                # the file's own scale, as `hemaseg analyze` takes it (a scale no microscope wrote: warned, ignored)
                analysis = analyze(image, name, self.cells_model, self.type_model, device=self.device,
                                   tile=self.tile, min_confidence=self.min_confidence, backend=self.backend,
                                   pixel_size=file_pixel_size(path))
            return self.add(image, analysis, notes)
        finally:
            with self.lock:
                self.pending.pop(digest, None)

    def add(self, image: np.ndarray, analysis: Analysis, notes: list[str] = ()) -> Analysis:
        """Add an analysed photo (its (H, W, 3) uint8 image, the analysis and the warnings its reading and
        analysis gave, shown beside it) and rewrite the files."""
        with self.lock:
            self.notes.append(list(notes))
            self.images.append(image)
            self.digests.append(analysis.entry.get("pixels_sha256") or pixels_sha256(image))  # (analyze's own)
            self.analyses.append(analysis)
            self._save(len(self.analyses) - 1)
        return analysis

    def correct(self, image_index: int, cell_index: int, new_type: str) -> dict:
        """Set the type of WBC ``cell_index`` (its index in the entry's ``masks``) of photo
        ``image_index`` to ``new_type`` (one of :meth:`choices`; :data:`UNTYPED` leaves it for
        review), recount that photo and rewrite the files. The record keeps the typer's
        ``type_probs`` and gains ``corrected_from`` (the typer's call) until set back to it.
        Returns the corrected record. Raises :class:`~hemaseg.errors.HemasegUsageError` for an
        unknown photo, cell or type."""
        with self.lock:
            if not 0 <= image_index < len(self.analyses):
                raise HemasegUsageError("image", f"no photo {image_index} in this session")
            a = self.analyses[image_index]
            masks = a.entry["masks"]
            if not 0 <= cell_index < len(masks) or masks[cell_index]["category"] != "wbc":
                raise HemasegUsageError("cell", f"no white cell {cell_index} in {a.entry['filename']}")
            if new_type not in self.choices(image_index):
                raise HemasegUsageError("type", f"{new_type!r} is not one of {', '.join(self.choices(image_index))}")
            r = masks[cell_index]
            original = r.get("corrected_from", r["class_name"])
            reason = self.reasons.setdefault((image_index, cell_index), r.get("unsure_reason"))  # the pipeline's
            r["class_name"] = new_type
            if new_type == UNTYPED:  # for review: the pipeline's reason when set back to it, else a person's
                r["unsure"] = True
                r["unsure_reason"] = reason if new_type == original and reason else "left for review by a person"
            else:
                r.pop("unsure", None)
                r.pop("unsure_reason", None)
            if new_type == original:
                r.pop("corrected_from", None)
            else:
                r["corrected_from"] = original
            a.counts = count_records(masks, a.types)
            self._save(image_index)
            return r

    def choices(self, image_index: int) -> list[str]:
        """The types a WBC of photo ``image_index`` can be given: the typer's types that are white
        cells (not a platelet), then :data:`UNTYPED`."""
        return [t for t in self.analyses[image_index].types if t not in CATEGORIES] + [UNTYPED]

    def _save(self, changed: int) -> None:
        """Redraw photo ``changed``'s overlay and rewrite every download file, atomically."""
        self.revision += 1
        write_png(self.folder / "overlays" / f"{changed}.png",
                  draw_overlay(self.images[changed], self.analyses[changed]))
        entries = [a.entry for a in self.analyses]
        labels = export_labels(entries)
        write_results(self.folder / "results.json", entries)
        write_text(self.folder / "counts.csv", counts_csv(self.analyses))
        write_coco(self.folder / "coco.json", entries, labels=labels)
        write_cvat(self.folder / "cvat.xml", entries, labels)

    # ------------------------------------------------------------------ reading
    def thumbnail(self, image_index: int, cell_index: int) -> np.ndarray:
        """The typer's crop of WBC ``cell_index`` of photo ``image_index`` (its box when there is none)."""
        a = self.analyses[image_index]
        wbcs = [k for k, r in enumerate(a.entry["masks"]) if r["category"] == "wbc"]
        if cell_index not in wbcs:
            raise HemasegUsageError("cell", f"no white cell {cell_index} in {a.entry['filename']}")
        j = wbcs.index(cell_index)
        if len(a.wbc_crops) == len(wbcs):
            return a.wbc_crops[j]
        b = a.entry["masks"][cell_index]["bounding_box"]
        return self.images[image_index][b["y1"]:b["y2"], b["x1"]:b["x2"]]

    def state(self) -> dict:
        """Everything the page shows, as JSON-ready data: per-photo counts, totals, the differential
        (type, count, percent, 95 % interval), the WBC gallery least sure first, failures."""
        with self.lock:
            counts = pooled_counts(self.analyses)
            types = pooled_types(self.analyses)
            diff = differential(counts, types)
            gallery = []
            for i, a in enumerate(self.analyses):
                choices = self.choices(i)
                for k, r in enumerate(a.entry["masks"]):
                    if r["category"] != "wbc":
                        continue
                    probs = call_probs(r, a.cell_diameter)  # without a platelet call ruled out for its size
                    gallery.append({"image": i, "cell": k, "filename": a.entry["filename"],
                                    "class_name": r["class_name"],
                                    "confidence": round(confidence(r, a.cell_diameter), 4),
                                    "unsure": bool(r.get("unsure")), "corrected_from": r.get("corrected_from"),
                                    "reason": r.get("unsure_reason"),
                                    "probs": [[t, round(float(p), 4)] for t, p in probs[:3]], "choices": choices})
            gallery.sort(key=lambda g: (g["confidence"], g["image"], g["cell"]))
            return {
                "version": __version__, "revision": self.revision, "research_only": RESEARCH_ONLY,
                "images": [{"index": i, "filename": a.entry["filename"], "width": a.entry["width"],
                            "height": a.entry["height"], "cell_diameter": round(a.cell_diameter, 1),
                            "counts": {c: a.counts.get(c, 0) for c in CATEGORIES},
                            "unsure": sum(1 for r in a.entry["masks"] if r.get("unsure") and r["category"] == "wbc"),
                            "notes": self.notes[i]}
                           for i, a in enumerate(self.analyses)],
                "totals": {c: counts.get(c, 0) for c in CATEGORIES},
                "differential": [{"type": t, "count": counts.get(t, 0), "pct": round(v[0], 1),
                                  "lo": round(v[1], 1), "hi": round(v[2], 1)} for t, v in diff.items()],
                "n_differential": differential_size(counts, types),
                "min_differential": MIN_DIFFERENTIAL,
                "beside": [{"type": t, "count": counts[t]} for t in types
                           if t in NOT_IN_DIFFERENTIAL and counts.get(t, 0)],
                "untyped": sum(g["unsure"] for g in gallery),
                "gallery": gallery,
                "failed": [{"filename": f, "reason": why} for f, why in self.failed],
                "models": self.analyses[-1].models if self.analyses else {},
            }


class _Notes(logging.Handler):
    """The one handler that hands each thread's warnings to the note list that thread is collecting into
    (:func:`_warnings_of_this_thread`); installed once on the ``hemaseg`` logger. Handlers added and removed per
    upload raced: a removal while another thread walked the logger's handlers skipped that thread's own."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.sinks: dict[int, tuple[list[str], dict[str, str]]] = {}  # thread id -> (notes, {stored path: name})

    def emit(self, record: logging.LogRecord) -> None:
        sink = self.sinks.get(record.thread)
        if sink is not None:
            text = record.getMessage()
            for stored, name in sink[1].items():
                text = text.replace(stored, name)
            if text not in sink[0]:
                sink[0].append(text)
        if not logging.getLogger().handlers:  # logging never set up: still said on stderr, as Python's last resort
            logging.lastResort.handle(record)


_NOTES = _Notes()
logging.getLogger("hemaseg").addHandler(_NOTES)


@contextmanager
def _warnings_of_this_thread(into: list[str], names: dict[str, str]):
    """Collect into ``into`` the warnings hemaseg logs in this thread during the block (uploads run side by side:
    another's are not this photo's), each stored file's path in them replaced by the name it was uploaded as.
    (Warnings of worker threads the analysis starts are not collected.)"""
    me = threading.get_ident()
    _NOTES.sinks[me] = (into, names)
    try:
        yield
    finally:
        _NOTES.sinks.pop(me, None)


class Sessions:
    """The server's sessions by id, each in its own folder under ``root``; beyond ``max_sessions``
    the least recently used one holding no photo is dropped with its folder (the least recently used of all
    when every one holds photos)."""

    def __init__(self, root: str | Path, max_sessions: int = MAX_SESSIONS, **session_options) -> None:
        self.root = Path(root)
        self.max_sessions = max_sessions
        self.options = session_options
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def new(self) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(12)
        with self._lock:
            self._sessions[sid] = Session(self.root / sid, **self.options)
            while len(self._sessions) > self.max_sessions:
                # the least recently used session that holds nothing goes first: loading the page many times
                # (a link prefetcher, a health check) must not cost a user the photos and corrections of theirs
                empty = [k for k, v in self._sessions.items() if k != sid and not v.analyses and not v.failed
                         and not v.pending]
                old = empty[0] if empty else next(iter(self._sessions))
                shutil.rmtree(self._sessions.pop(old).folder, ignore_errors=True)
        return sid, self._sessions[sid]

    def get(self, sid: str) -> Session | None:
        with self._lock:
            s = self._sessions.get(sid)
            if s is not None:
                self._sessions.move_to_end(sid)
            return s


def require_flask() -> None:
    """:class:`~hemaseg.errors.HemasegUsageError` unless Flask (the ``web`` extra) is installed."""
    try:
        import flask  # noqa: F401
    except ImportError:
        raise HemasegUsageError("hemaseg serve", "needs Flask: pip install 'hemaseg[web]'") from None


def create_app(work_dir: str | Path | None = None, cells_model="cells", type_model="wbc-type", device: str = "cpu",
               tile: int = DEFAULT_TILE, min_confidence: float = MIN_CONFIDENCE, max_upload_mb: float = MAX_UPLOAD_MB,
               max_sessions: int = MAX_SESSIONS, backend: str = "auto"):
    """The Flask application of ``hemaseg serve``.

    Parameters
    ----------
    work_dir
        Folder the sessions' folders are made in; default a new temporary folder
        (``app.config["HEMASEG_WORK_DIR"]``; the caller removes it).
    cells_model, type_model, device, tile, min_confidence, backend
        As ``hemaseg analyze``'s ``--model``, ``--type-model``, ``--device``, ``--tile``, ``--min-confidence``,
        ``--backend``.
    max_upload_mb
        Largest upload (one photo per request), in MB; a larger one gets a message and a 413.
    max_sessions
        Sessions kept (one per page opened); beyond this the least recently used empty one is dropped
        (else the least recently used).
    """
    require_flask()
    from flask import Flask, abort, jsonify, redirect, render_template, request, send_file, url_for
    from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
    from werkzeug.utils import secure_filename

    root = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="hemaseg-serve-"))
    root.mkdir(parents=True, exist_ok=True)
    app = Flask(__name__, template_folder=str(HERE / "templates"), static_folder=str(HERE / "static"))
    # the limit is the photo's: the request's multipart headers and boundaries (well under 64 KB) come on top
    app.config.update(MAX_CONTENT_LENGTH=int(max_upload_mb * 1024 * 1024) + MULTIPART_ROOM, HEMASEG_WORK_DIR=root)
    app.json.sort_keys = False
    sessions = Sessions(root, max_sessions, cells_model=cells_model, type_model=type_model, device=device,
                        tile=tile, min_confidence=min_confidence, backend=backend)
    app.extensions["hemaseg"] = sessions
    analysis_lock = threading.Lock()  # one analysis at a time: the CPU is shared

    def session_or_404(sid: str) -> Session:
        s = sessions.get(sid)
        if s is None:
            abort(404, description="no such session (the server was restarted, or it was dropped): reload the page")
        return s

    def error(message: str, status: int):
        return jsonify({"error": message}), status

    too_big = f"file too large: the limit is {max_upload_mb:g} MB per photo"

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc):
        # listed with the session's other refused files, by the name the page sends beside a request too large to read
        s = sessions.get((request.view_args or {}).get("sid", "")) if exc is not None else None
        name = Path(request.args.get("name", "").replace("\\", "/")).name
        if s is not None and name:
            with s.lock:
                s.failed.append((name, too_big))
        return error(too_big, 413)

    @app.errorhandler(HTTPException)
    def http_error(exc):
        if request.path.startswith("/api/"):
            return error(exc.description or exc.name, exc.code or 500)
        return exc

    @app.get("/")
    def index():
        sid, _ = sessions.new()
        return redirect(url_for("page", sid=sid))

    @app.get("/s/<sid>")
    def page(sid: str):
        if sessions.get(sid) is None:
            return redirect(url_for("index"))
        return render_template("index.html", sid=sid, version=__version__, research_only=RESEARCH_ONLY,
                               max_upload_mb=max_upload_mb, suffixes=",".join(IMAGE_SUFFIXES))

    @app.get("/api/s/<sid>/state")
    def state(sid: str):
        return jsonify(session_or_404(sid).state())

    @app.post("/api/s/<sid>/images")
    def upload(sid: str):
        s = session_or_404(sid)
        files = [f for f in request.files.getlist("image") if f.filename]
        if len(files) > 1:  # the page sends one photo a request; a second one was dropped without a word
            return error(f"{len(files)} files in one upload: send one photo per request (form field 'image')", 400)
        f = files[0] if files else None
        if f is None:
            return error("no file in the upload (form field 'image')", 400)
        name = Path(f.filename.replace("\\", "/")).name
        suffix = Path(name).suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            s.failed.append((name, f"not an image file we read (give {', '.join(IMAGE_SUFFIXES)})"))
            return error(f"{name}: not an image file we read (give {', '.join(IMAGE_SUFFIXES)})", 400)
        f.stream.seek(0, os.SEEK_END)  # the photo's own size against the limit (the request's holds headers too)
        if f.stream.tell() > max_upload_mb * 1024 * 1024:  # listed with the session's other refused files
            s.failed.append((name, too_big))
            return too_large(None)
        f.stream.seek(0)
        safe = secure_filename(name) or f"image{suffix}"
        dest = s.folder / "uploads" / f"{s.next_upload():04d}_{safe}"  # its own name, whatever runs beside it
        with atomic_path(dest) as tmp:
            f.save(tmp)
        try:
            analysis = s.analyze_file(dest, name, analysis_lock)
        except HemasegError as exc:
            return error(f"{name}: {getattr(exc, 'reason', exc)}", 400)
        except Exception as exc:  # one bad photo must not stop the server
            log.exception("analysis of %s failed", name)
            s.failed.append((name, f"{exc.__class__.__name__}: {exc}"))
            return error(f"{name}: analysis failed ({exc.__class__.__name__}: {exc})", 500)
        with s.lock:  # this photo's warnings (a stack's first plane read ...), said once as its upload ends
            notes = next((n for a, n in zip(s.analyses, s.notes) if a is analysis), [])
        return jsonify({**s.state(), "notes": notes})

    @app.post("/api/s/<sid>/cells/<int:image>/<int:cell>")
    def correct(sid: str, image: int, cell: int):
        s = session_or_404(sid)
        body = request.get_json(silent=True)
        if not isinstance(body, dict):  # unreadable JSON, a list or a bare string: 400, not a server error
            return error('the body is not a JSON object such as {"type": "lymphocyte"}', 400)
        try:
            s.correct(image, cell, str(body.get("type", "")))
        except HemasegUsageError as exc:
            return error(f"{exc.option}: {exc.reason}", 400)
        return jsonify(s.state())

    @app.get("/api/s/<sid>/overlay/<int:image>.png")
    def overlay(sid: str, image: int):
        s = session_or_404(sid)
        path = s.folder / "overlays" / f"{image}.png"
        if not path.is_file():
            abort(404, description=f"no photo {image} in this session")
        return send_file(path, mimetype="image/png", max_age=0)

    @app.get("/api/s/<sid>/thumb/<int:image>/<int:cell>.png")
    def thumb(sid: str, image: int, cell: int):
        s = session_or_404(sid)
        if not 0 <= image < len(s.analyses):
            abort(404, description=f"no photo {image} in this session")
        try:
            crop = s.thumbnail(image, cell)
        except HemasegUsageError as exc:
            abort(404, description=exc.reason)
        return app.response_class(_png(crop), mimetype="image/png")

    @app.get("/api/s/<sid>/download/<name>")
    def download(sid: str, name: str):
        s = session_or_404(sid)
        if name not in DOWNLOADS:
            abort(404, description=f"no file {name}; the files are {', '.join(DOWNLOADS)}")
        path = s.folder / name
        if not path.is_file():
            abort(404, description="nothing analysed yet")
        return send_file(path, mimetype=DOWNLOADS[name], as_attachment=True, download_name=name, max_age=0)

    return app


def check_address(host: str, port: int) -> None:
    """:class:`~hemaseg.errors.HemasegUsageError` naming ``--host`` or ``--port`` unless a server can
    listen on ``host``:``port`` (an unknown address, a port in use or one that needs root)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise HemasegUsageError("--host", f"{host!r} is not an address of this computer ({exc})") from None
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            sock.bind(address)
    except OSError as exc:
        option = "--host" if exc.errno == errno.EADDRNOTAVAIL else "--port"
        raise HemasegUsageError(option, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, work_dir: str | Path | None = None,
          cells_model="cells", type_model="wbc-type", device: str = "cpu", tile: int = DEFAULT_TILE,
          min_confidence: float = MIN_CONFIDENCE, max_upload_mb: float = MAX_UPLOAD_MB, backend: str = "auto",
          ready=None) -> None:
    """Run the page until interrupted (threaded WSGI server of Werkzeug, which Flask uses).

    ``host`` 127.0.0.1 (default) serves this computer only. ``port`` 0 picks a free one.
    ``work_dir`` None: a temporary folder, removed on exit. ``ready(url)`` is called once the
    server listens. The rest as :func:`create_app`.
    """
    from werkzeug.serving import make_server

    check_address(host, port)
    app = create_app(work_dir, cells_model, type_model, device, tile, min_confidence, max_upload_mb,
                     backend=backend)
    server = None
    try:
        server = make_server(host, port, app, threaded=True)
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{server.server_port}/"
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as Ctrl+C does: the work folder goes
        if ready is not None:
            ready(url)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.server_close()
        if work_dir is None:
            shutil.rmtree(app.config["HEMASEG_WORK_DIR"], ignore_errors=True)
