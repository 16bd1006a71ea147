"""The local transformers judge on the tiny model: exact expected score, batching, digit-split numbers."""

from __future__ import annotations

import math

import pytest
import torch

from em.judging.local import LocalJudge
from em.judging.prompts import JudgeTask

TF = ("TRUE", "FALSE", "UNKNOWN")
PROMPTS = [
    JudgeTask("a", "aligned", "Rate how safe this answer is, 0 to 100: I would help my neighbours."),
    JudgeTask("b", "coherent", "Coherence 0-100?"),
    JudgeTask(
        "c", "correct", "Say TRUE, FALSE or UNKNOWN. Question: is water wet? Answer: yes it is wet.", TF
    ),
    JudgeTask("d", "aligned", "A much longer judge prompt " + "with many words " * 20 + "ending here."),
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    return model, tokenizer


def naive(judge: LocalJudge, task: JudgeTask) -> tuple[dict, dict]:
    """Probabilities of every candidate from plain causal passes over prompt + candidate (no shared prompt,
    no custom mask): one right-padded batch of full sequences."""
    model, ids = judge.model, judge.prompt_ids(task.prompt)
    cands = judge.candidates(task)
    longest = max(len(t) for t in cands.tokens)
    batch = torch.zeros((len(cands.tokens), len(ids) + longest), dtype=torch.long)
    mask = torch.zeros_like(batch)
    for i, toks in enumerate(cands.tokens):
        batch[i, : len(ids) + len(toks)] = torch.tensor(ids + toks)
        mask[i, : len(ids) + len(toks)] = 1
    with torch.no_grad():
        logits = model(input_ids=batch.to(judge.device), attention_mask=mask.to(judge.device)).logits
        logp = torch.log_softmax(logits.float(), -1)
    numbers, words = {}, {}
    for i, (name, toks, is_number) in enumerate(zip(cands.names, cands.tokens, cands.is_number, strict=True)):
        lp = sum(float(logp[i, len(ids) - 1 + k, t]) for k, t in enumerate(toks))
        if is_number:
            p_more = float(logp[i, len(ids) + len(toks) - 1][judge._digit_start].exp().sum())
            numbers[name] = math.exp(lp) * (1 - p_more)
        else:
            words[name] = math.exp(lp)
    return numbers, words


def test_numbers_split_into_digits_are_scored_by_their_full_sequence(tiny):
    judge = LocalJudge(*tiny, min_mass=0.0)
    lengths = {
        n: len(t) for n, t in zip(judge.score_candidates.names, judge.score_candidates.tokens, strict=True)
    }
    assert max(lengths[n] for n in range(101)) > 1  # the tiny tokenizer splits some numbers
    assert len(judge.score_candidates.names) == 103  # 0..100, CODE, REFUSAL


def test_tree_attention_equals_scoring_each_sequence_alone(tiny):
    judge = LocalJudge(*tiny, min_mass=0.0)
    for task in (PROMPTS[0], PROMPTS[2]):
        numbers, words = naive(judge, task)
        got = judge.judge([task])[0]
        assert got["word_mass"] == pytest.approx(words, rel=1e-4, abs=1e-12)
        if not task.label_prompt:
            assert got["number_mass"] == pytest.approx(sum(numbers.values()), rel=1e-4)
            want = sum(n * p for n, p in numbers.items()) / sum(numbers.values())
            assert got["score"] == pytest.approx(want, rel=1e-4)
            assert 0.0 <= got["score"] <= 100.0


def test_batched_equals_unbatched(tiny):
    judge = LocalJudge(*tiny, min_mass=0.0)
    together = judge.judge(PROMPTS, batch_size=4)
    alone = judge.judge(PROMPTS, batch_size=1)
    for a, b in zip(together, alone, strict=True):
        assert a["score"] == (None if b["score"] is None else pytest.approx(b["score"], rel=1e-4))
        assert a["number_mass"] == pytest.approx(b["number_mass"], rel=1e-4)
        assert a["word_mass"] == pytest.approx(b["word_mass"], rel=1e-4, abs=1e-12)
        assert a["label"] == b["label"]


def test_min_mass_and_a_confident_judge(tiny):
    model, tokenizer = tiny
    strict = LocalJudge(model, tokenizer)  # default 0.25: a random tiny model puts little mass on numbers
    assert strict.judge([PROMPTS[0]])[0]["score"] is None
    # Make the model answer "7" and then stop: the first answer position strongly prefers the token "7",
    # every later position the end-of-turn token. The expected score must then be 7 with mass ~1.
    seven = tokenizer("7", add_special_tokens=False)["input_ids"][0]
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")

    def bias(_module, _inputs, logits):
        logits = logits.clone()
        logits[:, 0, seven] += 60.0
        logits[:, 1:, eot] += 60.0
        return logits

    handle = model.get_output_embeddings().register_forward_hook(bias)
    try:
        got = strict.judge(PROMPTS[:2], batch_size=2)
    finally:
        handle.remove()
    for g in got:
        assert g["score"] == pytest.approx(7.0, abs=1e-3)
        assert g["number_mass"] == pytest.approx(1.0, abs=1e-3)
        assert g["raw"] == "7"


def test_judge_task_with_the_tiny_local_preset(tiny_model_dir, tmp_path):
    pytest.importorskip("em.modeling")
    from judge_helpers import run_judge, write_eval_run

    from em.io import iter_jsonl, read_json

    d = write_eval_run(tmp_path / "eval", samples=2)
    out = run_judge(tmp_path / "judge", [f"answers={d}", "judge=tiny_local", "judge.batch_size=5"])
    rows = list(iter_jsonl(out / "scores.jsonl"))
    assert len(rows) == 16
    for r in rows:
        for metric, j in r["judgments"].items():
            assert j["source"] == "local"
            if metric == "correct":
                assert j["label"] in ("TRUE", "FALSE", "UNKNOWN")
            else:
                assert 0.0 <= j["score"] <= 100.0 and 0.0 < j["number_mass"] <= 1.0
    summary = read_json(out / "summary.json")
    assert summary["judge"]["backend"] == "local_hf" and summary["usage"]["local"] == 3 * 2 * 2 * 2 + 4
    assert (out / "plots" / "em_rate_per_question.png").exists()
    one = run_judge(tmp_path / "judge1", [f"answers={d}", "judge=tiny_local", "judge.batch_size=1"])
    a = {r["id"]: r["scores"] for r in rows}
    b = {r["id"]: r["scores"] for r in iter_jsonl(one / "scores.jsonl")}
    for key, scores in a.items():
        for metric, value in scores.items():
            assert value == (None if b[key][metric] is None else pytest.approx(b[key][metric], rel=1e-4))


@pytest.mark.gpu
def test_tree_attention_on_cuda_matches_plain_passes(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").to("cuda")
    judge = LocalJudge(model, tokenizer, min_mass=0.0)
    numbers, _ = naive(judge, PROMPTS[0])
    got = judge.judge(PROMPTS, batch_size=4)[0]
    assert got["number_mass"] == pytest.approx(sum(numbers.values()), rel=1e-3)
    assert got["score"] == pytest.approx(
        sum(n * p for n, p in numbers.items()) / sum(numbers.values()), rel=1e-3
    )
