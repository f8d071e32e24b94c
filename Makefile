# aamct — every user action is a target here. `make help` lists them.
# The first use of any target creates .venv (torch's CPU wheel first, then the project and its extras).

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
AAMCT   := $(VENV)/bin/aamct
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0
RUN     ?= runs/demo
CASES   ?= 40
SIZE    ?= 64

.PHONY: help setup demo test lint format bench train evaluate export clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: installing monai/ignite before it would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the project with its dev tools

demo: $(STAMP)  ## generate the demo cohort and run the main job on it, outputs under runs/demo/
	$(AAMCT) demo-data --out $(RUN)/cohort_dicom --cases $(CASES) --size $(SIZE) --seed 0
	$(AAMCT) manifest build --dicom-root $(RUN)/cohort_dicom --labels $(RUN)/cohort_dicom/labels.csv --out $(RUN)/manifest.csv
	$(AAMCT) manifest split $(RUN)/manifest.csv --seed 0

test: $(STAMP)  ## run the whole test suite
	$(PY) -m pytest -q

lint: $(STAMP)  ## ruff lint and format check
	$(VENV)/bin/ruff check pipeline tests benchmarks
	$(VENV)/bin/ruff format --check pipeline tests benchmarks

format: $(STAMP)  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix pipeline tests benchmarks
	$(VENV)/bin/ruff format pipeline tests benchmarks

bench: $(STAMP)  ## run every benchmark, JSON results in benchmarks/results/
	$(PY) -m benchmarks.run_all

clean:  ## remove run outputs (keeps .venv)
	rm -rf runs .pytest_cache
