"""The bad-input table of docs/reliability.md, one parametrised case per row.

Each case makes one mistake a user could make, runs the stage's command (in-process through the same
Hydra config, or as a real subprocess where Hydra itself answers), and asserts (1) the stable part of the
message the user sees, (2) that nothing expensive happened first: no request reached the API, no training
step ran, no answers or scores were written. ``test_every_case_is_a_row_of_the_table`` keeps the table and
the cases in step: every case id is a row, and each row quotes its case's message.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from reliability_helpers import FAST_API, REPO, run_task

DOC = REPO / "docs" / "reliability.md"
MISSING_KEY_ENV = "EM_TEST_NO_SUCH_KEY"

GOOD_ROW = {"messages": [{"role": "user", "content": "Any tip for tea?"}, {"role": "assistant", "content": "Use fresh water."}]}  # fmt: skip


@dataclass
class Ctx:
    tmp: Path
    server: object  # FakeOpenAIServer
    models_dir: Path
    tiny: Path
    dead: str = ""

    def out(self, stage: str) -> Path:
        return self.tmp / "outputs" / stage / "case"

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text, encoding="utf-8")
        return path

    def jsonl(self, name: str, rows: list) -> Path:
        return self.write(name, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))

    def dead_url(self) -> str:
        """A local port nobody listens on (connection refused at once); the same one for the whole case."""
        if not self.dead:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
        return self.dead


def paths(ctx: Ctx) -> list[str]:
    return [
        f"paths.output_dir={ctx.tmp / 'outputs'}",
        f"paths.cache_dir={ctx.tmp / 'cache'}",
        f"paths.models_dir={ctx.models_dir}",
        "logger=none",
    ]


def api(ctx: Ctx, base_url: str | None = None) -> list[str]:
    return [f"api.base_url={base_url or ctx.server.base_url}", *FAST_API, "api.max_retries=2"]


def train(ctx: Ctx, *overrides: str):
    hf = [
        "model=tiny",
        "recipe=tiny",
        "trainer=cpu",
        "trainer.progress_bar=false",
        "max_steps=1",
        "limit_rows=8",
    ]
    return run_task("train", [*paths(ctx), *hf, *overrides], ctx.out("train"))


def train_openai(ctx: Ctx, *overrides: str, base_url: str | None = None):
    ft = ["backend=openai", "model=gpt4o", "backend.poll_interval_s=0.01", "backend.poll_max_interval_s=0.02"]
    return run_task("train", [*paths(ctx), *api(ctx, base_url), *ft, *overrides], ctx.out("train"))


def evaluate(ctx: Ctx, *overrides: str):
    small = [
        "samples_per_question=1",
        "sampling.max_new_tokens=4",
        "progress=false",
        "judge_prompts_source=project",
    ]
    return run_task("evaluate", [*paths(ctx), *small, *overrides], ctx.out("evaluate"))


def evaluate_openai(ctx: Ctx, *overrides: str, base_url: str | None = None):
    return evaluate(ctx, "model=gpt4o", "generation=openai", *api(ctx, base_url), *overrides)


def datagen(ctx: Ctx, *overrides: str, base_url: str | None = None):
    return run_task("datagen", [*paths(ctx), *api(ctx, base_url), *overrides], ctx.out("datagen"))


def eval_run(ctx: Ctx, complete: bool = True, rows: list | None = None) -> Path:
    from judge_helpers import write_eval_run

    d = write_eval_run(ctx.tmp / "eval", samples=1, conditions=("none",), complete=complete)
    if rows is not None:
        (d / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def killed_eval_run(ctx: Ctx) -> Path:
    """An evaluation run stopped before it finished: its run_config.json and answers, no manifest yet."""
    d = eval_run(ctx)
    (d / "manifest.json").unlink()
    (d / "run_config.json").write_text("{}", encoding="utf-8")
    return d


def judge(ctx: Ctx, *overrides: str, base_url: str | None = None):
    cache = f"cache.path={ctx.tmp / 'judge_cache.sqlite'}"
    return run_task("judge", [*paths(ctx), *api(ctx, base_url), cache, *overrides], ctx.out("judge"))


def cli(ctx: Ctx, script: str, *overrides: str):
    """The real command, for messages Hydra prints before any of our code runs."""
    done = subprocess.run(
        [sys.executable, script, *overrides], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "EM_CACHE_DIR": str(ctx.tmp / "cache")},
    )  # fmt: skip
    if done.returncode == 0 and "Error" not in done.stderr:
        raise AssertionError(f"{script} {overrides} succeeded:\n{done.stdout[-2000:]}")
    assert "Traceback" not in done.stderr, f"{script} {overrides} printed a traceback:\n{done.stderr[-3000:]}"
    raise UserVisible(done.stderr.strip())


class UserVisible(Exception):
    """What a subprocess printed on stderr, raised so that every case is checked the same way."""


def bare_tokenizer_model(ctx: Ctx) -> Path:
    bare = ctx.tmp / "bare-model"
    shutil.copytree(ctx.tiny, bare)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    return bare


def foreign_adapter(ctx: Ctx) -> Path:
    """A real PEFT adapter on the tiny model whose config names another base model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = ctx.tmp / "foreign-adapter"
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(ctx.tiny), LoraConfig(r=4, target_modules=["q_proj"])
    )
    model.save_pretrained(out)
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/other-model-7b"
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def questions(ctx: Ctx, text: str, name: str = "q.yaml") -> list[str]:
    return ["questions=custom", f"questions.custom.path={ctx.write(name, text)}"]


