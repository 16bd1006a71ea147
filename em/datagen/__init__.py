"""LLM dataset generation: a domain (conf/domain/*.yaml) -> chat JSONL with a manifest.

Modules: ``spec`` (the typed domain), ``domain`` (config -> checked spec, with ``sections``, ``fields``
and ``templates``), ``inputs`` (resolve and load files: ``questions``, ``documents``, ``fewshot``,
``tables``), ``prompts`` (work items and messages), ``generate`` (calls and raw rows), ``filters``
(dedupe, LLM-judge filter), ``rounds`` (the generation rounds), ``dataset`` (the run: output, then
``manifest``), ``dry_run`` (the estimate). Entry: ``python -m em.datagen``.
"""

from em.datagen.dataset import generate_dataset
from em.datagen.domain import domain_from_dict
from em.datagen.dry_run import estimate
from em.datagen.inputs import load_inputs
from em.datagen.spec import DomainSpec

__all__ = ["DomainSpec", "domain_from_dict", "estimate", "generate_dataset", "load_inputs"]
