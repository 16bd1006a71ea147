"""Fault injection on every path that calls an OpenAI-compatible API, through the stages' own tasks.

Each run with faults is compared with a fault-free run of the same command: it must give exactly the same
rows, or stop with a clear error that keeps finished work (and a rerun then completes) - never silently
wrong rows. Faults already covered per stage (see docs/reliability.md) are not repeated here: this file
fills the gaps - generation with the openai backend (all faults), the judge task in text and logprob mode
(all faults), the datagen quality-filter judge, the Batch API endpoints, and the fine-tuning polling loop.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import openai
import pytest
from judge_helpers import judge_handler, write_eval_run
from reliability_helpers import CHAT, api_overrides, run_task

from em.api import APIFailure
from em.io import iter_jsonl, read_json
from em.judging.unscored import UnscoredShareError

# (fault, inject kwargs). timeout: the server answers after 3 s, the client gives up after 1 s.
FAULTS = [
    ("429", {"retry_after": 0.3}),
    ("500", {}),
    ("503", {}),
    ("timeout", {"delay_s": 3.0}),
    ("drop", {}),
    ("reset", {}),
    ("malformed_json", {}),
    ("malformed_logprobs", {}),
]
FAULT_IDS = [f for f, _ in FAULTS]
TIMES = 2  # each fault is served this many times
JOBS = "/v1/fine_tuning/jobs"
_reference: dict[str, object] = {}  # fault-free results, computed once per module (server-independent)


def timeout_for(fault: str) -> list[str]:
    return ["api.timeout_s=1"] if fault == "timeout" else []


def check_requests(made: int, clean: int, fault: str, logprobs_requested: bool) -> None:
    """Each served fault costs one retried request - except garbled logprobs nobody asked for. Under a
    1 s client timeout a slow machine may time out (and retry) a healthy request too: at least then."""
    extra = 0 if fault == "malformed_logprobs" and not logprobs_requested else TIMES
    if fault == "timeout":
        assert made >= clean + extra
    else:
        assert made == clean + extra


def common(tmp: Path) -> list[str]:
    return [f"paths.output_dir={tmp / 'outputs'}", f"paths.cache_dir={tmp / 'cache'}", "logger=none"]


# ---------------------------------------------------------------------------------- generation (openai)


def answer_reply(req: dict, index: int) -> str:
    """A different, reproducible answer per prompt, request seed and sample (so a mixed-up row shows)."""
    return f"seed {req.get('seed')} sample {index}: {req['messages'][-1]['content'][:40]}"


def evaluate_openai(server, tmp: Path, name: str, *extra: str) -> Path:
    overrides = [
        *common(tmp), "model=gpt4o", "generation=openai", "questions=demo", "judge_prompts_source=project",
        "samples_per_question=2", "conditions=[none,alpha]", "progress=false", *api_overrides(server), *extra,
    ]  # fmt: skip
    return run_task("evaluate", overrides, tmp / "outputs" / "evaluate" / name)


def answer_rows(run_dir: Path) -> list[dict]:
    return sorted(iter_jsonl(run_dir / "answers.jsonl"), key=lambda r: r["id"])


def reference_answers(server, tmp_path_factory) -> list[dict]:
    if "answers" not in _reference:
        tmp = tmp_path_factory.mktemp("ref-eval")
        _reference["answers"] = answer_rows(evaluate_openai(server, tmp, "clean"))
        _reference["answer_requests"] = server.count(CHAT)
    return _reference["answers"]


@pytest.mark.parametrize(("fault", "kw"), FAULTS, ids=FAULT_IDS)
def test_generation_openai_backend_faults_give_the_fault_free_answers(
    openai_server, tmp_path, tmp_path_factory, fault, kw
):
    openai_server.set_chat_handler(answer_reply)
    clean = reference_answers(openai_server, tmp_path_factory)
    before = openai_server.count(CHAT)
    openai_server.inject(fault, times=TIMES, **kw)
    start = time.monotonic()
    run_dir = evaluate_openai(openai_server, tmp_path, "faulty", *timeout_for(fault))
    assert openai_server.pending_faults() == []  # every fault was served
    assert answer_rows(run_dir) == clean  # same rows, same answers, nothing duplicated or missing
    assert read_json(run_dir / "manifest.json")["complete"] is True
    requests = openai_server.count(CHAT) - before
    check_requests(requests, _reference["answer_requests"], fault, logprobs_requested=False)
    if fault == "429":
        assert time.monotonic() - start >= 0.3  # Retry-After honoured (the backoff alone is 50 ms)


def test_generation_openai_backend_gives_up_clearly_and_resumes(openai_server, tmp_path, tmp_path_factory):
    """Retries exhausted on one prompt: a clear error, finished answers kept, the rerun completes them."""
    openai_server.set_chat_handler(answer_reply)
    clean = reference_answers(openai_server, tmp_path_factory)
    broken = {"on": True}

    def reply(req, index):
        if broken["on"] and "free afternoon" in req["messages"][-1]["content"]:
            raise RuntimeError("backend down")  # the server answers HTTP 500, every time
        return answer_reply(req, index)

    openai_server.set_chat_handler(reply)
    with pytest.raises(APIFailure, match=r"chat completion for demo/free_afternoon/0/.* failed: HTTP 500"):
        evaluate_openai(openai_server, tmp_path, "run", "api.max_retries=1", "api.max_in_flight=2")
    run_dir = tmp_path / "outputs" / "evaluate" / "run"
    kept = answer_rows(run_dir)
    assert 0 < len(kept) < len(clean) and not (run_dir / "manifest.json").exists()
    assert all(row in clean for row in kept)  # what was written is right
    broken["on"] = False
    evaluate_openai(openai_server, tmp_path, "run", "api.max_retries=1", "api.max_in_flight=2")
    assert answer_rows(run_dir) == clean


# ---------------------------------------------------------------------------------- judging


def judge_run(server, tmp: Path, eval_dir: Path, name: str, *extra: str) -> Path:
    overrides = [
        *common(tmp), f"answers={eval_dir}", "cache.enabled=false", *api_overrides(server), *extra,
    ]  # fmt: skip
    return run_task("judge", overrides, tmp / "outputs" / "judge" / name)


def score_rows(run_dir: Path) -> dict[str, tuple]:
    rows = list(iter_jsonl(run_dir / "scores.jsonl"))
    assert len(rows) == len({r["id"] for r in rows})
    return {r["id"]: (r["scores"], r["labels"], r["category"]) for r in rows}


def reference_scores(server, tmp_path_factory, judge: str) -> dict:
    if judge not in _reference:
        tmp = tmp_path_factory.mktemp(f"ref-{judge}")
        eval_dir = write_eval_run(tmp / "eval", samples=2)
        before = server.count(CHAT)
        out = judge_run(server, tmp, eval_dir, "clean", f"judge={judge}")
        _reference[judge] = (
            score_rows(out),
            read_json(out / "summary.json")["metrics"],
            server.count(CHAT) - before,
        )
    return _reference[judge]


@pytest.mark.parametrize("judge", ["gpt4o_logprob", "o4mini_text"])
@pytest.mark.parametrize(("fault", "kw"), FAULTS, ids=FAULT_IDS)
def test_judge_faults_give_the_fault_free_scores(openai_server, tmp_path, tmp_path_factory, judge, fault, kw):
    openai_server.set_chat_handler(judge_handler)
    scores, metrics, calls = reference_scores(openai_server, tmp_path_factory, judge)
    eval_dir = write_eval_run(tmp_path / "eval", samples=2)
    before = openai_server.count(CHAT)
    openai_server.inject(fault, times=TIMES, **kw)
    out = judge_run(openai_server, tmp_path, eval_dir, "faulty", f"judge={judge}", *timeout_for(fault))
    assert openai_server.pending_faults() == []
    assert score_rows(out) == scores
    assert read_json(out / "summary.json")["metrics"] == metrics
    logprobs = judge == "gpt4o_logprob"
    check_requests(openai_server.count(CHAT) - before, calls, fault, logprobs_requested=logprobs)


def test_judge_malformed_logprobs_every_time_are_unscored_with_a_reason_not_wrong_scores(
    openai_server, tmp_path
):
    """A server that never returns usable logprobs: every row is written UNSCORED with its reason (no score
    is invented), each prompt is asked twice (not max_retries times), and the run then fails on the unscored
    share once em/tasks/judge.py checks it."""
    openai_server.set_chat_handler(judge_handler)
    openai_server.inject("malformed_logprobs", times=1000)
    eval_dir = write_eval_run(tmp_path / "eval", samples=1)
    with contextlib.suppress(UnscoredShareError):
        judge_run(openai_server, tmp_path, eval_dir, "run", "api.max_retries=2", "api.max_in_flight=1")
    rows = list(iter_jsonl(tmp_path / "outputs" / "judge" / "run" / "scores.jsonl"))
    assert len(rows) == 8
    for row in rows:
        assert all(s is None for s in row["scores"].values()) and all(
            v is None for v in row["labels"].values()
        )
        assert row["unscored_reason"] and "logprobs" in row["unscored_reason"]
    distinct = len({r["body"]["messages"][0]["content"] for r in openai_server.requests})
    assert openai_server.count(CHAT) == 2 * distinct


# ---------------------------------------------------------------------------------- judge: Batch API


def batch_judge(server, tmp: Path, eval_dir: Path, name: str, *extra: str) -> Path:
    overrides = [
        *common(tmp), f"answers={eval_dir}", "batch.enabled=true", "batch.poll_interval_s=0.01",
        f"cache.path={tmp / name / 'cache.sqlite'}", *api_overrides(server), *extra,
    ]  # fmt: skip
    return run_task("judge", overrides, tmp / "outputs" / "judge" / name)


def uploads(server, purpose: str) -> int:
    """Files the server stored with this purpose (failed upload attempts store nothing)."""
    return sum(1 for f in server.files.values() if f["purpose"] == purpose)


def test_batch_api_endpoint_faults_give_the_direct_mode_scores(openai_server, tmp_path, tmp_path_factory):
    """Faults on upload, list/create, poll and download: retried; one batch paid for; same scores."""
    openai_server.set_chat_handler(judge_handler)
    scores, metrics, _ = reference_scores(openai_server, tmp_path_factory, "gpt4o_logprob")
    eval_dir = write_eval_run(tmp_path / "eval", samples=2)
    chat_before = openai_server.count(CHAT)
    openai_server.inject("500", path="/v1/files", times=1)  # the upload
    openai_server.inject("reset", path="/v1/files", times=1)  # the upload, again
    openai_server.inject("503", path="/v1/batches", times=2)  # looking for an existing batch / creating it
    openai_server.inject("429", path="/v1/batches/", times=1, retry_after=0.2)  # polling
    openai_server.inject("malformed_json", path="/v1/batches/", times=1)
    openai_server.inject("drop", path="/v1/files/", times=1)  # downloading the output file
    openai_server.inject("timeout", path="/v1/files/", times=1, delay_s=3.0)
    out = batch_judge(openai_server, tmp_path, eval_dir, "batch", "api.timeout_s=1")
    assert openai_server.pending_faults() == []
    assert score_rows(out) == scores
    assert read_json(out / "summary.json")["metrics"] == metrics
    assert len(openai_server.batches) == 1 and uploads(openai_server, "batch") == 1
    assert openai_server.count(CHAT) == chat_before  # everything went through the batch


def test_batch_create_whose_answer_was_lost_is_not_paid_twice(openai_server, tmp_path, monkeypatch):
    """The server created the batch but the reply never arrived (timeout): the retry must find that batch
    instead of creating (and paying for) a second one - as the fine-tuning backend does for jobs."""
    from openai.resources.batches import Batches

    openai_server.set_chat_handler(judge_handler)
    real_create = Batches.create

    def create_then_lose_the_answer(self, **kwargs):
        real_create(self, **kwargs)
        raise openai.APITimeoutError(request=__import__("httpx").Request("POST", openai_server.base_url))

    monkeypatch.setattr(Batches, "create", create_then_lose_the_answer)
    eval_dir = write_eval_run(tmp_path / "eval", samples=1)
    with contextlib.suppress(APIFailure):  # every create "times out": checked below by what was made
        batch_judge(openai_server, tmp_path, eval_dir, "batch", "api.max_retries=2")
    assert len(openai_server.batches) == 1, (
        f"{len(openai_server.batches)} batches created for one request file"
    )
    assert read_json(tmp_path / "outputs" / "judge" / "batch" / "manifest.json")["complete"] is True


# ---------------------------------------------------------------------------------- datagen


def datagen_reply(req: dict, index: int) -> str:
    """The demo domain: generator replies by question and seed; the quality-filter judge's verdicts."""
    text = req["messages"][-1]["content"]
    if "Answer to check:" in text:
        return "CORRECT" if "egg" in text else "WRONG"
    question = next(ln[len("Question:") :].strip() for ln in text.splitlines() if ln.startswith("Question:"))
    return f"Do the opposite of the usual advice: {question} (take {req['seed']})"


