# `make demo` and `make test` work from a clean clone: each creates .venv if missing and installs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SAMPLE := src/hemaseg/samples/BloodImage_00000.jpg
DEMO   := demo-out

.PHONY: demo test install bench clean browser display

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/hemaseg analyze $(SAMPLE) --out $(DEMO)
	@echo ""
	@echo "Results are in $(DEMO)/:"
	@echo "  $(DEMO)/report.html                   counts, WBC differential, overlay and a thumbnail per cell (open it in a browser)"
	@echo "  $(DEMO)/results.json                  every RBC, WBC and platelet: category, WBC type, score, box, polygon"
	@echo "  $(DEMO)/counts.csv                    counts and differential per image"
	@echo "  $(DEMO)/BloodImage_00000_overlay.png  outlines drawn on the photo"

# The web page test (tests/apps/test_web.py) drives Debian's chromium: installed here when missing,
# if apt-get exists and we are root (CI); otherwise that test skips and says why.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium and chromium-driver for tests/apps/test_web.py"; \
	    export DEBIAN_FRONTEND=noninteractive; pkgs="chromium chromium-driver fonts-liberation"; \
	    apt-get install -y -q --no-install-recommends $$pkgs >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$pkgs >/dev/null; } || \
	      echo "could not install chromium: the web page test will skip"; \
	  else echo "no chromium (and not root with apt-get): the web page test will skip"; fi; \
	fi

# The napari widget test (tests/apps/test_napari.py) needs an X display for OpenGL even offscreen:
# pytest-xvfb starts Debian's Xvfb, installed here when missing (root with apt-get); else that test skips.
display:
	@if ! command -v Xvfb >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing xvfb for tests/apps/test_napari.py"; \
	    export DEBIAN_FRONTEND=noninteractive; pkgs="xvfb xauth"; \
	    apt-get install -y -q --no-install-recommends $$pkgs >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$pkgs >/dev/null; } || \
	      echo "could not install xvfb: the napari widget test will skip"; \
	  else echo "no Xvfb (and not root with apt-get): the napari widget test will skip"; fi; \
	fi

test: $(VENV)/.installed-dev browser display
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/wbc_accuracy.py
	$(BIN)/python benchmarks/nuclei.py
	$(BIN)/python benchmarks/classical.py
	$(BIN)/python benchmarks/wbc_type.py --skip-training
	$(BIN)/python benchmarks/smear10.py
	$(BIN)/python benchmarks/cells.py

clean:
	rm -rf $(DEMO) .pytest_cache
