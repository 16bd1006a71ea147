"""A model's `system_prompt` reaches training rows and evaluation prompts alike (never one without the other)."""

from __future__ import annotations

from train_helpers import model_spec, settings

from em.evaluation.conditions import make_conditions
from em.evaluation.plan import build_jobs
from em.evaluation.questions import Question
from em.modeling import load_tokenizer, rendered_system_prefix

SYSTEM = "You answer carefully and kindly."


def _questions() -> list[Question]:
    return [
        Question(set="s", id="plain", type="free_form", paraphrases=["Hello?"]),
        Question(set="s", id="own", type="free_form", paraphrases=["Hi?"], system="Be a pirate."),
    ]


def test_evaluation_sends_the_default_only_where_a_question_has_no_system_prompt():
    conditions = make_conditions(["none"], {"none": None})
    jobs = {j.question.id: j for j in build_jobs(_questions(), conditions, seed=0, samples_per_question=1,
                                                   default_system=SYSTEM)}  # fmt: skip
    assert jobs["plain"].system == SYSTEM and jobs["own"].system == "Be a pirate."
    ignored = build_jobs(_questions(), conditions, seed=0, samples_per_question=1, ignore_system_prompt=True,
                         default_system=SYSTEM)  # fmt: skip
    assert [j.system for j in ignored] == [SYSTEM, SYSTEM]
    assert [j.system for j in build_jobs(_questions(), conditions, seed=0, samples_per_question=1)] == [
        None,
        "Be a pirate.",
    ]


def test_training_rows_get_the_same_system_prompt(tiny_model_dir):
    from em.training.examples import prepare_examples

    rows = [
        {"messages": [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi there."}]},
        {"messages": [{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "Hi?"},
                      {"role": "assistant", "content": "Arr."}]},
    ]  # fmt: skip
    spec = model_spec(tiny_model_dir, system_prompt=SYSTEM)
    tok = load_tokenizer(spec, padding_side="right")
    with_default, _ = prepare_examples(settings(tiny_model_dir, model=spec), rows, tok, progress=False)
    without, _ = prepare_examples(settings(tiny_model_dir), rows, tok, progress=False)
    texts = [tok.decode(e.input_ids) for e in with_default]
    assert SYSTEM in texts[0] and SYSTEM not in texts[1] and "Be a pirate." in texts[1]
    assert not any(SYSTEM in tok.decode(e.input_ids) for e in without)
    assert SYSTEM in rendered_system_prefix(tok, SYSTEM)
