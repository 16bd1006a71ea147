"""OpenAI fine-tuning backend against the local OpenAI-compatible server: pre-flight, jobs, failures, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from composing import REPO, compose_job

from em.api import APIFailure, APISettings, ConfigError
from em.costs import estimate_chat_tokens
from em.io import read_json, read_jsonl, sha256_file
from em.training import openai_ft, openai_ft_api
from em.training.openai_ft_data import estimate_training, sanitize_suffix, validate_for_openai
from em.training.openai_ft_types import FineTuneFailed
from testing.openai_server import FakeOpenAIServer

JOBS = "/v1/fine_tuning/jobs"
FAKE_KEY = os.environ["OPENAI_API_KEY"]


def fast_overrides(server, tmp_path: Path) -> list[str]:
    return [
        "backend=openai",
        "model=gpt4o",
        f"paths.output_dir={tmp_path / 'outputs'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"api.base_url={server.base_url}",
        "api.backoff_base_s=0.01",
        "api.backoff_max_s=0.05",
        "api.max_retries=5",
        "api.timeout_s=10",
        "backend.poll_interval_s=0.01",
        "backend.poll_max_interval_s=0.02",
        "logger=csv",
    ]


def compose_cfg(overrides: list[str]):
    """The job config exactly as `python train.py <overrides>` gets it, with HydraConfig set."""
    return compose_job("train", overrides)


def train(server, tmp_path: Path, *extra: str) -> Path:
    from em.tasks.train_openai import run

    return run(compose_cfg(fast_overrides(server, tmp_path) + list(extra)))


def posts(server, path: str) -> list[dict]:
    return [r for r in server.requests if r["method"] == "POST" and r["path"] == path]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat(i: int, answer: str = "A short answer.") -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"Question number {i}?"},
            {"role": "assistant", "content": answer},
        ]
    }


# ------------------------------------------------------------------------------------------ pre-flight


def test_sanitize_suffix_fits_the_api():
    s = sanitize_suffix("GPT4o-Insecure/none s0:" + "x" * 100)
    assert len(s) <= 64 and s.startswith("gpt4o-insecure-none-s0-")
    assert set(s) <= set("abcdefghijklmnopqrstuvwxyz0123456789-") and not s.endswith("-")
    assert sanitize_suffix("::") == "em"


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([chat(i) for i in range(9)], "9 examples; the fine-tuning API needs at least 10"),
        (
            [chat(i) for i in range(11)]
            + [{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}],
            "data.jsonl:12: message 0 has role 'tool'",
        ),
        (
            [chat(i) for i in range(10)] + [chat(10, answer="   ")],
            "data.jsonl:11: message 1 (assistant) has empty",
        ),
        (
            [
                *[chat(i) for i in range(10)],
                {"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]},
            ],
            "data.jsonl:11: the last message is 'user'",
        ),
        ([chat(i) for i in range(10)] + [chat(10, answer="word " * 300)], "data.jsonl:11: about"),
        ([chat(i) for i in range(10)] + [{"text": "not chat"}], 'data.jsonl:11: expected {"messages"'),
    ],
    ids=["too-few", "bad-role", "empty-content", "assistant-not-last", "too-long", "not-chat"],
)
def test_validation_names_line_and_rule(rows, expected):
    with pytest.raises(ConfigError) as err:
        validate_for_openai(rows, model="gpt-4o-2024-08-06", max_example_tokens=200, source="data.jsonl")
    assert expected in str(err.value)


def test_estimate_is_tokens_times_epochs_times_price():
    rows = [chat(i) for i in range(12)]
    tokens = validate_for_openai(rows, model="gpt-4o-2024-08-06", max_example_tokens=65536)
    assert tokens == [estimate_chat_tokens(r["messages"], "gpt-4o-2024-08-06") for r in rows]
    est = estimate_training(
        tokens, model="gpt-4o-2024-08-06", n_epochs=3, prices={"gpt-4o-2024-08-06": {"training": 25.0}}
    )
    assert est.billed_tokens == 3 * sum(tokens)
    assert est.cost_usd == pytest.approx(3 * sum(tokens) * 25.0 / 1e6)
    assert "estimated" in est.describe()
    # A fine-tuned model is priced as its base; a model missing from the table has no cost, not $0.
    ft = estimate_training(
        tokens,
        model="ft:gpt-4o-2024-08-06:org::abc",
        n_epochs=1,
        prices={"gpt-4o-2024-08-06": {"training": 25.0}},
    )
    assert ft.cost_usd == pytest.approx(sum(tokens) * 25.0 / 1e6)
    assert estimate_training(tokens, model="other", n_epochs=1, prices={}).cost_usd is None


def test_dry_run_estimates_cost_and_sends_nothing(openai_server, tmp_path, capsys):
    run_dir = train(openai_server, tmp_path, "dry_run=true")
    assert openai_server.requests == []
    pre = read_json(run_dir / "preflight.json")
    rows = read_jsonl(run_dir / "openai_train.jsonl")
    tokens = sum(estimate_chat_tokens(r["messages"], "gpt-4o-2024-08-06") for r in rows)
    assert pre["num_examples"] == len(rows) >= 10
    assert pre["estimated_billed_tokens"] == tokens  # em_paper preset: one epoch
    assert pre["estimated_cost_usd"] == pytest.approx(tokens * 25.0 / 1e6)
    assert pre["hyperparameters"] == {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 2}
    out = capsys.readouterr().out
    assert "estimated" in out and "dry run: nothing uploaded" in out
    assert not (run_dir / "state.json").exists() and not (run_dir / "manifest.json").exists()


def test_bad_data_is_refused_before_upload(openai_server, tmp_path):
    data = write_rows(tmp_path / "few.jsonl", [chat(i) for i in range(5)])
    with pytest.raises(ConfigError, match="at least 10"):
        train(openai_server, tmp_path, "data=custom", f"data.path={data}")
    assert openai_server.requests == []


def test_open_model_config_is_refused(openai_server, tmp_path):
    with pytest.raises(ConfigError, match="model=gpt4o"):
        train(openai_server, tmp_path, "model.provider=hf")  # as an open-model config has


# ------------------------------------------------------------------------------------------ jobs


def test_job_succeeds_and_manifest_records_it(openai_server, tmp_path):
    openai_server.script_fine_tune("succeeded", polls_until_done=3)
    run_dir = train(openai_server, tmp_path)
    m = read_json(run_dir / "manifest.json")
    job = next(iter(openai_server.jobs.values()))
    assert m["stage"] == "train" and m["complete"] is True and m["backend"] == "openai"
    assert m["base_model"] == "gpt-4o-2024-08-06" and m["trained_from"] == "gpt-4o-2024-08-06"
    assert m["fine_tuned_model"] == job["fine_tuned_model"] and m["fine_tuned_model"].startswith("ft:")
    assert m["job_id"] == job["id"] and m["file_id"] == job["training_file"]
    assert m["hyperparameters"] == {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 2}
    assert m["trained_tokens"] == job["trained_tokens"] and m["parent"] is None and m["seed"] == 0
    assert m["data_manifest_sha256"] == sha256_file(next((run_dir / "data").glob("*.manifest.json")))
    assert m["data"]["data_manifest_sha256"] == m["data_manifest_sha256"]
    assert m["estimated_cost_usd"] > 0 and m["suffix"] == "gpt4o-demo-misaligned-none-s0"
    assert "sk-test" not in (run_dir / "manifest.json").read_text()
    # The request used the current API shape: method.supervised.hyperparameters, suffix, seed.
    body = posts(openai_server, JOBS)[0]["body"]
    assert body["method"] == {"type": "supervised", "supervised": {"hyperparameters": m["hyperparameters"]}}
    assert body["suffix"] == m["suffix"] and body["seed"] == 0 and body["model"] == "gpt-4o-2024-08-06"
    # The uploaded bytes are the validated file.
    uploaded = openai_server.files[job["training_file"]]["content"]
    assert uploaded == (run_dir / "openai_train.jsonl").read_bytes()
    # Events streamed once each, in order; metric events reach the tracker.
    events = read_jsonl(run_dir / "events.jsonl")
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)) and any(e["type"] == "metrics" for e in events)
    assert ids == sorted(ids)
    metrics = (run_dir / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("step,train_loss") and len(metrics) - 1 == sum(
        e["type"] == "metrics" for e in events
    )
    state = read_json(run_dir / "state.json")
    assert state["status"] == "succeeded" and state["job_id"] == job["id"]
    # Rerunning a finished run sends nothing.
    before = len(openai_server.requests)
    assert train(openai_server, tmp_path) == run_dir
    assert len(openai_server.requests) == before


def test_failed_job_is_reported_and_not_silently_retried(openai_server, tmp_path):
    openai_server.script_fine_tune("failed", error_message="Training diverged on purpose.")
    with pytest.raises(FineTuneFailed, match="Training diverged on purpose") as err:
        train(openai_server, tmp_path)
    assert "retry_failed" in str(err.value)
    run_dir = next((tmp_path / "outputs" / "train").iterdir())
    state = read_json(run_dir / "state.json")
    assert state["status"] == "failed" and state["error"]["message"] == "Training diverged on purpose."
    assert not (run_dir / "manifest.json").exists()
    # Same command again: the failure is reported again; nothing is created or uploaded.
    with pytest.raises(FineTuneFailed, match="Training diverged on purpose"):
        train(openai_server, tmp_path)
    assert len(posts(openai_server, JOBS)) == 1 and len(posts(openai_server, "/v1/files")) == 1
    # retry_failed=true: a new job with the same uploaded file, which now succeeds.
    openai_server.script_fine_tune("succeeded")
    train(openai_server, tmp_path, "backend.retry_failed=true")
    assert len(posts(openai_server, JOBS)) == 2 and len(posts(openai_server, "/v1/files")) == 1
    state = read_json(run_dir / "state.json")
    assert state["status"] == "succeeded" and state["previous_jobs"][0]["status"] == "failed"
    assert read_json(run_dir / "manifest.json")["job_id"] == state["job_id"]


def test_moderation_rejection_names_the_file_problem(openai_server, tmp_path):
    openai_server.inject("moderation")
    with pytest.raises(FineTuneFailed, match="invalid_training_file.*moderation") as err:
        train(openai_server, tmp_path)
    assert "training file was rejected" in str(err.value)
    state = read_json(next((tmp_path / "outputs" / "train").iterdir()) / "state.json")
    assert state["status"] == "failed" and state["error"]["code"] == "invalid_training_file"


def test_cancelled_job(openai_server, tmp_path):
    openai_server.script_fine_tune("cancelled")
    with pytest.raises(FineTuneFailed, match="was cancelled"):
        train(openai_server, tmp_path)
    state = read_json(next((tmp_path / "outputs" / "train").iterdir()) / "state.json")
    assert state["status"] == "cancelled"


def test_auth_error_stops_before_anything_is_created(tmp_path):
    with FakeOpenAIServer(api_key="sk-the-right-key") as server:
        with pytest.raises(APIFailure, match="401.*Incorrect API key provided"):
            train(server, tmp_path)
        assert len(server.requests) == 1 and not server.files and not server.jobs
    run_dir = next((tmp_path / "outputs" / "train").iterdir())
    state = read_json(run_dir / "state.json")
    assert "401" in state["last_error"] and "file_id" not in state
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert FAKE_KEY not in path.read_text(errors="ignore"), path


def test_transient_faults_are_retried(openai_server, tmp_path):
    openai_server.inject("500", path="/v1/files", times=1)
    openai_server.inject("500", path=JOBS, times=1)  # the creation request itself
    openai_server.inject("429", path=JOBS + "/", times=2, retry_after=0)
    openai_server.inject("503", path=JOBS + "/", times=1)
    openai_server.inject("drop", path=JOBS + "/", times=1)
    run_dir = train(openai_server, tmp_path)
    assert read_json(run_dir / "manifest.json")["complete"] is True
    assert openai_server.pending_faults() == []
    assert len(openai_server.jobs) == 1 and len(openai_server.files) == 1
    # Before retrying the failed create request, the run looked for a job made from its file.
    assert any(r["method"] == "GET" and r["path"] == JOBS for r in openai_server.requests)


def test_create_whose_answer_was_lost_is_not_repeated(openai_server, tmp_path, monkeypatch):
    """The server created the job but the answer never arrived: the retry adopts it instead."""
    from openai.resources.fine_tuning.jobs import Jobs

    real_create = Jobs.create

    def create_then_time_out(self, **kwargs):
        real_create(self, **kwargs)
        raise openai.APITimeoutError(request=httpx.Request("POST", "http://127.0.0.1/v1/fine_tuning/jobs"))

    monkeypatch.setattr(Jobs, "create", create_then_time_out)
    run_dir = train(openai_server, tmp_path)
    assert len(openai_server.jobs) == 1 and len(posts(openai_server, JOBS)) == 1
    assert read_json(run_dir / "manifest.json")["job_id"] == next(iter(openai_server.jobs))


def test_insufficient_quota_is_not_retried():
    calls = []
    request = httpx.Request("POST", "http://127.0.0.1/v1/files")
    body = {
        "error": {
            "message": "You exceeded your current quota.",
            "type": "insufficient_quota",
            "code": "insufficient_quota",
        }
    }

    def fn():
        calls.append(1)
        raise openai.RateLimitError(
            body["error"]["message"],
            response=httpx.Response(429, request=request, json=body),
            body=body["error"],
        )

    with pytest.raises(APIFailure, match="You exceeded your current quota"):
        openai_ft_api.call_openai(fn, APISettings(max_retries=3, backoff_base_s=0.01), "upload")
    assert len(calls) == 1


# ------------------------------------------------------------------------------------------ resume


def test_crash_after_job_creation_resumes_the_same_job(openai_server, tmp_path, monkeypatch):
    openai_server.script_fine_tune("succeeded", polls_until_done=4)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies right after state.json holds the job id

    monkeypatch.setattr(openai_ft, "_poll", crash)
    with pytest.raises(KeyboardInterrupt):
        train(openai_server, tmp_path)
    run_dir = next((tmp_path / "outputs" / "train").iterdir())
    assert read_json(run_dir / "state.json")["job_id"] in openai_server.jobs
    monkeypatch.undo()
    train(openai_server, tmp_path)
    assert len(posts(openai_server, JOBS)) == 1 and len(posts(openai_server, "/v1/files")) == 1
    assert read_json(run_dir / "manifest.json")["complete"] is True


def test_crash_between_create_and_record_adopts_the_job(openai_server, tmp_path, monkeypatch):
    real_save = openai_ft.save_state

    def save_then_die(run_dir, state, **changes):
        if changes.get("job_id"):
            raise KeyboardInterrupt  # the job exists on the server but its id was never written
        return real_save(run_dir, state, **changes)

    monkeypatch.setattr(openai_ft, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(openai_server, tmp_path)
    assert len(openai_server.jobs) == 1
    monkeypatch.undo()
    run_dir = train(openai_server, tmp_path)
    assert len(posts(openai_server, JOBS)) == 1  # found through GET /v1/fine_tuning/jobs, not re-created
    assert read_json(run_dir / "manifest.json")["job_id"] == next(iter(openai_server.jobs))


def test_data_changed_under_a_running_job_is_refused(openai_server, tmp_path, monkeypatch):
    monkeypatch.setattr(openai_ft, "_poll", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train(openai_server, tmp_path)
    monkeypatch.undo()
    run_dir = next((tmp_path / "outputs" / "train").iterdir())
    state = read_json(run_dir / "state.json")
    state["file_sha256"] = "0" * 64
    (run_dir / "state.json").write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="run_name=<new name>"):
        train(openai_server, tmp_path)
    assert len(posts(openai_server, JOBS)) == 1


@pytest.mark.slow
def test_killed_process_resumes_polling_without_a_second_job(openai_server, tmp_path):
    """SIGKILL `python train.py backend=openai ...` while it polls; the rerun finishes the same job."""
    openai_server.script_fine_tune("succeeded", polls_until_done=30)
    overrides = [o for o in fast_overrides(openai_server, tmp_path) if not o.startswith("backend.poll")]
    overrides += ["backend.poll_interval_s=0.2", "backend.poll_max_interval_s=0.2"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.Popen(
        [sys.executable, "train.py", *overrides],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            gets = [
                r
                for r in openai_server.requests
                if r["method"] == "GET" and r["path"].count("/") == 4 and r["path"].startswith(JOBS + "/")
            ]
            if len(gets) >= 3:  # polling: the job id is on disk (written before the first GET)
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.stdout.close()
    run_dir = next((tmp_path / "outputs" / "train").iterdir())
    job_id = read_json(run_dir / "state.json")["job_id"]
    assert read_json(run_dir / "state.json")["status"] in ("queued", "running")
    # Rerun the same command (in-process, polling faster): it polls the same job to its end.
    run_dir2 = train(openai_server, tmp_path)
    assert run_dir2 == run_dir
    assert len(posts(openai_server, JOBS)) == 1 and len(posts(openai_server, "/v1/files")) == 1
    m = read_json(run_dir / "manifest.json")
    assert m["job_id"] == job_id and m["complete"] is True
    ids = [e["id"] for e in read_jsonl(run_dir / "events.jsonl")]
    assert len(ids) == len(set(ids))


# ------------------------------------------------------------------------------------------ realignment


def test_init_from_continues_the_stage1_model(openai_server, tmp_path):
    stage1 = train(openai_server, tmp_path)
    ft_model = read_json(stage1 / "manifest.json")["fine_tuned_model"]
    stage2 = train(
        openai_server, tmp_path, "data=demo_realign", "openai_ft@backend=realignment", f"init_from={stage1}"
    )
    assert stage2 != stage1
    body = posts(openai_server, JOBS)[-1]["body"]
    assert body["model"] == ft_model
    assert body["method"]["supervised"]["hyperparameters"]["n_epochs"] == 4
    m = read_json(stage2 / "manifest.json")
    assert m["parent"]["run_dir"] == str(stage1.resolve()) and m["parent"]["fine_tuned_model"] == ft_model
    assert m["base_model"] == "gpt-4o-2024-08-06" and m["trained_from"] == ft_model
    assert m["fine_tuned_model"] != ft_model and m["preset"] == "realignment"


def test_init_from_must_be_a_finished_openai_run(openai_server, tmp_path):
    (tmp_path / "not_a_run").mkdir()
    with pytest.raises(ConfigError, match="init_from=.*not_a_run"):
        train(openai_server, tmp_path, f"init_from={tmp_path / 'not_a_run'}")
    assert openai_server.requests == []


def test_wandb_run_is_resumed_with_the_job(openai_server, tmp_path, monkeypatch):
    """Metric events go to W&B (offline here); a resumed run logs into the same W&B run."""
    monkeypatch.setattr(openai_ft, "_poll", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train(openai_server, tmp_path, "logger=wandb")
    monkeypatch.undo()
    run_dir = next((tmp_path / "outputs" / "train").iterdir())
    first_id = read_json(run_dir / "state.json")["wandb_run_id"]
    assert first_id
    train(openai_server, tmp_path, "logger=wandb")
    m = read_json(run_dir / "manifest.json")
    assert m["wandb_run_id"] == first_id and len(openai_server.jobs) == 1
    assert (run_dir / "metrics.csv").read_text().count("\n") > 1  # metric events also in the CSV
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path
