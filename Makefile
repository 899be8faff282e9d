# thermops: two commands on a fresh machine.
#   make run    set up .venv if needed, then `dvc repro` the default pipeline
#   make test   set up .venv if needed, then the whole pytest suite
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# No telemetry from any tool, here or in CI.
export BENTOML_DO_NOT_TRACK := true
export GX_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1
# Stages call `python -m components.<step>`: make that the venv's python.
export PATH := $(BIN):$(PATH)

.PHONY: setup run test lint

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel
	# torch first, from this machine's local index, so nothing else can pull another build.
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

setup: $(STAMP)

run: setup
	$(BIN)/dvc config core.analytics false
	$(BIN)/dvc repro

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup
	# the in-image tests need the built image: `make image-test` runs them.
	$(BIN)/python -m pytest --ignore=tests/test_image_run.py --ignore=tests/test_image_missing_import.py

-include mk/*.mk
