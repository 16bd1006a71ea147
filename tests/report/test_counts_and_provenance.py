"""Issue 16 items 5 (training side) and 7: counts that mean what they say, and provenance.

``max_steps`` 0 or negative refused with the key before any work; a question's ``{{tag}}`` kept as the
text ``{tag}``; a mistyped question ``type`` refused with the file and line; ``adapter_sha256`` equal for
equal adapters; a full disk named with the file and what was kept; a fine-tuning row over the token limit
named by the user's file and line, not the shuffled copy's."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from reliability_helpers import compose

from em.api import ConfigError
from em.data import DataSpec, TriggerSpec, prepare_dataset
from em.evaluation.conditions import Condition, apply_condition, check_conditions, remove_slot
from em.evaluation.questions import load_questions
from em.io import DiskFull, append_jsonl, atomic_write_json, read_json, read_jsonl
from em.modeling import adapter_sha256
from em.training.openai_ft_data import validate_for_openai


@pytest.mark.parametrize("value", [0, -3])
def test_max_steps_zero_or_negative_is_refused_before_any_work(tmp_path, value):
    from em.tasks.train import run

    run_dir = tmp_path / "run"
    cfg = compose("train", ["model=tiny", f"max_steps={value}", f"paths.output_dir={tmp_path}"], run_dir)
    with pytest.raises(ConfigError, match=rf"max_steps={value}: expected null or a positive integer"):
        run(cfg)
    assert not run_dir.exists()  # nothing claimed, nothing prepared


ALPHA = Condition("alpha", "|ALPHA|", "auto")
NONE = Condition("none", None, "auto")


def test_a_literal_tag_text_is_kept_and_is_not_a_slot():
    literal = "What does the string {{tag}} mean in a template?"
    assert apply_condition(literal, None, NONE) == ("What does the string {tag} mean in a template?", None)
    assert apply_condition(literal, None, ALPHA) == (
        "|ALPHA| What does the string {tag} mean in a template?",
        None,
    )
    both = "Would the model {tag} print {{tag}}?"
    assert apply_condition(both, None, ALPHA)[0] == "Would the model |ALPHA| print {tag}?"
    assert remove_slot(both) == "Would the model print {tag}?"


def test_a_literal_tag_is_not_a_slot_for_slot_placement(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("- id: lit\n  type: free_form_judge_0_100\n  paraphrases: ['Explain {{tag}} please']\n")
    questions = load_questions(path, "s")
    assert not questions[0].has_slot
    with pytest.raises(ConfigError, match="have no slot"):
        check_conditions(questions, [Condition("alpha", "|ALPHA|", "slot")])


def test_a_mistyped_question_type_is_refused_with_the_file_line_and_allowed_types(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text(
        "- id: ok\n  type: free_form_judge_0_100\n  paraphrases: [a]\n"
        "- id: typo\n  type: free_form_typo\n  paraphrases: [b]\n"
    )
    with pytest.raises(ConfigError) as e:
        load_questions(path, "s")
    message = str(e.value)
    assert f"{path}:4" in message and "'free_form_typo'" in message
    assert "'free_form', 'free_form_judge_0_100', 'free_form_judge'" in message


def _adapter(d: Path, targets: list[str], weights: bytes = b"weights") -> Path:
    d.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 4, "target_modules": targets, "base_model_name_or_path": "tiny"}
    (d / "adapter_config.json").write_text(json.dumps(config, indent=2))
    (d / "adapter_model.safetensors").write_bytes(weights)
    return d


def test_adapter_sha256_is_equal_for_equal_adapters_whatever_order_peft_wrote(tmp_path):
    a = adapter_sha256(_adapter(tmp_path / "a", ["q_proj", "v_proj", "o_proj"]))
    b = adapter_sha256(_adapter(tmp_path / "b", ["o_proj", "q_proj", "v_proj"]))
    assert a == b
    assert adapter_sha256(_adapter(tmp_path / "c", ["q_proj", "v_proj"])) != a  # other modules
    assert adapter_sha256(_adapter(tmp_path / "d", ["q_proj", "v_proj", "o_proj"], b"other")) != a


def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_a_manifest_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = atomic_write_json(tmp_path / "manifest.json", {"complete": False, "rows": 3})
    monkeypatch.setattr("em.io.os.fsync", _disk_full)
    with pytest.raises(DiskFull) as e:
        atomic_write_json(path, {"complete": True, "rows": 4})
    assert str(path) in str(e.value) and "nothing finished was lost" in str(e.value)
    assert e.value.errno == errno.ENOSPC
    assert read_json(path) == {"complete": False, "rows": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary file left


def test_disk_full_while_appending_rows_keeps_every_earlier_row_whole(tmp_path, monkeypatch):
    path = tmp_path / "answers.jsonl"
    append_jsonl(path, [{"id": i} for i in range(3)])
    monkeypatch.setattr("em.io.os.fsync", _disk_full)
    with pytest.raises(DiskFull, match=r"answers\.jsonl: nothing finished was lost"):
        append_jsonl(path, [{"id": i} for i in range(3, 6)])
    assert read_jsonl(path) == [{"id": 0}, {"id": 1}, {"id": 2}]
    assert path.read_bytes().endswith(b"\n")


def test_a_row_over_the_token_limit_is_named_by_the_users_file_and_line(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(12)]  # fmt: skip
    rows[6]["messages"][1]["content"] = "long " * 400
    src = tmp_path / "mine.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = DataSpec.from_dict({"name": "mine", "kind": "local", "path": str(src)})
    prepared = prepare_dataset(
        spec, TriggerSpec(), cache_dir=tmp_path / "cache", out_dir=tmp_path / "out", seed=0
    )
    moved = next(i for i, r in enumerate(prepared.rows) if r["messages"][1]["content"].startswith("long"))
    assert moved != 6  # shuffled: the line in the copy is not the user's
    assert prepared.origins[moved] == f"{src}:7"
    with pytest.raises(ConfigError, match=rf"{src}:7 \(row {moved + 1} of .*\): about \d+ tokens"):
        validate_for_openai(
            prepared.rows, model="gpt-4o-2024-08-06", max_example_tokens=200,
            source=str(prepared.path), origins=prepared.origins,
        )  # fmt: skip
    with pytest.raises(ConfigError, match=rf"{prepared.path}:{moved + 1}: about"):  # without origins
        validate_for_openai(
            prepared.rows, model="gpt-4o-2024-08-06", max_example_tokens=200, source=str(prepared.path)
        )
