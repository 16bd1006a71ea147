"""The cheap checks of an open-model SFT run, before any model is loaded: :func:`preflight`.

Settings, model path, tokenizer and its chat template, the parent adapter's shape and the probe sets: whatever
would fail here fails in seconds, not after minutes of loading weights (a dry run stops after it).
"""

from __future__ import annotations

import logging

import torch

from em.training.parent_adapter import check_continue_shape
from em.training.settings import SFTSettings

log = logging.getLogger(__name__)


def preflight(settings: SFTSettings):
    """Everything that can fail cheaply, before a model is loaded: returns the tokenizer."""
    from em.modeling import load_tokenizer, resolve_model_path

    settings.check()
    resolve_model_path(settings.model)
    tokenizer = load_tokenizer(settings.model, padding_side="right")
    check_continue_shape(settings)
    if settings.probe.enabled:  # a probe set that does not exist fails here, not after the model loads
        from em.probes import load_references

        load_references(sets=list(settings.probe.sets))
    parent = settings.parent
    method = settings.quantization.method
    if parent and parent.quantization and parent.quantization != method:
        log.warning(
            "init_from: the parent loaded its base with quantization=%s, this run with %s; the starting "
            "model differs from the parent's by that quantisation error",
            parent.quantization,
            method,
        )
    if method != "none" and not torch.cuda.is_available():
        log.warning("quantization.method=%s on CPU: bitsandbytes runs it, slowly (fine for tests)", method)
    return tokenizer