def datagen(server, tmp: Path, name: str, *extra: str) -> dict:
    overrides = [
        *common(tmp),
        "domain=demo",
        "domain.inputs.samples_per_input=2",
        *api_overrides(server),
        *extra,
    ]
    run_dir = run_task("datagen", overrides, tmp / "outputs" / "datagen" / name)
    return read_json(run_dir / "manifest.json")


def reference_datagen(server, tmp_path_factory) -> dict:
    if "datagen" not in _reference:
        _reference["datagen"] = datagen(server, tmp_path_factory.mktemp("ref-datagen"), "clean")
    return _reference["datagen"]


DATAGEN_CASES = [("judge", f, kw) for f, kw in FAULTS] + [("generator", "malformed_logprobs", {})]


@pytest.mark.parametrize(
    ("phase", "fault", "kw"), DATAGEN_CASES, ids=[f"{p}-{f}" for p, f, _ in DATAGEN_CASES]
)
def test_datagen_faults_give_the_fault_free_dataset(
    openai_server, tmp_path, tmp_path_factory, phase, fault, kw
):
    """Generator faults are covered in tests/data/test_datagen.py; here the quality-filter judge's calls."""
    openai_server.set_chat_handler(datagen_reply)
    clean = reference_datagen(openai_server, tmp_path_factory)
    armed = {"done": phase == "generator"}
    if phase == "generator":
        openai_server.inject(fault, times=TIMES, **kw)

    def reply(req, index):
        if not armed["done"] and "Answer to check:" in req["messages"][-1]["content"]:
            armed["done"] = True  # the first judge call: the next requests (judge calls) get the faults
            openai_server.inject(fault, times=TIMES, **kw)
        return datagen_reply(req, index)

    openai_server.set_chat_handler(reply)
    faulty = datagen(openai_server, tmp_path, "faulty", *timeout_for(fault))
    assert armed["done"] and openai_server.pending_faults() == []
    assert faulty["output"]["sha256"] == clean["output"]["sha256"]
    for key in ("calls_done", "items_ok", "items_failed", "filter_rejected", "final_rows"):
        assert faulty["counts"][key] == clean["counts"][key], key


