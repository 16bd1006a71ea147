# Two commands on a fresh clone:  `make demo`  and  `make test`.
# Setup is idempotent: a venv in .venv, the package installed editable with its dev tools.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On a machine without an NVIDIA GPU, a CPU build of torch (this one lies on the CI machine's disk).
TORCH_CPU ?= torch==2.13.0
EXTRAS ?= dev

.PHONY: setup demo test test-fast lint format bench clean-outputs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if ! command -v nvidia-smi >/dev/null 2>&1; then \
		echo "no NVIDIA GPU found: installing CPU torch ($(TORCH_CPU))"; \
		$(PY) -m pip install -q "$(TORCH_CPU)"; fi
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

demo: setup
	$(PY) -m em.demo

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) -m pip install -q -e ".[dev,bench]"
	$(PY) -m bench.run_all

clean-outputs:
	rm -rf outputs multirun wandb lightning_logs
