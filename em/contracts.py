"""The files passed between stages, typed once: answer rows, score rows, and each stage's manifest.

Invariant: every stage writes and reads these rows and manifests only through these types: a file name or a
key of ``answers.jsonl``, ``scores.jsonl`` or ``manifest.json`` is spelled here, the stage code builds a row
with :func:`answer_row` / :func:`score_row` (every key, each of its type, no other) and checks a row read back
with :func:`check_answer_row` / :func:`check_score_row` (the required keys present, every known key of its
type), so a wrong row is refused naming the file, the line and the key, before any stage uses it.

A row stays a plain ``dict`` (a ``TypedDict``): the bytes on disk are what they were before these types.
Keys a reader does not need are ``NotRequired``: hand-made answer files and older runs still read. A manifest
is an open record: the keys typed here are those another stage reads (checked on read), the writer may add
provenance beside them. Only the standard library is imported: ``em.io`` and the Inspect export's own
environment import this module.
"""

import types
from typing import Any, NotRequired, TypedDict, Union, get_args, get_origin, get_type_hints, is_typeddict

ANSWERS = "answers.jsonl"
QUESTIONS = "questions.json"
SCORES = "scores.jsonl"
SUMMARY = "summary.json"
MANIFEST = "manifest.json"
RUN_CONFIG = "run_config.json"  # the resolved config that made a run directory (em.runs)
STAGES = ("datagen", "prepare", "train", "evaluate", "judge")


class ContractError(ValueError):
    """A row or manifest that is not what its contract says; the message names the file, line and key."""


class ModelRecord(TypedDict, total=False):  # total=False: every key written, none required to read
    """What was evaluated (``ModelRef.record()``): the ``model`` of every answer row and evaluate manifest."""

    base: str | None
    adapter: str | None
    adapter_sha256: str | None
    openai_model: str | None
    train_run_dir: str | None


class SamplingRecord(TypedDict, total=False):
    temperature: float
    top_p: float
    max_new_tokens: int


class AnswerRow(TypedDict):
    """One row of ``answers.jsonl``: one (set, question, paraphrase, condition, sample)."""

    id: str  # <set>/<question_id>/<paraphrase_index>/<condition>/<sample_index>
    question_set: str
    question_id: str
    question_type: NotRequired[str]
    paraphrase_index: NotRequired[int]
    question: str  # as written, without the tag
    prompt: str  # the user message as sent
    condition: str
    tag: NotRequired[str | None]
    system: NotRequired[str | None]
    messages: NotRequired[list[dict]]  # as sent
    sample_index: NotRequired[int]
    answer: str
    finish_reason: NotRequired[str | None]
    prompt_tokens: NotRequired[int | None]
    completion_tokens: NotRequired[int | None]
    model: NotRequired[ModelRecord]
    sampling: NotRequired[SamplingRecord]
    seed: NotRequired[int]
    backend: NotRequired[str]


# The answer's keys a score row repeats, in the order judge.py has always written them.
ANSWER_KEYS_IN_SCORES = ("id", "question_set", "question_id", "question_type", "paraphrase_index", "condition",
                         "tag", "sample_index", "question", "prompt", "answer")  # fmt: skip


class ScoreRow(TypedDict):
    """One row of ``scores.jsonl``: an answer's keys (None where the answer lacks one) and its judgments."""

    id: str
    question_set: str
    question_id: str
    question_type: NotRequired[str | None]
    paraphrase_index: NotRequired[int | None]
    condition: str
    tag: NotRequired[str | None]
    sample_index: NotRequired[int | None]
    question: NotRequired[str]
    prompt: NotRequired[str]
    answer: NotRequired[str]
    scores: NotRequired[dict[str, float | None]]  # metric -> score
    labels: NotRequired[dict[str, str | None]]  # metric -> label (CODE, REFUSAL, TRUE, ...)
    category: NotRequired[str | None]  # em.metrics.CATEGORIES
    unscored_reason: NotRequired[str | None]  # em.judging.unscored
    judgments: dict[str, dict]  # metric -> the judge's record (score, label, raw, source, usage, ...)
    judge: NotRequired[dict]  # JudgeSpec.describe()


class Manifest(TypedDict):
    """What every ``manifest.json`` has (``em.io.write_manifest`` adds the commit and the time)."""

    stage: NotRequired[str]  # one of STAGES (always written; a hand-made manifest may lack it)
    complete: NotRequired[bool]  # true only once the run is done
    git_commit: NotRequired[str | None]
    written_at: NotRequired[str]


