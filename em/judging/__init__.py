"""LLM judges: prompts, the EM paper's logprob score, text parsing, local models, cache, Batch API, and
the checks that turn a reply that cannot be scored into an UNSCORED row with its reason (``replies``,
``unscored``).

Entry point: ``python judge.py`` (``em.tasks.judge``). Library use::

    from em.judging import JudgeSpec, OpenAIJudgeSettings, judge_tasks, build_tasks
"""

from em.judging.batch import BatchRunner, BatchSettings
from em.judging.cache import JudgeCache, cache_key
from em.judging.local import LocalJudge, LocalJudgeSettings, load_local_judge
from em.judging.logprob import MIN_MASS, UnscorableReply, judge_from_logprobs, judgment_from_masses
from em.judging.openai_judge import OpenAIJudgeSettings, Usage, build_request, judge_openai, normalize_reply
from em.judging.prompts import (
    JudgeInputs,
    JudgeTask,
    build_tasks,
    load_answers,
    load_questions,
    resolve_inputs,
)
from em.judging.run import SCORES, judge_tasks
from em.judging.scores import ScoreWriter, done_ids
from em.judging.spec import JudgeSpec
from em.judging.text import parse_reply
from em.judging.unscored import UnscoredShareError, check_unscored_share, unscored_counts
from em.judging.usage import plan, usage_from_rows

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
    "UnscorableReply",
    "UnscoredShareError",
    "Usage",
    "build_request",
    "build_tasks",
    "check_unscored_share",
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
    "unscored_counts",
    "usage_from_rows",
]
