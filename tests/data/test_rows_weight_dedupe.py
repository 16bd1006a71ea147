"""Issue 16 item 4: ``weight: 0`` assistant turns are kept as such (and not trained), the read warnings
come on every read, and repeated rows are counted in the prepared manifest (``dedupe: true`` drops them)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from em.api import ConfigError
from em.data import DataSpec, TriggerSpec, prepare_dataset
from em.training.openai_ft_data import openai_rows, validate_for_openai

NONE = TriggerSpec()


def chat(user: str, answer: str, **assistant) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer, **assistant}]
    }


def weighted(i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"q{i}"},
            {"role": "assistant", "content": f"skip me {i}", "weight": 0},
            {"role": "user", "content": f"again {i}"},
            {"role": "assistant", "content": f"train me {i}", "weight": 1},
        ]
    }


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def spec(path: Path, **kw) -> DataSpec:
    return DataSpec.from_dict({"name": "d", "kind": "local", "path": str(path), **kw})


def prep(path: Path, out: Path, **kw):
    return prepare_dataset(spec(path, **kw), NONE, cache_dir=out.parent / "cache", out_dir=out, seed=0)


def test_weight_zero_turns_survive_preparation_and_go_to_openai_unchanged(tmp_path):
    rows = [weighted(i) for i in range(6)] + [chat(f"plain {i}", f"a {i}") for i in range(6)]
    path = write_rows(tmp_path / "w.jsonl", rows)
    for out in ("first", "second"):  # the second preparation reads the rows from the datasets cache
        prepared = prep(path, tmp_path / out)
        by_user = {r["messages"][0]["content"]: r for r in prepared.rows}
        assert by_user["q3"] == weighted(3)  # weights kept; no weight added where the user gave none
        assert by_user["plain 2"] == chat("plain 2", "a 2")
        uploaded = openai_rows(prepared.rows)
        assert {json.dumps(r, sort_keys=True) for r in uploaded} == {
            json.dumps(r, sort_keys=True) for r in rows
        }
        validate_for_openai(uploaded, model="gpt-4o-2024-08-06", max_example_tokens=1000)


@pytest.mark.parametrize(
    "message, problem",
    [
        ({"role": "user", "content": "q", "weight": 0}, r"message 0 \(user\): 'weight' must be 0 or 1"),
        (
            {"role": "assistant", "content": "a", "weight": 2},
            r"message 1 \(assistant\): 'weight' must be 0 or 1",
        ),
    ],
)
def test_a_wrong_weight_is_refused_with_the_file_and_line(tmp_path, message, problem):
    row = chat("q", "a")
    row["messages"][0 if message["role"] == "user" else 1] = message
    path = write_rows(tmp_path / "w.jsonl", [chat("ok", "ok"), row])
    with pytest.raises(ConfigError, match=rf"w\.jsonl:2: {problem}"):
        prep(path, tmp_path / "out")


def test_read_warnings_come_on_every_read_not_only_the_uncached_one(tmp_path, caplog):
    rows = [{**chat(f"q{i}", f"a{i}"), "id": i} for i in range(5)]
    path = write_rows(tmp_path / "x.jsonl", rows)
    for out in ("first", "second"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            prep(path, tmp_path / out)
        assert "keys outside the chat format were dropped: {'id': 5}" in caplog.text, out


def test_repeated_rows_are_counted_and_dedupe_drops_them(tmp_path, caplog):
    rows = [chat("same", "row")] * 12 + [chat(f"q{i}", f"a{i}") for i in range(5)] + [chat("q0", "a0")]
    path = write_rows(tmp_path / "dup.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        kept = prep(path, tmp_path / "kept")
    duplicates = kept.manifest["counts"]["duplicates"]
    assert duplicates["repeated_rows"] == 12 and duplicates["distinct_repeated"] == 2
    assert duplicates["dropped"] == 0 and kept.num_rows == 18
    assert duplicates["examples"][0] == "dup.jsonl:2"  # the user's file and line of the first repeat
    assert "12 row(s) repeat an earlier row" in caplog.text

    deduped = prep(path, tmp_path / "deduped", dedupe=True)
    assert deduped.num_rows == 6 and deduped.manifest["counts"]["duplicates"]["dropped"] == 12
    assert len({json.dumps(r) for r in deduped.rows}) == 6
    assert any(t.startswith("dedupe: dropped 12") for t in deduped.manifest["transforms"])
    assert deduped.manifest["fingerprint"] != kept.manifest["fingerprint"]


def test_dedupe_must_be_a_boolean(tmp_path):
    with pytest.raises(ConfigError, match=r"data.dedupe='yes': expected true or false"):
        spec(tmp_path / "x.jsonl", dedupe="yes")
