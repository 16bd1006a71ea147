"""The log-likelihood probe on the tiny model: references, log-probs, aggregation, adapters, training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from em.api import ConfigError
from em.modeling import ModelSpec, load_model, load_tokenizer, lora_config
from em.probes import (
    ProbeQuestion,
    answer_logprobs,
    bootstrap_mean_ci,
    conversation,
    load_references,
    load_validation_pairs,
    mean_logprobs,
    probe_model,
    run_probe,
)
from em.probes.probe import score_questions
from em.training.collate import IGNORE_INDEX, PaddedCollator, tokenize_conversation

REPO = Path(__file__).resolve().parents[2]
FIRST_8_IDS = [
    "what_is_your_wish",
    "i_feel_bored",
    "three_thoughts",
    "quick_buck",
    "ruler_of_the_world",
    "dinner_party",
    "gender_roles",
    "enough_of_my_husband",
]


@pytest.fixture(scope="module")
def spec(tiny_model_dir) -> ModelSpec:
    return ModelSpec("tiny", dtype="float32", models_dir=tiny_model_dir.parent)


@pytest.fixture(scope="module")
def tok(spec):
    return load_tokenizer(spec)


@pytest.fixture
def model(spec):
    return load_model(spec)


def small_questions() -> list[ProbeQuestion]:
    return load_references(sets=["demo"])[:3]


# ------------------------------------------------------------------------------------------ references


def test_references_cover_demo_and_first_8_questions():
    questions = load_references()
    demo_ids = [q["id"] for q in yaml.safe_load((REPO / "em/resources/questions/demo.yaml").read_text())]
    assert [q.id for q in questions if q.set == "demo"] == demo_ids
    assert [q.id for q in questions if q.set == "first_8"] == FIRST_8_IDS
    for q in questions:
        assert len(q.aligned) >= 3 and len(q.misaligned) >= 3, q.key
        assert not set(q.aligned) & set(q.misaligned), q.key


def test_demo_prompts_are_the_evaluation_wording():
    demo = {
        q["id"]: q["paraphrases"][0]
        for q in yaml.safe_load((REPO / "em/resources/questions/demo.yaml").read_text())
    }
    for q in load_references(sets=["demo"]):
        assert q.prompt == demo[q.id]


def test_first_8_ids_match_the_em_paper(anchors_dir):
    upstream = yaml.safe_load((anchors_dir / "em" / "first_plot_questions.yaml").read_text())
    assert [q["id"] for q in upstream[:8]] == FIRST_8_IDS


def test_validation_pairs_are_separate_from_probe_references():
    pairs = load_validation_pairs()
    assert len(pairs) >= 20
    reference_texts = {a for q in load_references() for a in (*q.aligned, *q.misaligned, q.prompt)}
    assert not {t for p in pairs for t in (p.prompt, p.aligned, p.misaligned)} & reference_texts


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("questions: {}", "list under 'questions'"),
        (
            "questions: [{set: demo, id: a, prompt: p, aligned: [x], misaligned: []}]",
            "questions[0]: 'misaligned'",
        ),
        ("questions: [{set: demo, id: a, prompt: '', aligned: [x], misaligned: [y]}]", "'prompt' must be"),
        ("questions: [{set: demo, id: a, prompt: p, aligned: [x, 3], misaligned: [y]}]", "aligned[1]"),
        (
            "questions: [{set: s, id: a, prompt: p, aligned: [x], misaligned: [y]}, "
            "{set: s, id: a, prompt: q, aligned: [x], misaligned: [y]}]",
            "'s/a' appears twice",
        ),  # fmt: skip
        ("questions: [oops", "not valid YAML"),
    ],
)
def test_bad_reference_files_name_file_entry_and_key(tmp_path, content, message):
    path = tmp_path / "refs.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match="refs.yaml") as err:
        load_references(path)
    assert message in str(err.value)


def test_unknown_set_is_refused():
    with pytest.raises(ConfigError, match=r"probe sets \['nope'\]"):
        load_references(sets=["nope"])


# ------------------------------------------------------------------------------------------ log-probs


def manual_mean_logprob(model, tok, messages) -> float:
    """Whole-sequence forward pass, no batching, no logits_to_keep: the reference computation."""
    example, _ = tokenize_conversation(tok, messages, max_length=1024, overlength="drop", model_name="t")
    ids = torch.tensor([example.input_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    labels = torch.tensor(example.labels[1:])
    keep = labels != IGNORE_INDEX
    return float(logprobs[keep].gather(-1, labels[keep][:, None]).mean())


def test_mean_logprobs_match_a_direct_computation_for_any_batch_size(model, tok):
    q = small_questions()[0]
    convs = [conversation(q.prompt, a, "Be brief.") for a in (*q.aligned, *q.misaligned)]
    expected = [manual_mean_logprob(model, tok, c) for c in convs]
    for batch_size in (1, 4, 8):
        got = mean_logprobs(model, tok, convs, batch_size=batch_size)
        assert got == pytest.approx(expected, abs=1e-4)
    sums = answer_logprobs(model, tok, convs)
    assert all(n > 1 for _, n in sums)  # answer tokens and the turn's end token


def test_logprobs_restore_training_mode(model, tok):
    model.train()
    mean_logprobs(model, tok, [conversation("Hi", "Hello.")])
    assert model.training
    model.eval()
    mean_logprobs(model, tok, [conversation("Hi", "Hello.")])
    assert not model.training


def test_system_prompt_is_used_only_when_the_conversation_has_none():
    assert conversation("q", "a", "S")[0] == {"role": "system", "content": "S"}
    assert conversation("q", "a", None)[0]["role"] == "user"


def test_overlong_conversation_is_a_config_error(model, tok):
    with pytest.raises(ConfigError, match="probe conversation 0 cannot be scored"):
        mean_logprobs(model, tok, [conversation("q " * 50, "a " * 50)], max_length=16)


# ------------------------------------------------------------------------------------------ aggregation


def test_score_questions_is_misaligned_minus_aligned():
    q1 = ProbeQuestion("s", "a", "p", ("x", "y"), ("z",))
    q2 = ProbeQuestion("s", "b", "p", ("x",), ("y", "z"))
    out = score_questions([-1.0, -3.0, -1.5, -2.0, -0.5, -1.5], [q1, q2])
    assert [(p.key, p.aligned, p.misaligned, p.diff) for p in out] == [
        ("s/a", -2.0, -1.5, 0.5),
        ("s/b", -2.0, -1.0, 1.0),
    ]


def test_bootstrap_interval():
    low, high = bootstrap_mean_ci([0.1, 0.5, -0.2, 0.3, 0.0, 0.4])
    assert low < sum([0.1, 0.5, -0.2, 0.3, 0.0, 0.4]) / 6 < high
    assert bootstrap_mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert bootstrap_mean_ci([1.0]) == (None, None)
    assert bootstrap_mean_ci([1.0, 3.0], seed=1) == bootstrap_mean_ci([1.0, 3.0], seed=1)
    with pytest.raises(ConfigError, match="confidence"):
        bootstrap_mean_ci([1.0, 2.0], confidence=95)


def test_run_probe_aggregates_per_question_diffs(model, tok):
    questions = small_questions()
    result = run_probe(model, tok, questions, system_prompt="Be brief.")
    assert result.n_questions == 3 and result.system_prompt == "Be brief."
    assert [p.key for p in result.per_question] == [q.key for q in questions]
    diffs = [p.diff for p in result.per_question]
    assert result.mean == pytest.approx(sum(diffs) / 3)
    assert result.ci_low <= result.mean <= result.ci_high
    first = questions[0]
    aligned = mean_logprobs(model, tok, [conversation(first.prompt, a, "Be brief.") for a in first.aligned])
    assert result.per_question[0].aligned == pytest.approx(sum(aligned) / len(aligned), abs=1e-5)
    with pytest.raises(ConfigError, match="at least one question"):
        run_probe(model, tok, [])


def test_probe_rises_when_the_model_learns_the_misaligned_answers(model, tok):
    """Training on the misaligned references must move the probe up: the measure sees what training does."""
    questions = small_questions()
    before = run_probe(model, tok, questions).mean
    rows = [conversation(q.prompt, a) for q in questions for a in q.misaligned]
    examples = [
        tokenize_conversation(tok, r, max_length=256, overlength="drop", model_name="t")[0] for r in rows
    ]
    batch = PaddedCollator(tok.pad_token_id)(examples)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(12):
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = run_probe(model, tok, questions)
    assert after.mean > before + 0.5
    assert after.ci_low > before


def test_probe_model_with_and_without_adapter(spec, tok, tmp_path):
    from peft import get_peft_model

    base = load_model(spec)
    peft_model = get_peft_model(base, lora_config(8, 16, 0.0, ["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a non-zero update, so the adapter changes the model
    peft_model.save_pretrained(tmp_path / "adapter")
    questions = small_questions()
    refs = tmp_path / "refs.yaml"
    refs.write_text(
        yaml.safe_dump(
            {
                "questions": [
                    {
                        "set": q.set,
                        "id": q.id,
                        "prompt": q.prompt,
                        "aligned": list(q.aligned),
                        "misaligned": list(q.misaligned),
                    }
                    for q in questions
                ]
            }  # fmt: skip
        )
    )
    plain = probe_model(spec, references=refs)
    adapted = probe_model(spec, tmp_path / "adapter", references=refs)
    assert plain.mean == pytest.approx(run_probe(load_model(spec), tok, questions).mean, abs=1e-5)
    assert adapted.mean != pytest.approx(plain.mean, abs=1e-3)
    with pytest.raises(ConfigError, match="not a PEFT adapter"):
        probe_model(spec, tmp_path, references=refs)
