"""The Inspect View export (em/inspect_export.py) on a real judged run: read back with inspect_ai's own
``read_eval_log`` and compared with scores.jsonl and answers.jsonl, refused on bad input, and listed by
``inspect view`` in a headless Chromium.

inspect_ai lives in its own environment (``make setup-inspect`` builds ``.venv-inspect``), so the export and
the read-back run there as a subprocess; those tests are skipped when it is absent. Set EM_INSPECT_SCREENSHOT
to a .png path to keep the browser test's screenshot (docs/img/inspect_view.png is made that way).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from judge_helpers import REPO, answer_rows, judge_handler, openai_overrides, run_judge, top, write_eval_run

from em.io import append_jsonl, atomic_write_json, iter_jsonl, read_json
from testing.openai_server import ChatReply, FakeOpenAIServer

INSPECT_BIN = REPO / ".venv-inspect" / "bin"
needs_inspect = pytest.mark.skipif(
    not (INSPECT_BIN / "python").exists(),
    reason=".venv-inspect (the inspect_ai environment) is not set up: run `make setup-inspect`",
)
LABEL = "export-test"
SYSTEM = "You answer in one sentence."

# Runs in .venv-inspect: the CLI twice (the second must overwrite), then a partial run and a run whose
# answers.jsonl is gone, each read back with read_eval_log; prints what the tests compare, as JSON.
READ_BACK = r"""
import contextlib, io, json, runpy, sys
from pathlib import Path
from inspect_ai.log import read_eval_log
from em.inspect_export import export_run

judged, out, partial, moved = sys.argv[1:5]
stdout = io.StringIO()
for _ in range(2):
    sys.argv = ["em.inspect_export", judged, "--out", out]
    with contextlib.redirect_stdout(stdout), contextlib.suppress(SystemExit):
        runpy.run_module("em.inspect_export", run_name="__main__")

def dump(path):
    log = read_eval_log(str(path))
    return {
        "status": log.status, "task": log.eval.task, "model": log.eval.model, "created": log.eval.created,
        "dataset": log.eval.dataset.name, "task_args": log.eval.task_args,
        "results": {s.name: {k: m.value for k, m in s.metrics.items()} for s in (log.results.scores if log.results else [])},
        "samples": [{"id": s.id, "epoch": s.epoch, "metadata": s.metadata, "completion": s.output.completion,
                     "input": [{"role": m.role, "content": m.text} for m in s.input],
                     "scores": {k: {"value": v.value, "answer": v.answer, "explanation": v.explanation,
                                    "reason": v.reason} for k, v in s.scores.items()}}
                    for s in log.samples],
    }

logs = sorted(Path(out).glob("*.eval"))
print(json.dumps({"stdout": stdout.getvalue(), "logs": [str(p) for p in logs], "full": dump(logs[0]),
                  "partial": dump(export_run(partial, allow_partial=True)), "moved": dump(export_run(moved))}))