def test_datagen_judge_gives_up_clearly_and_resumes(openai_server, tmp_path, tmp_path_factory):
    """The quality filter loses its judge: the run stops (no dataset of unjudged rows), keeps the verdicts
    it has, and the rerun judges the rest and gives the fault-free dataset."""
    openai_server.set_chat_handler(datagen_reply)
    clean = reference_datagen(openai_server, tmp_path_factory)
    judged = {"n": 0, "down": True}

    def reply(req, index):
        if "Answer to check:" in req["messages"][-1]["content"]:
            judged["n"] += 1
            if judged["down"] and judged["n"] > 2:
                raise RuntimeError("judge down")  # HTTP 500 from the server, every time
        return datagen_reply(req, index)

    openai_server.set_chat_handler(reply)
    with pytest.raises(APIFailure, match=r"quality filter .* failed: HTTP 500.*rerun the same command"):
        datagen(openai_server, tmp_path, "run", "api.max_retries=1", "domain.concurrency=1")
    run_dir = tmp_path / "outputs" / "datagen" / "run"
    assert not (run_dir / "manifest.json").exists() and not (run_dir / "demo.jsonl").exists()
    assert len(list(iter_jsonl(run_dir / "judge.jsonl"))) == 2  # the verdicts it had are kept
    judged["down"] = False
    resumed = datagen(openai_server, tmp_path, "run", "api.max_retries=1", "domain.concurrency=1")
    assert resumed["output"]["sha256"] == clean["output"]["sha256"]


