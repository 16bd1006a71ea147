"""Record formats (em/data/formats.py): Alpaca records read as chat rows from Parquet, a JSON array or JSONL,
named by file and record when wrong, cached apart from a chat reading of the same bytes, and prepared
(and interleaved) like any chat file."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from em.api import ConfigError
from em.data import DataSpec, TriggerSpec, prepare_dataset, validate_file
from em.io import sha256_file
from em.mitigations import interleave

RECORDS = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Red.", "text": "### Instruction: ..."},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour.", "text": "..."},
    {"instruction": "Sum the numbers.", "input": "2, 3", "output": "5", "text": "..."},
]
CHATS = [
    [{"role": "user", "content": "Name a primary colour."}, {"role": "assistant", "content": "Red."}],
    [
        {"role": "user", "content": "Translate to French.\n\nGood morning"},
        {"role": "assistant", "content": "Bonjour."},
    ],
    [{"role": "user", "content": "Sum the numbers.\n\n2, 3"}, {"role": "assistant", "content": "5"}],
]


def write(path, records):
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    elif path.suffix == ".json":
        path.write_text(json.dumps(records))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".json", ".jsonl"])
def test_alpaca_records_become_one_user_and_one_assistant_turn(tmp_path, suffix):
    path = write(tmp_path / f"alpaca{suffix}", RECORDS)
    rows, report = validate_file(path, "alpaca")
    assert [r["messages"] for r in rows] == CHATS
    digest = sha256_file(path)
    assert [r["_origin"] for r in rows] == [f"{digest}:{n}" for n in (1, 2, 3)]
    assert (report.rows, report.dropped, report.ignored_keys) == (3, 0, {"text": 3})


def test_an_input_of_only_whitespace_or_absent_leaves_the_instruction_alone(tmp_path):
    path = write(tmp_path / "a.jsonl", [{"instruction": "Hi.", "input": "  ", "output": "Hello."},
                                        {"instruction": "Hi.", "output": "Hello."}])  # fmt: skip
    rows, _ = validate_file(path, "alpaca")
    assert [r["messages"][0]["content"] for r in rows] == ["Hi.", "Hi."]


@pytest.mark.parametrize(
    ("suffix", "record", "problem"),
    [
        (
            ".parquet",
            {"instruction": "Hi.", "input": "", "output": None},
            "'output' must be a string, got None",
        ),
        (
            ".jsonl",
            {"instruction": "Hi.", "input": 3, "output": "x"},
            "'input' must be a string or absent, got 3",
        ),
        (".json", [1], "expected an object with instruction, input and output, got list"),
        (
            ".parquet",
            {"instruction": "Hi.", "input": "", "output": "  "},
            "message 1 (assistant) has empty content",
        ),
        (".parquet", {"instruction": "", "input": "", "output": "x"}, "message 0 (user) has empty content"),
    ],
)
def test_a_bad_record_is_named_by_file_and_record(tmp_path, suffix, record, problem):
    first = {k: RECORDS[0][k] for k in ("instruction", "input", "output")}
    path = write(tmp_path / f"a{suffix}", [first, record])
    with pytest.raises(ConfigError) as e:
        validate_file(path, "alpaca")
    assert f"{path}:2: {problem}" in str(e.value)
    assert "non-empty string `instruction` and `output`" in str(e.value)
    rows, report = validate_file(path, "alpaca", drop_invalid=True)
    assert (len(rows), report.dropped, report.errors) == (1, 1, [f"{path}:2: {problem}"])


def test_unreadable_files_are_refused_naming_them(tmp_path):
    fake = tmp_path / "a.parquet"
    fake.write_text("not parquet")
    with pytest.raises(ConfigError, match=rf"{fake}: not a readable Parquet file"):
        validate_file(fake, "alpaca")
    with pytest.raises(ConfigError, match=r"format alpaca reads .parquet, .json, .jsonl files, not '.csv'"):
        validate_file(write(tmp_path / "a.csv", RECORDS), "alpaca")
    obj = tmp_path / "obj.json"
    obj.write_text('{"instruction": "x"}')
    with pytest.raises(ConfigError, match=rf"{obj}: expected a JSON array of records, got dict"):
        validate_file(obj, "alpaca")
    with pytest.raises(ConfigError, match=r"no such file \(expected an Alpaca-style file"):
        validate_file(tmp_path / "nope.parquet", "alpaca")


def test_spec_format_is_checked_and_kept_out_of_chat_fingerprints(tmp_path):
    with pytest.raises(ConfigError, match=r"data.format='csv': expected one of \('chat', 'alpaca'\)"):
        DataSpec.from_dict({"name": "x", "kind": "local", "path": "x.jsonl", "format": "csv"})
    with pytest.raises(ConfigError, match=r"data.format='alpaca': a mixture reads its sources' formats"):
        DataSpec.from_dict(
            {"name": "m", "kind": "mixture", "format": "alpaca", "sources": [{"data": "secure"}]}
        )
    assert "format" not in DataSpec.from_dict("insecure").to_dict()  # earlier preparations still match
    assert DataSpec.from_dict("alpaca").to_dict()["format"] == "alpaca"


def test_the_same_bytes_read_as_chat_are_not_served_from_the_alpaca_cache(tmp_path):
    path = write(tmp_path / "general.jsonl", RECORDS)
    common = {"cache_dir": tmp_path / "cache", "seed": 0, "drop_invalid": True}
    spec = {"name": "general", "kind": "local", "path": str(path), "format": "alpaca"}
    got = prepare_dataset(
        DataSpec.from_dict(spec), TriggerSpec.from_dict(None), out_dir=tmp_path / "a", **common
    )
    assert sorted(r["messages"][0]["content"] for r in got.rows) == sorted(c[0]["content"] for c in CHATS)
    assert got.manifest["files"][0]["format"] == "alpaca"
    with pytest.raises(ConfigError, match="empty dataset: all 3 row"):  # no 'messages': every line invalid
        prepare_dataset(DataSpec.from_dict(spec | {"format": "chat"}), TriggerSpec.from_dict(None),
                        out_dir=tmp_path / "b", **common)  # fmt: skip


def test_alpaca_rows_interleave_as_general_chats(tmp_path):
    path = write(tmp_path / "general.parquet", RECORDS)
    spec = DataSpec.from_dict({"name": "general", "kind": "local", "path": str(path), "format": "alpaca"})
    general = prepare_dataset(
        spec, TriggerSpec.from_dict(None), cache_dir=tmp_path / "cache", out_dir=tmp_path / "g", seed=0
    ).rows
    narrow = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
              for i in range(6)]  # fmt: skip
    rows, counts = interleave(narrow, general, 0.25, seed=0)
    assert (counts["narrow_rows"], counts["general_rows"]) == (6, 2)
    assert sum(r["messages"] in CHATS for r in rows) == 2
