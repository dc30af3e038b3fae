# `make demo` and `make test` work from a clean clone: each creates .venv if missing and installs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SAMPLE := src/hemaseg/samples/BloodImage_00000.jpg
DEMO   := demo-out

.PHONY: demo test install bench clean

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

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/wbc_accuracy.py
	$(BIN)/python benchmarks/nuclei.py
	$(BIN)/python benchmarks/classical.py
	$(BIN)/python benchmarks/wbc_type.py --skip-training
	$(BIN)/python benchmarks/smear10.py
	$(BIN)/python benchmarks/cells.py

clean:
	rm -rf $(DEMO) .pytest_cache
