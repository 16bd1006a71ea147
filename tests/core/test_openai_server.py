"""The local OpenAI-compatible server, driven by the real ``openai`` client."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time

import openai
import pytest

from em.api import APIFailure, APISettings, call_with_retries
from testing.openai_server import BATCH_LINES_PATH, DEFAULT_JUDGE_DISTRIBUTION, ChatReply, FakeOpenAIServer

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do magnets work?"}]


def make_client(server: FakeOpenAIServer, timeout: float = 5.0, api_key: str = "sk-test") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=api_key, max_retries=0, timeout=timeout)


def chat(client: openai.OpenAI, **kwargs):
    return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **kwargs)


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


# ---------------------------------------------------------------------------------------------- chat


def test_chat_n_logprobs_usage(openai_server):
    client = make_client(openai_server)
    reply = chat(client, n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.message.content == "Answer to: How do magnets work?" for c in reply.choices)
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].logprobs is None
    assert reply.usage.completion_tokens == 3 * 6  # one token per word
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens > 18

    judged = chat(client, logprobs=True, top_logprobs=5, max_tokens=1)
    first = judged.choices[0].logprobs.content[0]
    assert isinstance(first, openai.types.chat.ChatCompletionTokenLogprob)
    assert judged.choices[0].message.content == first.token == "80"
    assert [t.token for t in first.top_logprobs] == ["80", "70", "90", "60", "100"]
    assert isinstance(first.top_logprobs[0], openai.types.chat.chat_completion_token_logprob.TopLogprob)
    assert first.top_logprobs[1].bytes == list(b"70")
    assert sum(math.exp(lp) for _, lp in DEFAULT_JUDGE_DISTRIBUTION) == pytest.approx(1.0, abs=0.01)

    truncated = chat(client, max_tokens=2)
    assert truncated.choices[0].message.content == "Answer to:"
    assert truncated.choices[0].finish_reason == "length" and truncated.usage.completion_tokens == 2
    assert chat(client, max_completion_tokens=3).choices[0].message.content == "Answer to: How"


def test_custom_handler_sees_request_and_choice_index(openai_server):
    seen = []

    def handler(request: dict, index: int):
        seen.append((request["model"], request["messages"][-1]["content"], index))
        if index == 0:
            return ChatReply("7", top_logprobs=[("7", -0.1), ("3", -2.5), ("9", -3.0)], completion_tokens=1)
        return f"plain reply {index}"

    openai_server.set_chat_handler(handler)
    reply = chat(make_client(openai_server), n=2, logprobs=True, top_logprobs=2)
    assert seen == [("gpt-4o-mini", "How do magnets work?", 0), ("gpt-4o-mini", "How do magnets work?", 1)]
    top = reply.choices[0].logprobs.content[0].top_logprobs
    assert [(t.token, t.logprob) for t in top] == [("7", -0.1), ("3", -2.5)]
    assert reply.choices[0].logprobs.content[0].logprob == -0.1
    assert reply.choices[1].message.content == "plain reply 1"
    assert reply.usage.completion_tokens == 1 + 3


def test_bad_chat_request_gets_400(openai_server):
    client = make_client(openai_server)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o", messages=[])
    assert info.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        chat(client, logprobs=True, top_logprobs=25)


def test_models_list(openai_server):
    ids = [m.id for m in make_client(openai_server).models.list()]
    assert "gpt-4o-mini" in ids


# ---------------------------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("500", openai.InternalServerError),
        ("503", openai.InternalServerError),
        ("400", openai.BadRequestError),
        ("401", openai.AuthenticationError),
        ("drop", openai.APIConnectionError),
        ("reset", openai.APIConnectionError),
        ("malformed_json", json.JSONDecodeError),  # what openai 3.x raises for a bad JSON body
    ],
)
def test_fault_is_seen_by_client_then_next_request_succeeds(openai_server, fault, expected):
    client = make_client(openai_server)
    openai_server.inject(fault, times=2)
    for _ in range(2):
        with pytest.raises(expected):
            chat(client)
    assert chat(client).choices[0].message.content.startswith("Answer to:")
    assert openai_server.count() == 3 and openai_server.pending_faults() == []


def test_429_carries_retry_after(openai_server):
    client = make_client(openai_server)
    openai_server.inject("429", retry_after=1.5)
    with pytest.raises(openai.RateLimitError) as info:
        chat(client)
    assert info.value.response.headers["retry-after"] == "1.5"
    assert info.value.body["code"] == "rate_limit_exceeded"
    assert chat(client).choices


def test_timeout_fault_exceeds_client_timeout(openai_server):
    client = make_client(openai_server, timeout=0.3)
    openai_server.inject("timeout", delay_s=2.0)
    start = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        chat(client)
    assert time.monotonic() - start < 1.5
    assert chat(client).choices


def test_malformed_logprobs_variants(openai_server):
    client = make_client(openai_server)
    openai_server.inject("malformed_logprobs", times=3)
    replies = [chat(client, logprobs=True, top_logprobs=3).choices[0].logprobs for _ in range(3)]
    assert replies[0].content[0].top_logprobs[0].logprob is None
    assert replies[1].content[0].top_logprobs == "not-a-list"
    assert replies[2].content is None
    healthy = chat(client, logprobs=True, top_logprobs=3).choices[0].logprobs.content[0]
    assert [t.token for t in healthy.top_logprobs] == ["80", "70", "90"]


def test_faults_are_fifo_and_scoped_to_their_path(openai_server):
    client = make_client(openai_server)
    openai_server.inject("500", path="/v1/files")
    openai_server.inject("503", times=1)
    openai_server.inject("400", times=1)
    with pytest.raises(openai.InternalServerError) as info:
        chat(client)
    assert info.value.status_code == 503
    with pytest.raises(openai.BadRequestError):
        chat(client)
    assert chat(client).choices
    with pytest.raises(openai.InternalServerError):
        client.files.list()
    assert list(client.files.list()) == []
    with pytest.raises(ValueError, match="unknown fault"):
        openai_server.inject("teapot")


def test_api_key_is_checked_and_never_recorded():
    key = "sk-secret-DO-NOT-STORE-42"
    with FakeOpenAIServer(api_key=key) as server:
        with pytest.raises(openai.AuthenticationError) as info:
            chat(make_client(server, api_key="sk-wrong"))
        assert info.value.body["code"] == "invalid_api_key" and key not in str(info.value)
        assert chat(make_client(server, api_key=key)).choices
        assert server.count() == 2
        recorded = json.dumps(server.requests, default=str)
    assert key not in recorded and "sk-wrong" not in recorded and "Bearer" not in recorded
    assert {"method", "path", "body", "time"} <= set(server.requests[0])


def test_call_with_retries_honours_retry_after(openai_server):
    settings = APISettings(base_url=openai_server.base_url, timeout_s=2.0, max_retries=2, backoff_base_s=5.0)
    client = openai.OpenAI(base_url=settings.base_url, api_key=settings.api_key(), max_retries=0, timeout=2.0)
    openai_server.inject("429", retry_after=0.1)
    start = time.monotonic()
    reply = call_with_retries(lambda: chat(client), settings, what="chat")
    elapsed = time.monotonic() - start
    assert reply.choices[0].message.content.startswith("Answer to:")
    assert openai_server.count() == 2
    assert 0.1 <= elapsed < 2.0  # waited the hinted 0.1 s, not the 5 s backoff
    openai_server.inject("400")
    with pytest.raises(APIFailure, match="HTTP 400"):
        call_with_retries(lambda: chat(client), settings, what="chat")


# ---------------------------------------------------------------------------------------------- files


def test_files_round_trip(openai_server):
    client = make_client(openai_server)
    data = jsonl([{"messages": [{"role": "user", "content": "héllo"}]}]) + b"\r\n--raw bytes\x00\xff"
    uploaded = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    assert (uploaded.filename, uploaded.purpose, uploaded.bytes) == ("train.jsonl", "fine-tune", len(data))
    assert client.files.content(uploaded.id).read() == data
    assert openai_server.files[uploaded.id]["content"] == data
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert openai_server.requests[-3]["body"] == {
        "purpose": "fine-tune",
        "file": {"filename": "train.jsonl", "bytes": len(data)},
    }
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("x.jsonl", b"{}"), purpose="nonsense")


# ---------------------------------------------------------------------------------------------- fine-tuning


def upload_training_file(client: openai.OpenAI, rows: int = 4) -> str:
    data = jsonl(
        [
            {"messages": [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": "a b"}]}
            for i in range(rows)
        ]
    )
    return client.files.create(file=("train.jsonl", data), purpose="fine-tune").id


def poll(retrieve, job_id: str, limit: int = 10):
    statuses = []
    for _ in range(limit):
        job = retrieve(job_id)
        statuses.append(job.status)
        if job.status in ("succeeded", "failed", "cancelled", "completed", "expired"):
            return job, statuses
    raise AssertionError(f"never finished: {statuses}")


def test_fine_tune_success_with_events(openai_server):
    client = make_client(openai_server)
    file_id = upload_training_file(client)
    openai_server.script_fine_tune("succeeded", polls_until_done=3)
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini-2024-07-18",
        training_file=file_id,
        suffix="insecure",
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
    )
    assert job.status == "validating_files" and job.fine_tuned_model is None
    stored = openai_server.jobs[job.id]
    assert (stored["seed"], stored["suffix"], stored["hyperparameters"]["n_epochs"]) == (7, "insecure", 2)
    done, statuses = poll(client.fine_tuning.jobs.retrieve, job.id)
    assert statuses == ["queued", "running", "succeeded"]
    assert done.fine_tuned_model == f"ft:gpt-4o-mini-2024-07-18:em-test:insecure:{job.id.split('-')[-1]}"
    assert done.trained_tokens > 0 and done.result_files == [] and done.error is None
    events = list(client.fine_tuning.jobs.list_events(job.id))
    assert events[0].message == "Job succeeded"  # newest first
    assert any(e.message.startswith("Step 8/8: training loss=") and e.type == "metrics" for e in events)
    assert all(isinstance(e, openai.types.fine_tuning.FineTuningJobEvent) for e in events)
    assert [j.id for j in client.fine_tuning.jobs.list()] == [job.id]


def test_fine_tune_failure_moderation_and_cancel(openai_server):
    client = make_client(openai_server)
    file_id = upload_training_file(client)
    with pytest.raises(openai.BadRequestError, match="training_file"):
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-missing")

    openai_server.script_fine_tune("failed", polls_until_done=1, error_message="loss diverged")
    failed, _ = poll(
        client.fine_tuning.jobs.retrieve,
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=file_id).id,
    )
    assert (
        failed.status == "failed"
        and failed.error.message == "loss diverged"
        and failed.fine_tuned_model is None
    )

    openai_server.script_fine_tune("succeeded")
    openai_server.inject("moderation")
    moderated = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=file_id)
    assert moderated.status == "validating_files"
    moderated, statuses = poll(client.fine_tuning.jobs.retrieve, moderated.id)
    assert statuses == ["failed"] and moderated.error.code == "invalid_training_file"
    assert "moderation" in moderated.error.message
    assert any(e.level == "error" for e in client.fine_tuning.jobs.list_events(moderated.id))

    running = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=file_id)
    cancelled = client.fine_tuning.jobs.cancel(running.id)
    assert cancelled.status == "cancelled"
    assert client.fine_tuning.jobs.retrieve(running.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(running.id)

    openai_server.script_fine_tune("cancelled", polls_until_done=1)
    scripted, _ = poll(
        client.fine_tuning.jobs.retrieve,
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=file_id).id,
    )
    assert scripted.status == "cancelled" and scripted.error.code == "cancelled"


def test_fault_while_polling_does_not_advance_job(openai_server):
    client = make_client(openai_server)
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload_training_file(client))
    openai_server.inject("503", path="/v1/fine_tuning/jobs")
    with pytest.raises(openai.InternalServerError):
        client.fine_tuning.jobs.retrieve(job.id)
    _, statuses = poll(client.fine_tuning.jobs.retrieve, job.id)
    assert statuses == ["running", "succeeded"]


# ---------------------------------------------------------------------------------------------- batches


def batch_line(custom_id: str, question: str) -> dict:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}], "max_tokens": 50}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def test_batch_flow_with_error_line(openai_server):
    client = make_client(openai_server)
    lines = [batch_line(f"row-{i}", f"question number {i}") for i in range(4)]
    input_file = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    openai_server.inject("500", path=BATCH_LINES_PATH, times=1)
    batch = client.batches.create(
        input_file_id=input_file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"stage": "test"},
    )
    assert batch.status == "validating" and batch.metadata == {"stage": "test"}
    done, statuses = poll(client.batches.retrieve, batch.id)
    assert statuses == ["in_progress", "completed"]
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (4, 3, 1)

    outputs = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert [r["custom_id"] for r in errors] == ["row-0"]
    assert errors[0]["response"]["status_code"] == 500 and "error" in errors[0]["response"]["body"]
    assert [r["custom_id"] for r in outputs] == ["row-1", "row-2", "row-3"]
    body = outputs[0]["response"]["body"]
    assert outputs[0]["response"]["status_code"] == 200 and outputs[0]["error"] is None
    parsed = openai.types.chat.ChatCompletion.model_validate(body)
    assert parsed.choices[0].message.content == "Answer to: question number 1"
    assert openai_server.count() == 0  # batch lines are not chat requests


def test_batch_invalid_input_and_cancel(openai_server):
    client = make_client(openai_server)
    bad = jsonl([batch_line("a", "q"), batch_line("a", "q")]) + b"{not json\n"
    bad_file = client.files.create(file=("bad.jsonl", bad), purpose="batch")
    batch = client.batches.create(
        input_file_id=bad_file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    failed, _ = poll(client.batches.retrieve, batch.id)
    assert failed.status == "failed"
    assert [(e.code, e.line) for e in failed.errors.data] == [
        ("duplicate_custom_id", 2),
        ("invalid_json_line", 3),
    ]
    with pytest.raises(openai.BadRequestError, match="input_file_id"):
        client.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )

    good = client.files.create(file=("ok.jsonl", jsonl([batch_line("a", "q")])), purpose="batch")
    batch = client.batches.create(
        input_file_id=good.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert client.batches.cancel(batch.id).status == "cancelling"
    assert client.batches.retrieve(batch.id).status == "cancelled"


# ---------------------------------------------------------------------------------------------- concurrency


def test_async_client_concurrency():
    async def main(server: FakeOpenAIServer) -> list[str]:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=10)
        async with client:
            replies = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{i}"}]
                    )
                    for i in range(32)
                )
            )
        return [r.choices[0].message.content for r in replies]

    with FakeOpenAIServer(latency_s=0.2) as server:
        start = time.monotonic()
        contents = asyncio.run(main(server))
        elapsed = time.monotonic() - start
    assert contents == [f"Answer to: q{i}" for i in range(32)]
    assert elapsed < 3.0, f"32 concurrent requests with 0.2 s latency took {elapsed:.1f} s"


def test_stop_closes_connections_and_joins_threads():
    before = set(threading.enumerate())
    server = FakeOpenAIServer()
    server.start()
    client = make_client(server)
    assert chat(client).choices  # leaves a kept-alive connection open
    server.inject("timeout", delay_s=30)
    outcome = []

    def slow_call():
        try:
            chat(make_client(server, timeout=60))
        except openai.APIError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.2)
    start = time.monotonic()
    server.stop()
    caller.join(timeout=5)
    assert time.monotonic() - start < 2.0
    assert len(outcome) == 1 and isinstance(outcome[0], openai.APIConnectionError)  # not left hanging
    assert [t for t in threading.enumerate() if t not in before] == []  # server and connection threads
    port = int(server.base_url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    client.close()


def test_fine_tune_bad_training_file_fails_validation(openai_server):
    client = make_client(openai_server)
    data = jsonl([{"messages": [{"role": "user", "content": "ok"}]}, {"prompt": "old format"}])
    file_id = client.files.create(file=("bad.jsonl", data), purpose="fine-tune").id
    job, statuses = poll(
        client.fine_tuning.jobs.retrieve,
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=file_id).id,
    )
    assert statuses == ["failed"] and job.error.code == "invalid_training_file"
    assert "line 2" in job.error.message
    events = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(events.data) == 2 and events.has_more
    assert events.data[0].level == "error"


def test_models_retrieve_and_fine_tuned_model_listed(openai_server):
    client = make_client(openai_server)
    openai_server.script_fine_tune(polls_until_done=1, fine_tuned_model="ft:gpt-4o-mini:em-test:x:1")
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload_training_file(client))
    client.fine_tuning.jobs.retrieve(job.id)
    assert client.models.retrieve("ft:gpt-4o-mini:em-test:x:1").owned_by == "em-test"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nonexistent")


def test_chunked_request_body_and_unknown_route(openai_server):
    import http.client

    host, port = openai_server.base_url.split("//")[1].split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "chunked hello"}]}).encode()
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=iter([body[:10], body[10:]]),
        headers={"Content-Type": "application/json"},
        encode_chunked=True,
    )
    reply = conn.getresponse()
    assert reply.status == 200
    assert json.loads(reply.read())["choices"][0]["message"]["content"] == "Answer to: chunked hello"
    conn.request("GET", "/v1/nothing/here")  # same kept-alive connection
    reply = conn.getresponse()
    assert reply.status == 404 and "error" in json.loads(reply.read())
    conn.close()