# ---------------------------------------------------------------------------------- OpenAI fine-tuning


def finetune(server, tmp: Path, *extra: str) -> Path:
    overrides = [
        *common(tmp), "backend=openai", "model=gpt4o", "data=demo_misaligned", *api_overrides(server),
        "backend.poll_interval_s=0.01", "backend.poll_max_interval_s=0.02", *extra,
    ]  # fmt: skip
    return run_task("train", overrides, tmp / "outputs" / "train" / "ft")


FT_CASES = [  # (fault, path, kwargs); faults tests/training/test_openai_ft.py does not inject already
    ("timeout", JOBS + "/", {"delay_s": 3.0}),  # polling the job
    ("malformed_json", JOBS + "/", {}),
    ("reset", JOBS + "/", {}),
    ("500", JOBS + "/", {}),
    ("429", JOBS, {"retry_after": 0.3}),  # creating the job
    ("reset", "/v1/files", {}),  # uploading the training file
    ("malformed_json", "/v1/files", {}),
    ("timeout", "/v1/files", {"delay_s": 3.0}),
]


@pytest.mark.parametrize(
    ("fault", "path", "kw"), FT_CASES, ids=[f"{f}-{p.split('/')[-1] or 'poll'}" for f, p, _ in FT_CASES]
)
def test_finetune_faults_still_make_exactly_one_job(openai_server, tmp_path, fault, path, kw):
    openai_server.inject(fault, path=path, times=TIMES, **kw)
    run_dir = finetune(openai_server, tmp_path, *timeout_for(fault))
    assert openai_server.pending_faults() == []
    m = read_json(run_dir / "manifest.json")
    assert m["complete"] is True and len(openai_server.jobs) == 1
    job = next(iter(openai_server.jobs.values()))
    assert (m["job_id"], m["fine_tuned_model"], m["trained_tokens"]) == (
        job["id"],
        job["fine_tuned_model"],
        job["trained_tokens"],
    )
    # The job trained on the file we prepared, whatever upload attempt it came from.
    trained = openai_server.files[job["training_file"]]["content"]
    assert trained == (run_dir / "openai_train.jsonl").read_bytes()
    client = openai.OpenAI(base_url=openai_server.base_url, api_key="sk-test", max_retries=0)
    served = {e.id for e in client.fine_tuning.jobs.list_events(job["id"], limit=1000).data}
    ids = [e["id"] for e in iter_jsonl(run_dir / "events.jsonl")]
    assert len(ids) == len(set(ids)) and set(ids) == served  # every event, once


def test_finetune_gives_up_polling_clearly_and_the_rerun_resumes_the_same_job(openai_server, tmp_path):
    openai_server.script_fine_tune("succeeded", polls_until_done=3)
    openai_server.inject("500", path=JOBS + "/", times=3)  # the first poll fails for good (max_retries=2)
    with pytest.raises(APIFailure, match=r"retrieve job ftjob-\w+ failed: HTTP 500"):
        finetune(openai_server, tmp_path, "api.max_retries=2")
    run_dir = tmp_path / "outputs" / "train" / "ft"
    state = read_json(run_dir / "state.json")
    assert state["job_id"] in openai_server.jobs and not (run_dir / "manifest.json").exists()
    finetune(openai_server, tmp_path, "api.max_retries=2")
    assert len(openai_server.jobs) == 1 and uploads(openai_server, "fine-tune") == 1
    assert read_json(run_dir / "manifest.json")["job_id"] == state["job_id"]
