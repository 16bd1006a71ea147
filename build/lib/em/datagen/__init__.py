"""LLM dataset generation: a domain (conf/domain/*.yaml) -> chat JSONL with a manifest.

Modules: ``domain`` (typed config), ``inputs`` (questions, documents, few-shot files), ``prompts`` (work
items and messages), ``generate`` (calls and raw rows), ``filters`` (dedupe, LLM-judge filter),
``dataset`` (the run: rounds, output, manifest, dry-run estimate). Entry: ``python -m em.datagen``.
"""

from em.datagen.dataset import estimate, generate_dataset
from em.datagen.domain import DomainSpec, domain_from_dict
from em.datagen.inputs import load_inputs

__all__ = ["DomainSpec", "domain_from_dict", "estimate", "generate_dataset", "load_inputs"]
