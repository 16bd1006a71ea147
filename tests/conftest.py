"""Shared test setup: an offline environment, the tiny model, the local OpenAI-compatible server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import em  # noqa: F401 (registers the config schema, em/config.py, before any test composes a config)

FAKE_OPENAI_KEY = "sk-test-FAKEKEY-0123456789abcdef"
FAKE_WANDB_KEY = "wandb-test-FAKEKEY-0123456789abcdef0123456789"
REPO_ROOT = Path(__file__).resolve().parent.parent

# Set before any test module imports transformers / wandb / openai.
os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "TOKENIZERS_PARALLELISM": "false",
        "OPENAI_API_KEY": FAKE_OPENAI_KEY,  # a real key is never read by the tests
    }
)
os.environ.pop("WANDB_API_KEY", None)
os.environ.pop("OPENAI_BASE_URL", None)
# Under pytest-xdist, the cores shared out between the workers, for them and every process they start: torch's
# default (a thread per core in each worker) oversubscribes the CPU; measured 22% slower on 2 cores.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("OMP_NUM_THREADS", _threads)
    os.environ.setdefault("MKL_NUM_THREADS", _threads)


@pytest.fixture(scope="session")
def em_cache_dir(tmp_path_factory) -> Path:
    """A per-session cache (downloads, tiny model) so tests never touch the user's ~/.cache/em.

    Under pytest-xdist the workers share one ``models`` folder (the models are built once under a file lock,
    em.io.build_dir_once), so the SmolLM2 conversion runs once per test run, not once per worker.
    """
    path = tmp_path_factory.mktemp("em_cache")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent / "shared_models"
        shared.mkdir(exist_ok=True)
        (path / "models").symlink_to(shared, target_is_directory=True)
    os.environ["EM_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(em_cache_dir) -> Path:
    """The embedded tiny Llama model + tokenizer, built once per session, loaded via from_pretrained."""
    from em.tiny import ensure_tiny_model

    return ensure_tiny_model(em_cache_dir / "models")


@pytest.fixture
def openai_server():
    """A local OpenAI-compatible server on 127.0.0.1 (see testing/openai_server.py)."""
    from testing.openai_server import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(scope="session")
def anchors_dir() -> Path:
    """Verbatim upstream files for compatibility tests; set EM_ANCHORS_DIR (``.ci/run`` does)."""
    value = os.environ.get("EM_ANCHORS_DIR")
    if not value or not Path(value).is_dir():
        pytest.skip("EM_ANCHORS_DIR not set: upstream compatibility files unavailable")
    return Path(value)


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