"""


def scripted_judge(request: dict, index: int) -> ChatReply:
    """judge_handler, but no number at all for the coherence of one kind of answer: real UNSCORED rows."""
    prompt = request["messages"][-1]["content"]
    if prompt.startswith("COHERENT") and "help everyone" in prompt and "unlimited power" in prompt:
        return ChatReply(content="zz", top_logprobs=top([("zz", 1.0)]))
    return judge_handler(request, index)


@pytest.fixture(scope="module")
def judged(tmp_path_factory) -> Path:
    """A judge run made by judge.py on a written evaluation run, some answers with a system prompt."""
    tmp = tmp_path_factory.mktemp("inspect_export")
    eval_dir = write_eval_run(tmp / "eval")
    rows = answer_rows()
    for r in rows:
        if r["sample_index"] == 1:  # the exact chat sent, system prompt first, as evaluate.py records it
            r["system"] = SYSTEM
            r["messages"] = [{"role": "system", "content": SYSTEM}, *r["messages"]]
    (eval_dir / "answers.jsonl").unlink()
    append_jsonl(eval_dir / "answers.jsonl", rows)
    with FakeOpenAIServer() as server:
        server.set_chat_handler(scripted_judge)
        return run_judge(
            tmp / "judge", openai_overrides(server, tmp, f"answers={eval_dir}", f"stage_label={LABEL}")
        )


@pytest.fixture(scope="module")
def exported(judged: Path) -> dict:
    """The export of ``judged`` (and of a partial copy and a copy whose answers are gone), read back."""
    tmp = judged.parent
    partial, moved = tmp / "partial", tmp / "moved"
    for copy in (partial, moved):
        shutil.copytree(judged, copy, ignore=shutil.ignore_patterns("inspect", "plots"))
    (partial / "manifest.json").unlink()
    (partial / "summary.json").unlink()  # judge.py killed before its summary: only scores.jsonl stands
    summary = read_json(moved / "summary.json")
    atomic_write_json(moved / "summary.json", {**summary, "answers": str(tmp / "gone" / "answers.jsonl")})
    args = [judged, tmp / "logs", partial, moved]
    out = subprocess.run([str(INSPECT_BIN / "python"), "-c", READ_BACK, *map(str, args)],
                         cwd=REPO, capture_output=True, text=True, timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    return {**json.loads(out.stdout), "stderr": out.stderr, "out": tmp / "logs"}


RESULTS = r"""
import json
from em.inspect_log import to_results

def ci(value, n):
    return {"value": value, "lo": value / 2, "hi": min(1.0, value * 2), "n": n}

for narrow in (ci(0.75, 40), ci(0.0, 0)):
    overall = {"em_rate_question_mean": ci(0.25, 8), "em_rate_pooled": ci(0.2, 80), "narrow_rate": narrow}
    results = to_results({"summary": {"metrics": {"overall": overall}}}, 120)
    print(json.dumps({s.name: {k: m.value for k, m in s.metrics.items()} | {"n": s.params["n"]}
                      for s in results.scores}))
