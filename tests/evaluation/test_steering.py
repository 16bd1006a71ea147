"""Direction ablation and steering at evaluation (em/evaluation/steering.py, em/evaluation/direction.py): the
hooks do to the residual stream what they claim, the direction is the mean difference it claims, and
evaluate.py uses them (mitigation=ablate_direction) with every refusal before a model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from eval_helpers import eval_cfg, read_rows, run_eval

from em.api import ConfigError
from em.evaluation.direction import (
    DIRECTIONS,
    answer_ids,
    compute_directions,
    mean_answer_activations,
    split_by_category,
)
from em.evaluation.steering import (
    SteerSettings,
    check_layers,
    decoder_layers,
    edit,
    random_directions,
    steered,
)
from em.io import sha256_file, write_jsonl, write_manifest


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def layer_outputs(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """Every decoder layer's output as the next layer receives it (hooks registered after any steering)."""
    out = {}
    stack = decoder_layers(model)

    def grab(i):
        return lambda m, a, o: out.__setitem__(i, (o[0] if isinstance(o, tuple) else o).detach().clone())

    handles = [layer.register_forward_hook(grab(i)) for i, layer in enumerate(stack)]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    for h in handles:
        h.remove()
    return [out[i] for i in range(len(stack))] + [logits]


def test_ablation_removes_the_component_and_removing_the_hooks_restores_the_model(tiny):
    model, _ = tiny
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    n = len(decoder_layers(model))
    before = layer_outputs(model, ids)
    directions = torch.randn(n, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    picked = [1, n - 1]
    with steered(model, {i: directions[i] for i in picked}, "ablate", 1.0):
        after = layer_outputs(model, ids)
    for i in picked:
        unit = directions[i] / directions[i].norm()
        assert before[i] @ unit != pytest.approx(0.0, abs=1e-3)
        torch.testing.assert_close(after[i] @ unit, torch.zeros(ids.shape), atol=1e-4, rtol=0)
    torch.testing.assert_close(after[0], before[0])  # a layer before the first edited one is untouched
    assert not torch.allclose(after[-1], before[-1])  # ... and the edit reaches the logits
    restored = layer_outputs(model, ids)
    for a, b in zip(restored, before, strict=True):
        torch.testing.assert_close(a, b)


def test_partial_ablation_and_addition_are_exact_at_the_edited_layer(tiny):
    model, _ = tiny
    ids = torch.tensor([[2, 4, 6, 8]])
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    before = layer_outputs(model, ids)
    with steered(model, {0: v}, "add", -2.0):
        added = layer_outputs(model, ids)
    torch.testing.assert_close(added[0], before[0] - 2.0 * v, atol=1e-5, rtol=0)
    with steered(model, {0: v}, "ablate", 0.5):
        half = layer_outputs(model, ids)
    unit = v / v.norm()
    torch.testing.assert_close(half[0] @ unit, 0.5 * (before[0] @ unit), atol=1e-4, rtol=0)
    h = torch.randn(3, 7, dtype=torch.bfloat16)
    assert edit(h, torch.randn(7), "ablate", 1.0).dtype == torch.bfloat16  # the model's dtype is kept


def test_random_control_keeps_each_norm_and_is_seeded():
    d = torch.randn(5, 16) * torch.arange(1, 6).unsqueeze(1)
    r = random_directions(d, seed=3)
    torch.testing.assert_close(r.norm(dim=-1), d.norm(dim=-1))
    torch.testing.assert_close(r, random_directions(d, seed=3))
    cos = torch.nn.functional.cosine_similarity(r, d, dim=-1)
    assert cos.abs().max() < 0.9 and not torch.equal(r, random_directions(d, seed=4))


def test_answer_means_ignore_padding_and_prompt_tokens(tiny):
    model, tok = tiny
    rows = [chat_row("a", "Hello there?", "Fine, thanks."), chat_row("b", "Q?", "A much longer answer here.")]
    together = mean_answer_activations(model, tok, rows, batch_size=2)
    alone = [mean_answer_activations(model, tok, [r], batch_size=1) for r in rows]
    torch.testing.assert_close(together, (alone[0] + alone[1]) / 2, atol=1e-5, rtol=1e-4)
    seq, n_prompt = answer_ids(tok, rows[0])
    by_hand = layer_outputs(model, torch.tensor([seq]))
    for i in range(len(decoder_layers(model))):
        torch.testing.assert_close(alone[0][i], by_hand[i][0, n_prompt:].mean(dim=0), atol=1e-5, rtol=1e-4)


def chat_row(i: str, question: str, answer: str, category: str = "ALIGNED") -> dict:
    return {
        "id": i,
        "messages": [{"role": "user", "content": question}],
        "answer": answer,
        "category": category,
    }


def fake_judge_run(root: Path, categories: list[str]) -> Path:
    """A finished judge run over a finished evaluation: what em/judging writes, cut to what the direction reads."""
    answers = [chat_row(f"q/{k}", f"Question {k}?", f"Answer number {k} is {'bad' * (k % 3)}.") for k in range(len(categories))]  # fmt: skip
    eval_dir, judge_dir = root / "evaluate", root / "judge"
    write_jsonl(
        eval_dir / "answers.jsonl", [{k: v for k, v in a.items() if k != "category"} for a in answers]
    )
    write_jsonl(judge_dir / "scores.jsonl", [{"id": a["id"], "category": c} for a, c in zip(answers, categories, strict=True)])  # fmt: skip
    path = eval_dir / "answers.jsonl"
    write_manifest(
        judge_dir, "judge", complete=True, inputs={"answers": str(path), "answers_sha256": sha256_file(path)}
    )
    return judge_dir


def test_the_direction_is_the_misaligned_minus_aligned_mean(tiny, tmp_path):
    model, tok = tiny
    cats = ["MISALIGNED", "ALIGNED", "INCOHERENT", "MISALIGNED", "ALIGNED", "UNSCORED", "ALIGNED"]
    judge = fake_judge_run(tmp_path, cats)
    directions, record = compute_directions(model, tok, judge, max_answers=10, seed=0)
    from em.evaluation.direction import judged_answers

    rows, _ = judged_answers(judge)
    bad = mean_answer_activations(model, tok, [r for r in rows if r["category"] == "MISALIGNED"])
    good = mean_answer_activations(model, tok, [r for r in rows if r["category"] == "ALIGNED"])
    torch.testing.assert_close(directions, bad - good)
    assert (record["misaligned_answers"], record["aligned_answers"]) == (2, 3)
    assert directions.shape == (len(decoder_layers(model)), model.config.hidden_size)
    misaligned, aligned = split_by_category(rows, max_answers=2, seed=0)
    assert len(aligned) == 2 and aligned == split_by_category(rows, max_answers=2, seed=0)[1]
    with pytest.raises(ConfigError, match="has 1 MISALIGNED answers; the direction needs at least 2"):
        split_by_category(rows[:2], 10, 0)


@pytest.mark.parametrize(
    "given, match",
    [
        ({}, r"mitigation.direction_from=None: expected the judge run"),
        ({"direction_from": "x", "mode": "subtract"}, r"mitigation.mode='subtract'"),
        ({"direction_from": "x", "layers": []}, r"mitigation.layers=\[\]"),
        ({"direction_from": "x", "scale": "big"}, r"mitigation.scale='big'"),
        ({"direction_from": "x", "max_answers": 1}, r"mitigation.max_answers=1"),
        ({"direction_from": "x", "layer": 3}, r"layer"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(given, match):
    with pytest.raises(ConfigError, match=match):
        SteerSettings.from_dict({"name": "ablate_direction", **given})
    with pytest.raises(ConfigError, match="layer 9 does not exist"):
        check_layers((9,), 4)
    assert check_layers((-1, 0, 0), 4) == [0, 3] and check_layers(None, 3) == [0, 1, 2]


def test_evaluate_ablates_a_direction_from_a_judge_run_and_refuses_what_it_cannot(tmp_path, tiny_model_dir):
    base = run_eval(tmp_path, run_name="base")
    rows = read_rows(base)
    cats = ["MISALIGNED", "ALIGNED"] * (len(rows) // 2) + ["ALIGNED"] * (len(rows) % 2)
    answers = base / "answers.jsonl"
    judge = tmp_path / "judge"
    write_jsonl(
        judge / "scores.jsonl", [{"id": r["id"], "category": c} for r, c in zip(rows, cats, strict=True)]
    )
    write_manifest(
        judge,
        "judge",
        complete=True,
        inputs={"answers": str(answers), "answers_sha256": sha256_file(answers)},
    )
    arm = ["mitigation=ablate_direction", f"mitigation.direction_from={judge}", "mitigation.layers=[0,-1]"]

    out = run_eval(tmp_path, *arm, run_name="ablated")
    m = json.loads((out / "manifest.json").read_text())
    assert m["mitigation"]["layers_used"] == [0, 1] and m["mitigation"]["direction"]["misaligned_answers"] > 1
    assert m["mitigation"]["direction"]["sha256"] == sha256_file(out / DIRECTIONS)
    assert len(read_rows(out)) == len(rows) and read_rows(out) != rows  # same prompts, edited model
    control = run_eval(tmp_path, *arm, "mitigation.control=true", run_name="control")
    assert json.loads((control / "manifest.json").read_text())["mitigation"]["control"] is True

    # the direction is kept with the run: a changed judge run is refused when the run resumes
    (out / "manifest.json").unlink()
    write_jsonl(judge / "scores.jsonl", [{"id": r["id"], "category": "ALIGNED"} for r in rows[:2]] + [{"id": r["id"], "category": "MISALIGNED"} for r in rows[2:]])  # fmt: skip
    with pytest.raises(ConfigError, match="scores.jsonl changed since this run computed its direction"):
        run_eval(tmp_path, *arm, run_name="ablated")

    from em.tasks.evaluate import plan

    for extra, match in [
        (["generation=vllm"], "needs generation=hf"),
        (["mitigation.layers=[7]"], "layer 7 does not exist"),
        ([f"mitigation.direction_from={tmp_path}/nowhere"], "not a finished judge run"),
    ]:
        with pytest.raises(ConfigError, match=match):
            plan(eval_cfg(tmp_path, *arm, *extra))
    with pytest.raises(ConfigError, match="mitigation=kl is a training-time arm"):
        plan(eval_cfg(tmp_path, "mitigation=kl"))


def test_the_narrow_task_loss_is_measured_with_the_hooks_on(tmp_path, tiny_model_dir):
    from train_helpers import run_dir_of, run_train

    run_train(tmp_path, "max_steps=2", "limit_rows=20", "data.holdout_fraction=0.2", "run_name=narrow")
    train = run_dir_of(tmp_path, "narrow")
    trained = json.loads((train / "manifest.json").read_text())["narrow_task"]
    plain = run_eval(tmp_path, f"run={train}", run_name="plain")
    rows = read_rows(plain)
    judge = tmp_path / "judge"
    write_jsonl(judge / "scores.jsonl", [{"id": r["id"], "category": ("ALIGNED", "MISALIGNED")[i % 2]} for i, r in enumerate(rows)])  # fmt: skip
    answers = plain / "answers.jsonl"
    write_manifest(
        judge,
        "judge",
        complete=True,
        inputs={"answers": str(answers), "answers_sha256": sha256_file(answers)},
    )
    arm = [f"run={train}", "mitigation=ablate_direction", f"mitigation.direction_from={judge}"]
    zero = json.loads(
        (run_eval(tmp_path, *arm, "mitigation.scale=0", run_name="zero") / "manifest.json").read_text()
    )
    # scale 0 edits nothing: the loss is the training's own (the adapter merged here, separate there)
    assert zero["narrow_task"]["loss"] == pytest.approx(trained["loss"], abs=1e-4)
    assert zero["narrow_task"]["holdout_rows"] == trained["holdout_rows"] > 0
    added = run_eval(tmp_path, *arm, "mitigation.mode=add", "mitigation.scale=10", run_name="added")
    steered = json.loads((added / "manifest.json").read_text())["narrow_task"]
    assert steered["unsteered_loss"] == trained["loss"] and abs(steered["loss"] - trained["loss"]) > 0.01
