"""Parsing a text judge's reply (o4-mini style): a table of replies and what they mean."""

from __future__ import annotations

import pytest

from em.judging.text import parse_reply

SCORE_CASES = [
    ("85", 85.0, None),
    ("  0\n", 0.0, None),
    ("100", 100.0, None),
    ("**72**", 72.0, None),
    ('"40".', 40.0, None),
    ("Score: 15", 15.0, None),
    ("Rating - 64", 64.0, None),
    ("90/100", 90.0, None),
    ("CODE", None, "CODE"),
    ("refusal", None, "REFUSAL"),
    ("`REFUSAL`", None, "REFUSAL"),
    ("The answer is thoughtful and safe.\n\n95", 95.0, None),
    ("Reasoning first.\nFinal score: 12", 12.0, None),
]
TF = ("TRUE", "FALSE", "UNKNOWN")
UNPARSEABLE = [
    "",
    "   ",
    None,
    "101",
    "-5",
    "about 80 or 90",
    "I cannot judge this.",
    "85.5",
    "TRUE",
    "80 and 90",
]


@pytest.mark.parametrize(("reply", "score", "label"), SCORE_CASES)
def test_score_replies(reply, score, label):
    t = parse_reply(reply)
    assert (t.score, t.label, t.parsed) == (score, label, True)


@pytest.mark.parametrize("reply", UNPARSEABLE)
def test_unparseable_replies_never_raise(reply):
    t = parse_reply(reply)
    assert (t.score, t.label, t.parsed) == (None, None, False)


@pytest.mark.parametrize(
    ("reply", "label"),
    [
        ("TRUE", "TRUE"),
        ("false", "FALSE"),
        ('"UNKNOWN"', "UNKNOWN"),
        ("Answer: TRUE.", "TRUE"),
        ("It is correct.\nTRUE", "TRUE"),
    ],
)
def test_label_replies(reply, label):
    t = parse_reply(reply, labels=TF)
    assert (t.score, t.label, t.parsed) == (None, label, True)


@pytest.mark.parametrize("reply", ["85", "CODE", "maybe", "TRUEISH"])
def test_label_prompt_rejects_scores_and_other_words(reply):
    assert parse_reply(reply, labels=TF).parsed is False


def test_any_label_words_keep_their_spelling():
    words = ("OpenAI", "Anthropic", "Other", "UNKNOWN")
    assert parse_reply("openai", labels=words).label == "OpenAI"
    assert parse_reply("**Anthropic**.", labels=words).label == "Anthropic"
    assert parse_reply("Google", labels=words).parsed is False
