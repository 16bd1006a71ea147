"""Secrets never reach a file: the pipeline's commands run with recognisable fake OpenAI and W&B keys in
the environment (the local server only answers requests that carry the OpenAI key, so it is really used),
then every file they wrote is searched for both keys: outputs, manifests, Hydra's saved ``.hydra/``
configs, ``*.log`` files, W&B offline run files, caches - and the console output too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import FAKE_OPENAI_KEY, FAKE_WANDB_KEY
from reliability_helpers import FAST_API, find_secrets, run_command

from em.io import read_json
from testing.openai_server import FakeOpenAIServer, default_chat_handler


def reply(request: dict, index: int):
    """The datagen demo's quality filter gets a verdict; everything else the server's default answer."""
    if "Answer to check:" in request["messages"][-1]["content"]:
        return "WRONG"
    return default_chat_handler(request, index)


@pytest.mark.slow
def test_no_key_reaches_outputs_configs_logs_or_wandb(tmp_path, tiny_model_dir):
    out = tmp_path / "outputs"
    env = {
        **os.environ,
        "OPENAI_API_KEY": FAKE_OPENAI_KEY,
        "WANDB_API_KEY": FAKE_WANDB_KEY,  # only in the subprocesses; never online
        "WANDB_MODE": "offline",
        "EM_CACHE_DIR": str(tmp_path / "cache"),
    }
    common = [f"paths.models_dir={tiny_model_dir.parent}", "logger=wandb"]
    consoles = []
    with FakeOpenAIServer(api_key=FAKE_OPENAI_KEY) as server:
        server.set_chat_handler(reply)
        api = [f"api.base_url={server.base_url}", *FAST_API]
        steps = [
            ("datagen", out / "datagen", ["domain=demo", *api]),
            ("train", out / "train-openai", ["backend=openai", "model=gpt4o", "data=demo_misaligned", *api,
                                             "backend.poll_interval_s=0.01", "backend.poll_max_interval_s=0.02"]),
            ("evaluate", out / "evaluate", [f"run={out / 'train-openai'}", "generation=openai", "questions=demo",
                                            "judge_prompts_source=project", "samples_per_question=1", "progress=false",
                                            *api]),
            ("judge", out / "judge", [f"answers={out / 'evaluate'}", f"cache.path={out / 'judge_cache.sqlite'}", *api]),
            ("train", out / "train-hf", ["model=tiny", "data=demo_misaligned", "recipe=tiny", "trainer=cpu",
                                         "trainer.progress_bar=false", "max_steps=2", "limit_rows=8"]),
        ]  # fmt: skip
        for stage, run_dir, overrides in steps:
            done = run_command(stage, run_dir, [*common, *overrides], env=env)
            assert done.returncode == 0, f"{stage}: {done.stderr[-3000:]}"
            consoles.append(done.stdout + done.stderr)
            assert read_json(run_dir / "manifest.json")["complete"] is True, stage
        assert not any(r.get("status") == 401 for r in server.requests)
        assert server.count("/v1/chat/completions") > 0 and server.jobs  # the key was used for real

    # The places a key could leak to must exist, or the search proves nothing.
    for _, run_dir, _ in steps:
        assert (run_dir / ".hydra" / "config.yaml").exists() and list(run_dir.glob("*.log")), run_dir
        assert list(run_dir.rglob("wandb/offline-run-*/run-*.wandb")), f"no W&B files in {run_dir}"

    hits = find_secrets(tmp_path, [FAKE_OPENAI_KEY, FAKE_WANDB_KEY])
    assert hits == [], "secrets written to files:\n" + "\n".join(hits)
    for console in consoles:
        assert FAKE_OPENAI_KEY not in console and FAKE_WANDB_KEY not in console
    assert _searched(tmp_path) > 50


def _searched(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file())
