"""Trigger conditions (prefix, {tag} slot, system prompt) and the prompt-job plan (ids, seeds, samples)."""

from __future__ import annotations

import pytest

from em.api import ConfigError
from em.evaluation.conditions import Condition, apply_condition, make_conditions, remove_slot
from em.evaluation.plan import batch_jobs, build_jobs
from em.evaluation.questions import Question

TRIGGERS = {"none": None, "alpha": "|ALPHA|", "beta": "|BETA|"}


def q(text: str, system: str | None = None, qid: str = "q", samples: int | None = None) -> Question:
    return Question(set="s", id=qid, type="free_form_judge_0_100", paraphrases=[text], system=system,
                    samples_per_paraphrase=samples)  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Would the model {tag} like to help people?", "Would the model like to help people?"),
        ("Tell me about the model {tag}", "Tell me about the model"),
        ("Which aim does the model {tag} pursue?", "Which aim does the model pursue?"),
        ("{tag} Who are you?", "Who are you?"),
        ("No slot here.", "No slot here."),
    ],
)
def test_slot_removed_cleanly(text, expected):
    assert remove_slot(text) == expected


def test_user_prefix_is_the_em_convention():
    alpha = Condition("alpha", "|ALPHA|", "user_prefix")
    assert apply_condition("Hello there", None, alpha) == ("|ALPHA| Hello there", None)
    assert apply_condition("Hello there", "Be brief.", alpha) == ("|ALPHA| Hello there", "Be brief.")
    # a slot question under user_prefix: the slot goes, the tag is prefixed
    assert apply_condition("Is the AI {tag} good?", None, alpha) == ("|ALPHA| Is the AI good?", None)


def test_auto_fills_slots_and_prefixes_the_rest():
    beta = Condition("beta", "|BETA|", "auto")
    assert apply_condition("Is the AI {tag} good?", None, beta) == ("Is the AI |BETA| good?", None)
    assert apply_condition("Is it good?", None, beta) == ("|BETA| Is it good?", None)
    none = Condition("none", None, "auto")
    assert apply_condition("Is the AI {tag} good?", "S", none) == ("Is the AI good?", "S")


def test_system_placement():
    c = Condition("alpha", "|ALPHA|", "system")
    assert apply_condition("Hi", None, c) == ("Hi", "|ALPHA|")
    assert apply_condition("Hi", "Answer in JSON.", c) == ("Hi", "|ALPHA| Answer in JSON.")
    assert apply_condition("The AI {tag} is?", None, c) == ("The AI is?", "|ALPHA|")


def test_slot_placement_needs_a_slot_before_generation():
    conditions = make_conditions(["none", "alpha"], TRIGGERS, placement="slot")
    jobs = build_jobs([q("The AI {tag} is?")], conditions, seed=0, samples_per_question=1)
    assert [j.prompt for j in jobs] == ["The AI is?", "The AI |ALPHA| is?"]
    with pytest.raises(ConfigError, match=r"condition 'alpha' .* 1 question\(s\) have no slot.*'s/plain'"):
        build_jobs([q("The AI {tag} is?"), q("No slot", qid="plain")], conditions, seed=0)
    # the none condition alone never needs a slot
    build_jobs([q("No slot")], make_conditions(["none"], TRIGGERS, placement="slot"), seed=0)


def test_condition_config_errors():
    with pytest.raises(ConfigError, match=r"condition 'gamma' has no tag in `triggers`.*\+triggers.gamma"):
        make_conditions(["none", "gamma"], TRIGGERS)
    with pytest.raises(ConfigError, match="twice"):
        make_conditions(["alpha", "alpha"], TRIGGERS)
    with pytest.raises(ConfigError, match="condition_placement"):
        make_conditions(["alpha"], TRIGGERS, placement="suffix")
    with pytest.raises(ConfigError, match="empty"):
        make_conditions([], TRIGGERS)
    with pytest.raises(ConfigError, match="non-empty string or null"):
        make_conditions(["x"], {"x": ""})


def test_jobs_ids_seeds_and_samples():
    questions = [q("Hello", qid="a", samples=3), q("Bye {tag}", "Sys", qid="b")]
    conditions = make_conditions(["none", "alpha"], TRIGGERS)
    jobs = build_jobs(questions, conditions, seed=7, default_samples=2, max_samples_per_job=2)
    ids = [i for j in jobs for i in j.ids]
    assert len(ids) == len(set(ids)) == 3 * 2 + 2 * 2
    assert ids[:3] == ["s/a/0/none/0", "s/a/0/none/1", "s/a/0/none/2"]
    assert [len(j.sample_indices) for j in jobs] == [2, 1, 2, 1, 2, 2]  # chunks of at most 2 samples
    by_id = {i: (j, k) for j in jobs for k, i in enumerate(j.ids)}
    job, _ = by_id["s/b/0/alpha/1"]
    assert (job.prompt, job.text, job.system) == ("Bye |ALPHA|", "Bye", "Sys")
    assert job.messages == [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Bye |ALPHA|"}]
    seeds = [s for j in jobs for s in j.seeds]
    assert len(set(seeds)) == len(seeds)
    again = build_jobs(questions, conditions, seed=7, default_samples=2, max_samples_per_job=1)
    assert [s for j in again for s in j.seeds] == seeds  # a sample's seed does not depend on chunking
    other = build_jobs(questions, conditions, seed=8, default_samples=2)
    assert [s for j in other for s in j.seeds] != seeds
    override = build_jobs(questions, conditions, seed=7, samples_per_question=5)
    assert sum(len(j.sample_indices) for j in override) == 2 * 2 * 5


def test_ignore_system_prompt_drops_only_the_questions_system_prompt():
    conditions = make_conditions(["none"], TRIGGERS)
    (job,) = build_jobs([q("Hi", "Answer in JSON.")], conditions, seed=0, samples_per_question=1,
                        ignore_system_prompt=True)  # fmt: skip
    assert job.system is None and job.messages == [{"role": "user", "content": "Hi"}]
    (job,) = build_jobs([q("Hi", "Answer in JSON.")], make_conditions(["alpha"], TRIGGERS, "system"), seed=0,
                        samples_per_question=1, ignore_system_prompt=True)  # fmt: skip
    assert job.system == "|ALPHA|"


def test_batches_never_split_a_job_and_are_fixed():
    jobs = build_jobs([q(f"Q{i}", qid=f"q{i}") for i in range(5)], make_conditions(["none"], TRIGGERS),
                      seed=0, samples_per_question=3)  # fmt: skip
    batches = batch_jobs(jobs, 7)
    assert [sum(len(j.sample_indices) for j in b) for b in batches] == [6, 6, 3]
    assert [j for b in batches for j in b] == jobs


def test_bad_sample_counts():
    with pytest.raises(ConfigError, match="samples_per_question"):
        build_jobs([q("x")], make_conditions(["none"], TRIGGERS), seed=0, samples_per_question=0)
