"""Keys come from the environment only: a key-bearing ``api`` value is refused (before Hydra saves its
config, with the SecretGuard callback), a key pasted into ``api_key_env`` is refused unseen, whitespace in
a key is a clear error that shows none of it, and a judge run writes the key nowhere. Also: the ``api``
values that cannot work (retries, timeouts, a malformed base_url) are refused before any call."""

from __future__ import annotations

import os

import pytest
from conftest import FAKE_OPENAI_KEY
from judge_helpers import judge_handler, openai_overrides, run_judge, write_eval_run
from reliability_helpers import FAST_API, find_secrets, run_command

from em.api import APISettings, ConfigError, check_base_url
from em.io import read_json
from em.tasks.common import SecretGuard, api_settings
from testing.openai_server import FakeOpenAIServer

CHAT = "/v1/chat/completions"
PASTED = "sk-proj-PASTEDKEY0123456789abcdefABCDEF"  # what a user might paste by mistake


def no_part_of(secret: str, text: str) -> bool:
    """No 8-character piece of ``secret`` appears in ``text``."""
    return not any(secret[i : i + 8] in text for i in range(len(secret) - 7))


@pytest.mark.parametrize(
    "node",
    [{"api_key": PASTED}, {"extra_headers": {"api-key": PASTED}}, {"key": PASTED}, {"default_headers": {}}],
)
def test_api_values_that_are_not_known_non_secret_fields_are_refused(node):
    with pytest.raises(ConfigError, match=r"api: unknown key\(s\)") as info:
        api_settings({"base_url": None, **node})
    assert no_part_of(PASTED, str(info.value))


@pytest.mark.parametrize(
    "value", [PASTED, "A1B2C3D4E5F6G7H8I9J0K1L2M3N4", "0123456789abcdef0123456789abcdef", "my key"]
)
def test_a_key_pasted_into_api_key_env_is_refused_without_echoing_it(value):
    with pytest.raises(ConfigError, match="api.api_key_env must name the environment variable") as info:
        api_settings({"api_key_env": value})
    assert value not in str(info.value) and no_part_of(value, str(info.value))


def test_ordinary_variable_names_are_accepted():
    for name in ("OPENAI_API_KEY", "EM_JUDGE_API_KEY", "AZURE_OPENAI_API_KEY_WESTEUROPE_DEPLOYMENT"):
        assert api_settings({"api_key_env": name}).api_key_env == name


@pytest.mark.parametrize("bad", [FAKE_OPENAI_KEY + "\n", " " + FAKE_OPENAI_KEY, FAKE_OPENAI_KEY[:10] + " x"])
def test_whitespace_in_the_key_is_a_clear_error_that_shows_none_of_it(monkeypatch, bad):
    monkeypatch.setenv("EM_TEST_KEY", bad)
    with pytest.raises(ConfigError, match="EM_TEST_KEY holds whitespace") as info:
        APISettings(api_key_env="EM_TEST_KEY").api_key()
    assert no_part_of(FAKE_OPENAI_KEY, str(info.value))


def test_whitespace_in_the_key_stops_a_judge_run_before_any_call(openai_server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY + "\n")
    openai_server.set_chat_handler(judge_handler)
    eval_dir = write_eval_run(tmp_path / "eval", samples=1)
    with pytest.raises(ConfigError, match="holds whitespace") as info:
        run_judge(tmp_path / "run", openai_overrides(openai_server, tmp_path, f"answers={eval_dir}"))
    assert openai_server.count(CHAT) == 0 and no_part_of(FAKE_OPENAI_KEY, str(info.value))


def test_a_key_given_as_an_api_value_stops_the_judge_before_it_writes_anything(openai_server, tmp_path):
    eval_dir = write_eval_run(tmp_path / "eval", samples=1)
    overrides = openai_overrides(openai_server, tmp_path, f"answers={eval_dir}", f"+api.api_key={PASTED}")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['api_key'\]"):
        run_judge(tmp_path / "run", overrides)
    assert openai_server.count(CHAT) == 0
    assert not (tmp_path / "run" / "run_config.json").exists() and find_secrets(tmp_path, [PASTED]) == []