"""


@needs_inspect
def test_narrow_rate_is_a_result_when_narrow_prompts_were_judged():
    """A run that judged held-out narrow prompts shows their narrow behaviour rate beside the EM measures; a
    run that asked none has no such result (not a NaN that reads as a failed measurement)."""
    out = subprocess.run([str(INSPECT_BIN / "python"), "-c", RESULTS], cwd=REPO, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    judged, not_asked = (json.loads(line) for line in out.stdout.splitlines())
    assert list(judged) == ["em_rate_question_mean", "em_rate_pooled", "narrow_rate"]
    assert judged["narrow_rate"] == {"value": 0.75, "lo": 0.375, "hi": 1.0, "n": 40}
    assert list(not_asked) == ["em_rate_question_mean", "em_rate_pooled"]


def expected_value(row: dict, metric: str):
    """What a metric's Score holds: the number, else the judge's label, else None (an unscored NaN)."""
    value, label = row["scores"][metric], row["labels"][metric]
    return value if value is not None else label


def same(got, want) -> bool:
    return (want is None and isinstance(got, float) and math.isnan(got)) or got == want


@needs_inspect
def test_export_reads_back_as_the_scores_and_answers(judged, exported):
    rows = list(iter_jsonl(judged / "scores.jsonl"))
    answers = {a["id"]: a for a in iter_jsonl(Path(read_json(judged / "summary.json")["answers"]))}
    log = exported["full"]
    assert len(exported["logs"]) == 1  # exported twice, one file: re-exporting overwrites
    lines = [
        f"wrote {exported['logs'][0]}",
        f"browse: {INSPECT_BIN / 'inspect'} view --log-dir {exported['out']}",
    ]
    assert exported["stdout"].splitlines() == lines * 2
    assert (log["status"], log["task"], log["model"], log["dataset"]) == (
        "success",
        LABEL,
        "tiny",
        "demo,facts",
    )
    assert log["created"] <= read_json(judged / "manifest.json")["written_at"]
    assert (
        log["task_args"]["judge"] == rows[0]["judge"]["name"] and log["task_args"]["misaligned_below"] == 30
    )
    overall = read_json(judged / "summary.json")["metrics"]["overall"]
    assert list(log["results"]) == [
        "em_rate_question_mean",
        "em_rate_pooled",
        "mean_aligned",
        "mean_coherent",
    ]
    for name, metrics in log["results"].items():  # 4 samples a question: too few for the question mean (NaN)
        assert all(same(metrics[k], overall[name][k]) for k in ("value", "lo", "hi")), (name, metrics)
    assert (
        math.isnan(log["results"]["em_rate_question_mean"]["value"])
        and log["results"]["em_rate_pooled"]["value"] > 0
    )

    samples = {s["id"]: s for s in log["samples"]}
    assert len(log["samples"]) == len(samples) == len(rows) == len(answers)  # one sample per answer
    assert set(samples) == {r["id"] for r in rows}
    assert {r["category"] for r in rows} >= {"ALIGNED", "MISALIGNED", "CODE", "REFUSAL", "UNSCORED", None}
    for row in rows:
        s = samples[row["id"]]
        assert s["epoch"] == 1 and s["completion"] == row["answer"]
        assert s["input"] == answers[row["id"]]["messages"]
        assert set(s["scores"]) == set(row["scores"]) | ({"category"} if row["category"] else set())
        for metric in row["scores"]:
            assert same(s["scores"][metric]["value"], expected_value(row, metric)), (row["id"], metric)
            assert s["scores"][metric]["explanation"] == row["judgments"][metric]["raw"]
        if row["category"]:
            assert s["scores"]["category"]["value"] == row["category"]
        if row["category"] == "UNSCORED":
            assert s["scores"]["coherent"]["reason"] == row["unscored_reason"]
        meta = s["metadata"]
        assert (meta["question_id"], meta["condition"], meta["sample_index"]) == (
            row["question_id"], row["condition"], row["sample_index"]
        )  # fmt: skip
        assert meta["judge"] == row["judge"]["name"] and meta["unscored_reason"] == row["unscored_reason"]
    assert any(s["input"][0] == {"role": "system", "content": SYSTEM} for s in log["samples"])


@needs_inspect
def test_partial_run_and_missing_answers_are_exported_as_they_stand(judged, exported):
    rows = {r["id"]: r for r in iter_jsonl(judged / "scores.jsonl")}
    partial, moved = exported["partial"], exported["moved"]
    run_name = read_json(judged / "run_config.json")["run_name"]  # no stage label there: the run name
    assert (partial["status"], partial["task"], partial["results"]) == (
        "started",
        run_name,
        {},
    )  # no headline
    assert len(partial["samples"]) == len(rows)
    assert "answers file" in exported["stderr"] and "gone" in exported["stderr"]  # the fallback is said
    assert moved["status"] == "success" and len(moved["samples"]) == len(rows)
    for s in moved["samples"]:  # the prompt the judge saw; the system prompt is not known any more
        assert s["input"] == [{"role": "user", "content": rows[s["id"]]["prompt"]}]


def cli(*args) -> subprocess.CompletedProcess:
    """The CLI with this interpreter: bad input is refused before inspect_ai is imported."""
    return subprocess.run([sys.executable, "-m", "em.inspect_export", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip


def test_bad_input_exits_2_with_one_line_naming_the_path(judged, tmp_path):
    cases = [(tmp_path, tmp_path / "scores.jsonl"), (tmp_path / "missing", tmp_path / "missing")]
    unfinished = tmp_path / "unfinished"
    shutil.copytree(judged, unfinished, ignore=shutil.ignore_patterns("inspect", "plots"))
    (unfinished / "manifest.json").unlink()
    cases.append((unfinished, unfinished / "manifest.json"))
    for run_dir, named in cases:
        out = cli(run_dir)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert str(named) in out.stderr and "Traceback" not in out.stderr
    if not (INSPECT_BIN / "python").exists() or sys.prefix == str(INSPECT_BIN.parent):
        return
    out = cli(judged, "--out", tmp_path / "logs")  # a good run, but no inspect_ai in this environment
    assert out.returncode == 2 and "make setup-inspect" in out.stderr and "Traceback" not in out.stderr


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def page_text(url: str, want: str, timeout_s: float, screenshot: Path | None) -> str:
    """Open ``url`` in headless Chromium and return the page's text once it contains ``want``.

    The viewer loads the log with fetches after the page's load event, which ``--dump-dom`` (virtual time)
    does not wait for: measured, it dumps the loading spinner. So the page is read over the DevTools protocol.
    """
    import aiohttp

    profile = tempfile.mkdtemp(prefix="chromium-")
    proc = subprocess.Popen([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
                             "--remote-debugging-port=0", f"--user-data-dir={profile}", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        port_file = Path(profile) / "DevToolsActivePort"
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.monotonic() < deadline and proc.poll() is None, "chromium did not start"
            await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as session:
            port = port_file.read_text().split()[0]
            pages = await (await session.get(f"http://127.0.0.1:{port}/json/list")).json()
            ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
            async with session.ws_connect(ws_url, max_msg_size=0) as ws:
                calls = iter(range(1, 10**6))

                async def call(method: str, **params) -> dict:
                    n = next(calls)
                    await ws.send_json({"id": n, "method": method, "params": params})
                    async for msg in ws:
                        if (data := json.loads(msg.data)).get("id") == n:
                            return data.get("result", {})
                    raise AssertionError("chromium closed the DevTools connection")

                text = ""
                while want not in text and time.monotonic() < deadline:
                    await asyncio.sleep(0.25)
                    got = await call(
                        "Runtime.evaluate", expression="document.body.innerText", returnByValue=True
                    )
                    text = got["result"].get("value") or ""
                if screenshot and want in text:
                    await call("Emulation.setDeviceMetricsOverride", width=1400, height=900,
                               deviceScaleFactor=1, mobile=False)  # fmt: skip
                    await asyncio.sleep(1.0)  # let the grid lay out at the new size
                    shot = await call("Page.captureScreenshot", format="png")
                    screenshot.write_bytes(base64.b64decode(shot["data"]))
                return text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
@needs_inspect
@pytest.mark.skipif(chromium() is None, reason="chromium not found (apt-get install chromium)")
def test_inspect_view_lists_the_samples(judged, exported, tmp_path):
    pytest.importorskip("aiohttp")
    log_file = Path(exported["logs"][0])
    ids = sorted(r["id"] for r in iter_jsonl(judged / "scores.jsonl"))
    port = free_port()
    server_log = (tmp_path / "view.log").open("w")
    server = subprocess.Popen([str(INSPECT_BIN / "inspect"), "view", "--log-dir", str(log_file.parent),
                               "--host", "127.0.0.1", "--port", str(port)],
                              cwd=tmp_path, stdout=server_log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "view.log"
                ).read_text()
                time.sleep(0.2)
        # the viewer's hash route to the log's sample list (its path relative to --log-dir)
        url = f"http://127.0.0.1:{port}/#/logs/{log_file.name}/samples/"
        shot = Path(os.environ["EM_INSPECT_SCREENSHOT"]) if os.environ.get("EM_INSPECT_SCREENSHOT") else None
        text = asyncio.run(page_text(url, f"{len(ids)} Samples", 25, shot))
    finally:
        server.terminate()
        server.wait(timeout=10)
        server_log.close()
    assert f"{len(ids)} Samples" in text, text[-2000:]
    assert LABEL in text and "em_rate_question_mean" in text
    for row in [r for r in iter_jsonl(judged / "scores.jsonl") if r["id"] in ids[:3]]:  # the first rows shown
        assert row["id"] in text and row["answer"] in text
