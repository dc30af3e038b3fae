"""Fuzzed inputs (issue 20, "what held up and must keep holding"): 208 mutated PNG/JPEG/BMP/TIFF
files through read_image and one batch `segment`: every file is read or refused with
HemasegInputError (one line in the batch), nothing else is raised, nothing hangs."""
import signal
import time

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from helpers import toy_wbc
from hemaseg.cli import app
from hemaseg.errors import HemasegInputError
from hemaseg.io.images import read_image

PER_FORMAT = 52  # x 4 formats = 208 files


def _originals(tmp_path):
    img = toy_wbc(np.random.default_rng(0), 32)[0]
    out = {}
    for fmt in ("png", "jpg", "bmp", "tif"):
        p = tmp_path / f"orig.{fmt}"
        tifffile.imwrite(p, img) if fmt == "tif" else Image.fromarray(img).save(p)
        out[fmt] = p.read_bytes()
    return out


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    kind = rng.integers(6)
    if kind == 0:  # flip bits anywhere
        for i in rng.integers(0, len(b), rng.integers(1, 8)):
            b[i] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # flip bits in the header (sizes, offsets, bit depths)
        for i in rng.integers(0, min(64, len(b)), rng.integers(1, 4)):
            b[i] ^= 1 << int(rng.integers(8))
    elif kind == 2:  # truncate
        b = b[: int(rng.integers(0, len(b)))]
    elif kind == 3:  # random bytes over a stretch
        i = int(rng.integers(0, len(b)))
        n = int(rng.integers(1, 64))
        b[i:i + n] = rng.integers(0, 256, len(b[i:i + n]), dtype=np.uint8).tobytes()
    elif kind == 4:  # insert or delete a stretch
        i = int(rng.integers(0, len(b)))
        if rng.integers(2):
            b[i:i] = rng.integers(0, 256, int(rng.integers(1, 32)), dtype=np.uint8).tobytes()
        else:
            del b[i:i + int(rng.integers(1, 32))]
    else:  # a header byte set to an extreme (0 or 255)
        i = int(rng.integers(0, min(32, len(b))))
        b[i] = 255 if rng.integers(2) else 0
    return bytes(b)


@pytest.fixture
def fuzzed(tmp_path):
    rng = np.random.default_rng(20)
    d = tmp_path / "fuzz"
    d.mkdir()
    for fmt, data in _originals(tmp_path).items():
        for k in range(PER_FORMAT):
            (d / f"{fmt}_{k:02d}.{fmt}").write_bytes(_mutate(data, rng))
    return d


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang


def test_fuzzed_files_read_or_refused_and_a_batch_survives(fuzzed, tmp_path, tiny_model_path):
    files = sorted(fuzzed.iterdir())
    assert len(files) >= 200
    refused, read = set(), set()
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for p in files:
            signal.alarm(10)
            t0 = time.time()
            try:
                image = read_image(p)
            except HemasegInputError as exc:
                assert exc.path == str(p) and exc.reason and "\n" not in exc.reason
                refused.add(p.name)
            else:
                assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
                read.add(p.name)
            finally:
                signal.alarm(0)
            assert time.time() - t0 < 10, p
    finally:
        signal.signal(signal.SIGALRM, old)
    assert refused and read  # the mutations exercise both

    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["segment", str(fuzzed), "--out", str(out), "--model", str(tiny_model_path),
                                   "--cell-diameter", "24"])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    failed = {ln.split(":", 1)[0].rsplit("/", 1)[-1] for ln in res.output.splitlines() if str(fuzzed) in ln}
    assert failed == refused  # the batch fails exactly the unreadable files, one line each
    assert {p.stem for p in out.glob("*.json")} == {n.rsplit(".", 1)[0] for n in read}