class TrainManifest(Manifest):
    """The keys of a training run's manifest that evaluation and the reports read."""

    backend: NotRequired[str]  # hf | openai
    base_model: NotRequired[str | None]
    base_revision: NotRequired[str | None]
    adapter_dir: NotRequired[str | None]  # relative to the run directory; hf only
    adapter_sha256: NotRequired[str | None]
    merged_adapters: NotRequired[list[dict]]
    fine_tuned_model: NotRequired[str | None]  # openai only
    trained_from: NotRequired[str | None]
    trigger: NotRequired[dict | None]
    data: NotRequired[dict]
    mitigation: NotRequired[dict | None]
    narrow_task: NotRequired[dict | None]
    hyperparameters: NotRequired[dict]
    parent: NotRequired[dict | None]  # {"run_dir", "mode"}
    seed: NotRequired[int | None]
    wandb_artifact: NotRequired[str | None]
    config: NotRequired[dict]


class EvaluateManifest(Manifest):
    """An evaluation run's manifest: every key evaluate.py writes (it builds it with evaluate_manifest)."""

    model: NotRequired[ModelRecord]
    model_provider: NotRequired[str]
    model_spec: NotRequired[dict | None]
    merged_adapters: NotRequired[list[dict]]
    backend: NotRequired[str]
    backend_settings: NotRequired[dict]
    mitigation: NotRequired[dict | None]  # an evaluation-time arm (ablate_direction)
    narrow_task: NotRequired[dict | None]
    question_sets: NotRequired[list[dict]]
    questions_sha256: NotRequired[str]
    conditions: NotRequired[list]
    sampling: NotRequired[SamplingRecord]
    samples_per_question: NotRequired[int | None]
    default_samples: NotRequired[int]
    ignore_system_prompt: NotRequired[bool]
    judge_prompts_source: NotRequired[str]
    seed: NotRequired[int]
    counts: NotRequired[dict]
    timings: NotRequired[dict]
    train_manifest: NotRequired[dict | None]  # the TrainManifest of the evaluated run
    wandb_run_id: NotRequired[str | None]
    wandb_artifact: NotRequired[str | None]
    config: NotRequired[dict]


class JudgeInputsRecord(TypedDict, total=False):
    answers: str
    questions: str
    answers_sha256: str
    questions_sha256: str
    eval_run_dir: str | None


class JudgeManifest(Manifest):
    """A judge run's manifest: every key judge.py writes (it builds it with judge_manifest)."""

    run_name: NotRequired[str]
    stage_label: NotRequired[str | None]
    evaluated_model: NotRequired[str]
    judge: NotRequired[dict]
    metric_settings: NotRequired[dict]
    inputs: NotRequired[JudgeInputsRecord]
    evaluate_manifest: NotRequired[dict | None]  # the EvaluateManifest of the judged answers
    config: NotRequired[dict]
    seed: NotRequired[int | None]
    n_answers: NotRequired[int]
    usage: NotRequired[dict]
    wandb_run_id: NotRequired[str | None]
    wandb_artifact: NotRequired[str | None]
    timings: NotRequired[dict]


MANIFESTS: dict[str, type] = {"train": TrainManifest, "evaluate": EvaluateManifest, "judge": JudgeManifest}


def _kinds(hint: Any) -> tuple[type, ...]:
    """The runtime classes an annotation accepts: ``str | None`` -> (str, NoneType), ``list[dict]`` -> list."""
    if get_origin(hint) in (Union, types.UnionType):
        return tuple(k for arg in get_args(hint) for k in _kinds(arg))
    if hint is None or hint is type(None):
        return (type(None),)
    if is_typeddict(hint):
        return (dict,)
    if get_origin(hint) is not None:
        return (get_origin(hint),)
    return (int, float) if hint is float else (hint,)  # JSON writes 1.0 as 1 when it was an int


def _spec(contract: type) -> dict[str, tuple[tuple[type, ...], bool, type | None]]:
    """key -> (accepted classes, required on read, the nested contract of a record), from the annotations."""
    required, hints = contract.__required_keys__, get_type_hints(contract)
    return {k: (_kinds(h), k in required, h if is_typeddict(h) else None) for k, h in hints.items()}


_SPECS = {c: _spec(c) for c in (AnswerRow, ScoreRow, ModelRecord, SamplingRecord, JudgeInputsRecord,
                                Manifest, *MANIFESTS.values())}  # fmt: skip


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join("null" if k is type(None) else f"a {k.__name__}" for k in kinds)