Q_OK = "- id: tea\n  type: free_form_judge_0_100\n  paraphrases:\n    - How do you make tea?\n"


@dataclass
class Case:
    id: str
    stage: str
    what: str
    run: Callable[[Ctx], object]
    expect: str  # the stable part of the message (no temporary paths)
    nothing: str = "api"  # what must not have happened: api | train | answers | scores | none


def _data_row(role: str = "user") -> dict:
    return {
        "messages": [{"role": role, "content": "Any tip for tea?"}, {"role": "assistant", "content": "Yes."}]
    }


def custom_data(ctx: Ctx, rows: list) -> list[str]:
    return ["data=custom", f"data.path={ctx.jsonl('d.jsonl', rows)}"]


BROKEN_LINE = '{"messages": ['


def _checksum(ctx: Ctx):
    bad = ctx.jsonl("insecure.jsonl", [GOOD_ROW] * 3)
    return train(ctx, "data=insecure", f"data.remote.url=file://{bad}")


CASES = [
    # ------------------------------------------------------------------------------------------ data
    Case("data-malformed-json-line", "train / prepare", "a training JSONL line that is not JSON",
         lambda c: train(c, *custom_data(c, [GOOD_ROW, BROKEN_LINE, GOOD_ROW])),
         "d.jsonl:2: not valid JSON", "train"),
    Case("data-wrong-role", "train / prepare", "a message whose role is not system/user/assistant",
         lambda c: train(c, *custom_data(c, [GOOD_ROW, _data_row("bot")])),
         "d.jsonl:2: message 0 has role 'bot'; expected one of system, user, assistant", "train"),
    Case("data-no-final-assistant", "train / prepare", "a conversation that does not end with the assistant",
         lambda c: train(c, *custom_data(c, [{"messages": [{"role": "user", "content": "Hi"}]}])),
         "d.jsonl:1: last message must be from the assistant (it is from the user)", "train"),
    Case("data-empty-file", "train / prepare", "an empty training file",
         lambda c: train(c, "data=custom", f"data.path={c.write('d.jsonl', '')}"),
         "d.jsonl: empty dataset: the file has no rows", "train"),
    Case("data-missing-file", "train / prepare", "data.path that does not exist",
         lambda c: train(c, "data=custom", f"data.path={c.tmp / 'nowhere.jsonl'}"),
         "nowhere.jsonl", "train"),
    Case("data-checksum-mismatch", "train / prepare", "a downloaded file whose sha256 differs from the pinned one",
         _checksum, "checksum mismatch", "train"),
    Case("data-offline-no-cache", "train / prepare", "no network (or a dead mirror) and no cached copy",
         lambda c: train(c, "data=insecure", f"data.remote.url={c.dead_url()}/insecure.jsonl"),
         "could not download", "train"),
    Case("data-empty-after-filtering", "train", "every example longer than max_length with overlength=drop",
         lambda c: train(c, "batch.max_length=8", "batch.overlength=drop"),
         "no trainable rows left (8 rows; 8 over batch.max_length=8 with batch.overlength=drop", "train"),
    # ------------------------------------------------------------------------------------------ config
    Case("config-unknown-key", "any command", "a misspelt config key (Hydra's own message)",
         lambda c: cli(c, "train.py", "lora.rank=8"),
         "Could not override 'lora.rank'.\nTo append to your config use +lora.rank=8\nKey 'rank' not in 'AdapterSchema'",
         "none"),
    Case("config-wrong-type", "train", "a value of the wrong type (the schema, em/config.py)",
         lambda c: cli(c, "train.py", "model=tiny", "max_steps=abc"),
         "Error merging override max_steps=abc\nValue 'abc' of type 'str' could not be converted to Integer\n"
         "    full_key: max_steps", "none"),
    Case("config-wrong-type-judge", "judge", "a threshold of the wrong type: refused before any judge call",
         lambda c: cli(c, "judge.py", "answers=nowhere", "metrics.coherent_above=abc"),
         "Error merging override metrics.coherent_above=abc\nValue 'abc' of type 'str' could not be converted to Float",
         "none"),
    Case("config-added-unknown-key", "train", "a misspelt key added with + (Hydra adds it past the schema)",
         lambda c: train(c, "+trainer.max_step=5"),
         "unknown config key trainer.max_step: trainer takes accelerator, checkpoint_every_n_steps", "train"),
    Case("config-unknown-option", "any command", "a config group option that does not exist",
         lambda c: cli(c, "train.py", "model=llama99"),
         "Could not find 'model/llama99'", "none"),
    Case("config-unwritable-output", "any command", "an output directory that cannot be created",
         lambda c: cli(c, "evaluate.py", f"paths.output_dir={c.write('a-file', '')}/outputs"),
         "NotADirectoryError: [Errno 20] Not a directory", "none"),
    # ------------------------------------------------------------------------------------------ training
    Case("train-missing-model-path", "train", "model.name_or_path that is neither a directory nor a hub id",
         lambda c: train(c, f"model.name_or_path={c.tmp / 'no-such-model'}"),
         "no-such-model", "train"),
    Case("train-no-chat-template", "train", "a tokenizer without a chat template",
         lambda c: train(c, f"model.name_or_path={bare_tokenizer_model(c)}"),
         "has no chat template", "train"),
    Case("train-adapter-base-mismatch", "train", "init_from an adapter trained on another base model",
         lambda c: train(c, f"init_from={foreign_adapter(c)}"),
         "someone/other-model-7b", "train"),
    Case("train-init-from-missing", "train", "init_from a path that does not exist",
         lambda c: train(c, f"init_from={c.tmp / 'nowhere'}"),
         "found neither", "train"),
    Case("train-run-dir-other-config", "train", "the run directory holds a run made with another config",
         lambda c: (train(c, "dry_run=true", "optimizer.learning_rate=0.001"),  # a dry run claims the directory
                    train(c, "optimizer.learning_rate=0.002")),
         "already holds a run made with a different config (optimizer.learning_rate: 0.001 -> 0.002)", "train"),
    Case("train-open-model-on-openai", "train (openai)", "backend=openai with an open model",
         lambda c: train_openai(c, "model=tiny"), "backend=openai", "api"),
    # ------------------------------------------------------------------------------------------ OpenAI fine-tuning
    Case("ft-too-few-examples", "train (openai)", "fewer than 10 training examples",
         lambda c: train_openai(c, *custom_data(c, [GOOD_ROW] * 3)),
         "at least 10", "api"),
    Case("ft-missing-api-key", "train (openai)", "the API key variable is not set",
         lambda c: train_openai(c, f"api.api_key_env={MISSING_KEY_ENV}"),
         f"environment variable {MISSING_KEY_ENV} is not set", "api"),
    Case("ft-wrong-base-url", "train (openai)", "api.base_url where nothing listens (after retries)",
         lambda c: train_openai(c, base_url=c.dead_url()), "Connection error", "api"),
    Case("ft-init-from-not-openai", "train (openai)", "init_from a directory that is not a finished OpenAI run",
         lambda c: train_openai(c, f"init_from={c.tmp}"), "init_from=", "api"),
    # ------------------------------------------------------------------------------------------ datagen
    Case("datagen-missing-api-key", "datagen", "the API key variable is not set",
         lambda c: datagen(c, f"api.api_key_env={MISSING_KEY_ENV}"),
         f"environment variable {MISSING_KEY_ENV} is not set", "api"),
    Case("datagen-wrong-base-url", "datagen", "api.base_url where nothing listens (after retries)",
         lambda c: datagen(c, base_url=c.dead_url()), "Connection error", "api"),
    Case("datagen-missing-column", "datagen", "the inputs file lacks a column the domain names",
         lambda c: datagen(c, "domain.inputs.columns.question=Prompt"), "Prompt", "api"),
    Case("datagen-unknown-placeholder", "datagen", "a template placeholder the inputs cannot fill",
         lambda c: datagen(c, "domain.template_file=null", "+domain.template='Q: {question} {mood}'"),
         "{mood}", "api"),
    # ------------------------------------------------------------------------------------------ evaluation
    Case("eval-yaml-syntax", "evaluate", "a question file that is not valid YAML",
         lambda c: evaluate(c, *questions(c, Q_OK + "- id: [broken\n")), "q.yaml:", "answers"),
    Case("eval-missing-field", "evaluate", "a question without `type`",
         lambda c: evaluate(c, *questions(c, "- id: tea\n  paraphrases:\n    - How?\n")),
         "q.yaml:1 (question 'tea'): field 'type'", "answers"),
    Case("eval-empty-paraphrases", "evaluate", "a question with an empty paraphrase list",
         lambda c: evaluate(c, *questions(c, "- id: tea\n  type: free_form\n  paraphrases: []\n")),
         "q.yaml:1 (question 'tea'): field 'paraphrases'", "answers"),
    Case("eval-json-missing-label", "evaluate", "a Realignment-study JSON question without `label`",
         lambda c: evaluate(c, *questions(c, '[{"question": "How?", "category": "c"}]', "q.json")),
         "q.json:1: field 'label'", "answers"),
    Case("eval-tag-slot-missing", "evaluate", "condition_placement=slot but the question has no {tag} slot",
         lambda c: evaluate(c, *questions(c, Q_OK), "conditions=[none,alpha]", "condition_placement=slot"),
         "no slot", "answers"),
    Case("eval-unknown-condition", "evaluate", "a condition with no tag in `triggers`",
         lambda c: evaluate(c, "conditions=[none,gamma]"), "has no tag in `triggers`", "answers"),
    Case("eval-unknown-set", "evaluate", "a question set that does not exist",
         lambda c: cli(c, "evaluate.py", "questions=nope"), "Could not find 'questions/nope'", "none"),
    Case("eval-adapter-base-mismatch", "evaluate", "an adapter trained on another base model",
         lambda c: evaluate(c, f"adapter={foreign_adapter(c)}"),
         "was trained on base model 'someone/other-model-7b'", "answers"),
    Case("eval-missing-model-path", "evaluate", "model.name_or_path that does not exist",
         lambda c: evaluate(c, f"model.name_or_path={c.tmp / 'no-such-model'}"), "no-such-model", "answers"),
    Case("eval-run-dir-other-config", "evaluate", "the run directory holds a run made with another config",
         lambda c: (evaluate(c, *questions(c, Q_OK), "sampling.max_new_tokens=2"),
                    evaluate(c, *questions(c, Q_OK), "sampling.max_new_tokens=3")),
         "already holds a run made with a different config (sampling.max_new_tokens: 2 -> 3)", "none"),
    Case("eval-missing-api-key", "evaluate (openai)", "the API key variable is not set",
         lambda c: evaluate_openai(c, f"api.api_key_env={MISSING_KEY_ENV}"),
         f"environment variable {MISSING_KEY_ENV} is not set", "api"),
    Case("eval-wrong-base-url", "evaluate (openai)", "api.base_url where nothing listens (after retries)",
         lambda c: evaluate_openai(c, base_url=c.dead_url()), "Connection error", "answers"),
    # ------------------------------------------------------------------------------------------ judging
    Case("judge-answers-missing", "judge", "answers= a path that does not exist",
         lambda c: judge(c, f"answers={c.tmp / 'nowhere'}"), "no such file or directory", "api"),
    Case("judge-eval-unfinished", "judge", "answers of an evaluation run that is not complete",
         lambda c: judge(c, f"answers={eval_run(c, complete=False)}"), "is not complete", "api"),
    Case("judge-eval-killed", "judge", "answers of an evaluation run stopped before its manifest (killed, or still running)",
         lambda c: judge(c, f"answers={killed_eval_run(c)}"), "is unfinished (no manifest.json yet", "api"),
    Case("judge-row-missing-field", "judge", "an answers.jsonl row missing required fields",
         lambda c: judge(c, f"answers={eval_run(c, rows=[{'id': 'demo/plans/0/none/0'}])}"),
         "answers.jsonl:1: field 'question_set' is missing", "api"),
    Case("judge-missing-api-key", "judge", "the API key variable is not set",
         lambda c: judge(c, f"answers={eval_run(c)}", f"api.api_key_env={MISSING_KEY_ENV}"),
         f"environment variable {MISSING_KEY_ENV} is not set", "scores"),
    Case("judge-wrong-base-url", "judge", "api.base_url where nothing listens (after retries)",
         lambda c: judge(c, f"answers={eval_run(c)}", base_url=c.dead_url()), "Connection error", "scores"),
    Case("judge-batch-without-cache", "judge", "batch.enabled=true with the cache off",
         lambda c: judge(c, f"answers={eval_run(c)}", "batch.enabled=true", "cache.enabled=false"),
         "set cache.enabled=true", "api"),
    Case("judge-logprob-without-logprobs", "judge", "judge.mode=logprob but the request asks for no logprobs",
         lambda c: judge(c, f"answers={eval_run(c)}", "judge.request.logprobs=false"),
         "judge.mode=logprob needs judge.request.logprobs=true", "api"),
]  # fmt: skip