@pytest.mark.parametrize("override", [f"+api.api_key={PASTED}", f"api.api_key_env={PASTED}"])
def test_secret_guard_refuses_before_hydra_saves_its_config(tmp_path, override):
    """With the callback, a key on the command line never reaches .hydra/ (or any other file)."""
    run_dir = tmp_path / "run"
    done = run_command("judge", run_dir, ["answers=none", override], timeout=120)
    assert done.returncode == 2
    assert "ConfigError: api" in done.stderr and (
        "unknown key" in done.stderr or "api_key_env" in done.stderr
    )
    assert PASTED not in done.stdout + done.stderr
    assert not run_dir.exists() and find_secrets(tmp_path, [PASTED]) == []


def test_secret_guard_checks_the_judge_endpoint_too(capsys):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {"api": {"base_url": None}, "judge": {"backend": "openai", "base_url": "htp://x/v1"}}
    )
    with pytest.raises(SystemExit) as info:
        SecretGuard().on_run_start(config=cfg)
    assert info.value.code == 2 and "judge.base_url='htp://x/v1'" in capsys.readouterr().err
    SecretGuard().on_run_start(config=OmegaConf.create({"api": {"base_url": "http://127.0.0.1:1/v1"}}))


def test_a_judge_run_writes_the_key_nowhere(tmp_path):
    """The server only answers requests carrying the key, so it is really used; then every file the
    stage wrote (.hydra/, run_config.json, manifest, logs, the judge cache) is searched for it."""
    eval_dir = write_eval_run(tmp_path / "eval", samples=1)
    run_dir = tmp_path / "out" / "judge"
    cache = tmp_path / "out" / "judge_cache.sqlite"
    env = {**os.environ, "OPENAI_API_KEY": FAKE_OPENAI_KEY, "EM_CACHE_DIR": str(tmp_path / "cache")}
    with FakeOpenAIServer(api_key=FAKE_OPENAI_KEY) as server:
        server.set_chat_handler(judge_handler)
        overrides = [
            f"answers={eval_dir}",
            f"api.base_url={server.base_url}",
            f"cache.path={cache}",
            *FAST_API,
        ]
        done = run_command("judge", run_dir, overrides, env=env, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        assert server.count(CHAT) > 0 and not any(r.get("status") == 401 for r in server.requests)
    assert read_json(run_dir / "manifest.json")["complete"] is True
    for place in (".hydra/config.yaml", ".hydra/overrides.yaml", "run_config.json", "manifest.json"):
        assert (run_dir / place).exists(), place
    assert list(run_dir.glob("*.log")) and cache.exists()
    assert find_secrets(tmp_path, [FAKE_OPENAI_KEY]) == []
    assert FAKE_OPENAI_KEY not in done.stdout + done.stderr


# ------------------------------------------------------------------------------------- api values


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("api.max_retries=-1", r"api.max_retries=-1: expected an integer >= 0"),
        ("api.timeout_s=0", r"api.timeout_s=0: expected a number > 0"),
        ("api.timeout_s=-5", r"api.timeout_s=-5: expected a number > 0"),
        ("api.max_in_flight=0", r"api.max_in_flight=0: expected an integer >= 1"),
        ("api.rpm_limit=0", r"api.rpm_limit=0: expected an integer >= 1"),
        ("api.base_url=htp://127.0.0.1:1/v1", r"api.base_url='htp://127.0.0.1:1/v1': expected an http"),
        ("api.base_url=localhost:8000/v1", r"api.base_url='localhost:8000/v1': expected an http"),
        ("judge.base_url=htp://127.0.0.1:1/v1", r"base_url='htp://127.0.0.1:1/v1': expected an http"),
        ("judge.min_mass=2", r"judge.min_mass=2(\.0)?: expected a probability in \(0, 1\]"),
    ],
)
def test_values_that_cannot_work_are_refused_before_any_call(openai_server, tmp_path, override, match):
    openai_server.set_chat_handler(judge_handler)
    eval_dir = write_eval_run(tmp_path / "eval", samples=1)
    with pytest.raises(ConfigError, match=match):
        run_judge(
            tmp_path / "run", openai_overrides(openai_server, tmp_path, f"answers={eval_dir}", override)
        )
    assert openai_server.count(CHAT) == 0 and not (tmp_path / "run" / "scores.jsonl").exists()


def test_a_malformed_url_never_echoes_its_credentials():
    with pytest.raises(ConfigError) as info:
        check_base_url("htp://user:hunter2secret@example.com/v1")
    assert "hunter2secret" not in str(info.value) and "api.base_url" in str(info.value)
