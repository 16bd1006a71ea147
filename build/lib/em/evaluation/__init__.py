"""Evaluation: question sets (EM YAML and Realignment-study JSON), trigger conditions, answer sampling with
transformers, vLLM or an OpenAI-compatible API, into a resumable ``answers.jsonl``.

    sets = resolve_sets([SetSpec(name="demo", source="project:demo.yaml")], cache_dir, "project")
    jobs = build_jobs([q for s in sets for q in s.questions], make_conditions(["none"], {"none": None}), seed=0)
    run_jobs(HFBackend(resolve_model({"name_or_path": "tiny"}), HFSettings(), Sampling()), jobs, run_dir,
             model=..., sampling=Sampling())

See docs/evaluation.md; ``python evaluate.py`` (em.tasks.evaluate) wires it to the config.
"""

from em.evaluation.answers import ANSWERS, QUESTIONS, Completion, make_row
from em.evaluation.conditions import Condition, apply_condition, make_conditions, remove_slot
from em.evaluation.model_ref import ModelRef, resolve_model
from em.evaluation.plan import PromptJob, Sampling, build_jobs, derive_seed
from em.evaluation.question_sets import UPSTREAM, QuestionSet, SetSpec, default_judge_prompts, resolve_sets
from em.evaluation.questions import Question, load_em_yaml, load_questions, load_realignment_json
from em.evaluation.runner import RunStats, run_jobs, write_questions

__all__ = [
    "ANSWERS",
    "QUESTIONS",
    "UPSTREAM",
    "Completion",
    "Condition",
    "ModelRef",
    "PromptJob",
    "Question",
    "QuestionSet",
    "RunStats",
    "Sampling",
    "SetSpec",
    "apply_condition",
    "build_jobs",
    "default_judge_prompts",
    "derive_seed",
    "load_em_yaml",
    "load_questions",
    "load_realignment_json",
    "make_conditions",
    "make_row",
    "remove_slot",
    "resolve_model",
    "resolve_sets",
    "run_jobs",
    "write_questions",
]
