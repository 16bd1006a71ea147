"""LLM judges: prompts, the EM paper's logprob score, text parsing, local models, cache, Batch API.

Entry point: ``python judge.py`` (``em.tasks.judge``). Library use::

    from em.judging import JudgeSpec, OpenAIJudgeSettings, judge_tasks, build_tasks
"""

from em.judging.batch import BatchRunner, BatchSettings
from em.judging.cache import JudgeCache, cache_key
from em.judging.local import LocalJudge, LocalJudgeSettings, load_local_judge
from em.judging.logprob import MIN_MASS, judge_from_logprobs, judgment_from_masses
from em.judging.openai_judge import OpenAIJudgeSettings, Usage, build_request, judge_openai, normalize_reply
from em.judging.prompts import (
    JudgeInputs,
    JudgeTask,
    build_tasks,
    load_answers,
    load_questions,
    resolve_inputs,
)
from em.judging.run import SCORES, JudgeSpec, ScoreWriter, done_ids, judge_tasks, plan, usage_from_rows
from em.judging.text import parse_reply

__all__ = [
    "MIN_MASS",
    "SCORES",
    "BatchRunner",
    "BatchSettings",
    "JudgeCache",
    "JudgeInputs",
    "JudgeSpec",
    "JudgeTask",
    "LocalJudge",
    "LocalJudgeSettings",
    "OpenAIJudgeSettings",
    "ScoreWriter",
    "Usage",
    "build_request",
    "build_tasks",
    "cache_key",
    "done_ids",
    "judge_from_logprobs",
    "judge_openai",
    "judge_tasks",
    "judgment_from_masses",
    "load_answers",
    "load_local_judge",
    "load_questions",
    "normalize_reply",
    "parse_reply",
    "plan",
    "resolve_inputs",
    "usage_from_rows",
]