def _is(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in kinds:  # True is an int to Python, not to the contract
        return False
    return isinstance(value, kinds)


def check(data: Any, contract: type, where: str, *, whole: bool = False, prefix: str = "") -> dict:
    """``data`` if it fits ``contract``; else ContractError naming ``where`` and the key.

    ``whole``: a row being written (every key of the contract, none other); else one read back (the
    required keys, any known key of its type, other keys kept as they are).
    """
    if not isinstance(data, dict):  # a nested record that is not an object fails its key's type check first
        raise ContractError(
            f"{where}: expected a JSON object ({contract.__name__}), got a {type(data).__name__}"
        )
    spec = _SPECS[contract]
    unknown = [prefix + k for k in sorted(set(data) - set(spec))] if whole else []
    if unknown:
        raise ContractError(f"{where}: field(s) {unknown} are not in the {contract.__name__} contract")
    for key, (kinds, required, nested) in spec.items():
        if key not in data:
            if required or whole:
                raise ContractError(f"{where}: field {prefix + key!r} is missing; expected {_names(kinds)}")
            continue
        value = data[key]
        if not _is(value, kinds):
            got = type(value).__name__
            raise ContractError(f"{where}: field {prefix + key!r} is a {got}; expected {_names(kinds)}")
        if nested is not None and isinstance(value, dict):
            check(value, nested, where, whole=whole, prefix=f"{prefix}{key}.")
    return data


def answer_row(**fields: Any) -> AnswerRow:
    """An answers.jsonl row from its fields (all of them, each of its type)."""
    return check(fields, AnswerRow, f"{ANSWERS} row {fields.get('id')!r}", whole=True)


def score_row(answer: dict, **fields: Any) -> ScoreRow:
    """A scores.jsonl row: the answer's keys (None where it lacks one), then ``fields`` (scores, judgments...)."""
    row = {k: answer.get(k) for k in ANSWER_KEYS_IN_SCORES} | fields
    return check(row, ScoreRow, f"{SCORES} row {row.get('id')!r}", whole=True)


def check_answer_row(row: Any, path: Any, lineno: int) -> AnswerRow:
    """An answers.jsonl row read back (line ``lineno`` of ``path``), checked."""
    return check(row, AnswerRow, f"{path}:{lineno}")


def check_score_row(row: Any, path: Any, lineno: int) -> ScoreRow:
    """A scores.jsonl row read back (line ``lineno`` of ``path``), checked."""
    return check(row, ScoreRow, f"{path}:{lineno}")


def question_key(row: dict) -> str:
    """``<set>/<question_id>``: the key of the row's question in questions.json."""
    return f"{row['question_set']}/{row['question_id']}"


def manifest_record(stage: str, fields: dict, where: str) -> Manifest:
    """A manifest about to be written by any stage: a known stage and the header's keys of their type (the
    evaluate and judge writers check their whole contract first: evaluate_manifest, judge_manifest)."""
    if stage not in STAGES:
        raise ContractError(f"{where}: stage {stage!r} is not one of {STAGES}")
    return check({"stage": stage, **fields}, Manifest, where)


def check_manifest(data: Any, where: Any, stage: str | None = None) -> Manifest:
    """A manifest read back from ``where``: its stage's typed keys of their type; with ``stage``, of that stage."""
    found = data.get("stage") if isinstance(data, dict) else None
    contract = MANIFESTS.get(found, Manifest) if isinstance(found, str) else Manifest
    manifest = check(data, contract, str(where))
    if stage is not None and found != stage:
        raise ContractError(f"{where}: the manifest of a {found!r} run; expected a {stage!r} run")
    return manifest


def evaluate_manifest(**fields: Any) -> EvaluateManifest:
    """The fields of an evaluation run's manifest (every key of EvaluateManifest but the header's)."""
    return _whole_manifest("evaluate", EvaluateManifest, fields)


def judge_manifest(**fields: Any) -> JudgeManifest:
    """The fields of a judge run's manifest (every key of JudgeManifest but the header's)."""
    return _whole_manifest("judge", JudgeManifest, fields)


def _whole_manifest(stage: str, contract: type, fields: dict) -> dict:
    header = {"stage": stage, "git_commit": None, "written_at": ""}  # em.io.write_manifest fills these in
    check({**header, **fields}, contract, f"{stage} {MANIFEST}", whole=True)
    return fields