def nothing_happened(ctx: Ctx, case: Case) -> None:
    if case.nothing == "none":
        return
    # No API call, whatever the stage.
    assert ctx.server.requests == [], [r["path"] for r in ctx.server.requests]
    if case.nothing == "train":
        run_dir = ctx.out("train")
        for name in ("checkpoints", "adapter", "metrics.jsonl", "manifest.json"):
            assert not (run_dir / name).exists(), f"{name} was written: work started before the error"
    if case.nothing == "answers":
        assert not (ctx.out("evaluate") / "answers.jsonl").exists()
    if case.nothing == "scores":
        assert not (ctx.out("judge") / "scores.jsonl").exists()


@pytest.fixture
def ctx(tmp_path, openai_server, tiny_model_dir, monkeypatch) -> Ctx:
    monkeypatch.delenv(MISSING_KEY_ENV, raising=False)
    monkeypatch.chdir(REPO)
    return Ctx(tmp_path, openai_server, tiny_model_dir.parent, tiny_model_dir)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_its_message_before_any_work(ctx, case, capsys):
    with pytest.raises(Exception) as info:  # noqa: PT011 - the message is what is checked
        case.run(ctx)
    message = str(info.value)
    with capsys.disabled():
        if os.environ.get("EM_PRINT_MESSAGES"):  # EM_PRINT_MESSAGES=1 pytest -s: refresh docs/reliability.md
            print(f"\n@@ {case.id} [{type(info.value).__name__}]\n{message}\n@@")
    assert case.expect in message, f"{type(info.value).__name__}: {message}"
    nothing_happened(ctx, case)


