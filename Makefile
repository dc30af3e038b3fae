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
	$(BIN)/hemaseg analyze $(SAMPLE) --out $(DEMO) --overwrite
	@echo ""
	@echo "Results are in $(DEMO)/:"
	@echo "  $(DEMO)/report.html                   counts, WBC differential, overlay and a thumbnail per cell (open it in a browser)"
	@echo "  $(DEMO)/results.json                  every RBC, WBC and platelet: category, WBC type, score, box, polygon"
	@echo "  $(DEMO)/counts.csv                    counts and differential per image"
	@echo "  $(DEMO)/BloodImage_00000_overlay.png  outlines drawn on the photo"

# $(call apt_need,COMMANDS,PACKAGES,TEST): install Debian's PACKAGES when one of COMMANDS is missing, if
# apt-get exists and we are root (CI); otherwise TEST skips and says why.
define apt_need
	@if ! { $(foreach c,$(1),command -v $(c) >/dev/null &&) true; }; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing $(2) for $(3)"; \
	    export DEBIAN_FRONTEND=noninteractive; pkgs="$(2)"; \
	    apt-get install -y -q --no-install-recommends $$pkgs >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$pkgs >/dev/null; } || \
	      echo "could not install $(2): $(3) will skip"; \
	  else echo "no $(firstword $(1)) (and not root with apt-get): $(3) will skip"; fi; \
	fi
endef

# The web page test drives Debian's chromium.
browser:
	$(call apt_need,chromium chromedriver,chromium chromium-driver fonts-liberation,the web page test (tests/apps/test_web.py))

# The napari widget test needs an X display for OpenGL even offscreen: pytest-xvfb starts Debian's Xvfb.
display:
	$(call apt_need,Xvfb,xvfb xauth,the napari widget test (tests/apps/test_napari.py))

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
