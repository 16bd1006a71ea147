"""The chat-JSONL validator: every problem kind with its line number, drop mode, canonical rows."""

from __future__ import annotations

import json

import pytest

from em.api import ConfigError
from em.data import validate_file
from em.io import sha256_file

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}

# (line text, expected problem fragment)
BAD_LINES = [
    ('{"messages": [', "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"prompt": "x"}', "missing 'messages' list"),
    ('{"messages": []}', "'messages' is empty"),
    ('{"messages": ["hi"]}', "message 0 is not an object"),
    (
        json.dumps({"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        "message 0 has role 'tool'",
    ),
    (
        json.dumps({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}]}),
        "message 0 (user) content must be a string",
    ),
    (
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}),
        "message 1 (assistant) has empty content",
    ),
    (
        json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "y"}]}),
        "no user message",
    ),
    (
        json.dumps({"messages": [{"role": "assistant", "content": "y"}, {"role": "user", "content": "hi"}]}),
        "last message must be from the assistant",
    ),
]


def write(path, lines: list[str]):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(("line", "problem"), BAD_LINES)
def test_each_problem_is_reported_with_its_line(tmp_path, line, problem):
    path = write(tmp_path / "data.jsonl", [json.dumps(GOOD), json.dumps(GOOD), line, json.dumps(GOOD)])
    with pytest.raises(ConfigError) as e:
        validate_file(path)
    assert f"{path}:3: {problem}" in str(e.value)
    assert "1 invalid row(s) (of 4)" in str(e.value)
    assert "drop_invalid" in str(e.value)


def test_drop_mode_counts_and_keeps_good_rows(tmp_path):
    lines = [json.dumps(GOOD)] + [line for line, _ in BAD_LINES] + [json.dumps(GOOD)]
    rows, report = validate_file(write(tmp_path / "d.jsonl", lines), drop_invalid=True)
    assert [{"messages": r["messages"]} for r in rows] == [GOOD, GOOD]
    assert [r["_origin"].split(":")[1] for r in rows] == ["1", str(len(lines))]
    assert (report.rows, report.dropped, len(report.errors)) == (2, len(BAD_LINES), len(BAD_LINES))
    assert [e.split(":")[-2] for e in report.errors] == [str(i) for i in range(2, 2 + len(BAD_LINES))]


def test_error_list_is_capped(tmp_path):
    path = write(tmp_path / "d.jsonl", ["{"] * 30)
    with pytest.raises(ConfigError) as e:
        validate_file(path, max_errors_shown=5)
    msg = str(e.value)
    assert f"{path}:5:" in msg and f"{path}:6:" not in msg and "... and 25 more" in msg


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_an_error_even_when_dropping(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    for drop in (False, True):
        with pytest.raises(ConfigError, match="empty dataset: the file has no rows"):
            validate_file(path, drop_invalid=drop)


def test_all_rows_invalid_with_drop_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="all 2 row"):
        validate_file(write(tmp_path / "d.jsonl", ["{", "[]"]), drop_invalid=True)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        validate_file(tmp_path / "nope.jsonl")


def test_non_utf8_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"d.jsonl:2: not UTF-8"):
        validate_file(path)


def test_blank_lines_skipped_and_rows_canonical(tmp_path):
    extra = {
        "messages": [
            {"role": "system", "content": "be kind"},
            {"content": "hi", "role": "user", "name": "a"},
            {"role": "assistant", "content": "hey", "weight": 1},
        ],
        "id": 7,
    }
    rows, report = validate_file(
        write(tmp_path / "d.jsonl", ["", json.dumps(extra), "   ", json.dumps(GOOD)])
    )
    assert rows[0] == {
        "messages": [
            {"role": "system", "content": "be kind"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hey", "weight": 1},  # the fine-tuning format's weight is kept
        ],
        "_origin": f"{sha256_file(tmp_path / 'd.jsonl')}:2",  # the user's file and line, for later errors
    }
    assert list(rows[0]["messages"][1]) == ["role", "content"]
    assert report.rows == 2 and report.dropped == 0
    assert report.ignored_keys == {"id": 1, "messages[].name": 1}