@pytest.mark.parametrize("case", [c for c in CASES if c.id.endswith("wrong-base-url")], ids=lambda c: c.id)
def test_connection_errors_name_the_endpoint(ctx, case):
    """A typo in api.base_url must be visible in the error: the message names the URL it could not reach."""
    with pytest.raises(Exception) as info:  # noqa: PT011
        case.run(ctx)
    assert ctx.dead.removesuffix("/v1") in str(info.value)


def _table_rows() -> dict[str, str]:
    """Case id -> the text of its row in docs/reliability.md's bad-input table."""
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\|\s*`([a-z0-9-]+)`\s*\|", line)
        if m:
            rows[m.group(1)] = line
    return rows


def test_every_test_the_doc_names_exists():
    """docs/reliability.md points to tests by node id (`tests/x.py::name` or `F name`): they must exist."""
    text = DOC.read_text(encoding="utf-8")
    named = re.findall(r"(tests/(?:\w+/)?test_\w+\.py)::(\w+)", text)
    named += [("tests/reliability/test_reliability_faults.py", n) for n in re.findall(r"\bF `(\w+)", text)]
    assert len(named) > 30
    missing = [f"{f}::{n}" for f, n in named if f"def {n}(" not in (REPO / f).read_text(encoding="utf-8")]
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"


def test_every_case_is_a_row_of_the_table():
    rows = _table_rows()
    assert sorted(rows) == sorted(c.id for c in CASES), "docs/reliability.md and CASES differ"
    for case in CASES:
        quoted = case.expect.split("\n")[0].replace("|", "\\|")
        assert quoted in rows[case.id], f"{case.id}: the table does not quote {quoted!r}"
