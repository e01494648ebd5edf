from pathlib import Path

import pytest

from agency.errors import SettingsError
from agency.settings import load_settings


def test_toml_then_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('log_level = "DEBUG"\n[engine]\nmax_revisions = 3\nproject_concurrency = 2\n[llm.tiers.fast]\nmodel = "local-small"\n'
                   '[llm.tiers.strong]\nmodel = "gpt-4o"\n[llm.prices.local-small]\ninput = 0\noutput = 0\n[llm.prices.gpt-4o]\ninput = 2.5\noutput = 10\n')
    monkeypatch.setenv("ATEAMS_CONFIG", str(cfg))
    monkeypatch.setenv("ATEAMS_ENGINE__MAX_REVISIONS", "5")
    s = load_settings()
    assert s.engine.max_revisions == 5  # environment wins
    assert s.engine.project_concurrency == 2  # from the file
    assert s.llm.tiers["fast"].model == "local-small"
    assert s.log_level == "DEBUG"


def test_secrets_only_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('openai_api_key = "sk-in-the-file"\n')
    monkeypatch.setenv("ATEAMS_CONFIG", str(cfg))
    with pytest.raises(SettingsError, match="read only from the environment") as e:
        load_settings()
    assert "sk-in-the-file" not in e.value.user_message
    cfg.write_text("")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-123")
    s = load_settings()
    assert s.openai_api_key is not None and s.openai_api_key.get_secret_value() == "sk-from-env-123"
    assert "sk-from-env-123" not in repr(s)
    assert s.has_model_endpoint


def test_invalid_value_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATEAMS_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("ATEAMS_ENGINE__PROJECT_CONCURRENCY", "0")
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert "engine.project_concurrency" in e.value.user_message
    assert "ATEAMS_ENGINE__PROJECT_CONCURRENCY" in e.value.user_message


def test_unknown_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text("[engine]\nmax_revisons = 3\n")
    monkeypatch.setenv("ATEAMS_CONFIG", str(cfg))
    with pytest.raises(SettingsError, match="engine.max_revisons"):
        load_settings()


def test_bad_toml_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text("[engine\n")
    monkeypatch.setenv("ATEAMS_CONFIG", str(cfg))
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings()


def test_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).resolve().parents[2] / "config.example.toml"
    monkeypatch.setenv("ATEAMS_CONFIG", str(example))
    s = load_settings()
    assert s.engine.default_oversight == "plan"


# -- the settings as a whole: every cross-reference is checked at load, each problem names its key and variable --
def _problems(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], toml: str = "") -> str:
    cfg = tmp_path / "config.toml"
    cfg.write_text(toml)
    monkeypatch.setenv("ATEAMS_CONFIG", str(cfg))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as e:
        load_settings(data_dir=tmp_path / "data")
    return e.value.user_message


def test_an_unknown_default_tier_stops_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    msg = _problems(monkeypatch, tmp_path, {"ATEAMS_LLM__DEFAULT_TIER": "huge"})
    assert ('llm.default_tier = "huge" is not a configured tier (fast, strong); '
            "set [llm] default_tier in config.toml or ATEAMS_LLM__DEFAULT_TIER") in msg


@pytest.mark.parametrize(("env", "toml", "expected"), [
    ({"ATEAMS_ROUTING__THRESHOLDS": '{"strong": 3.5, "huge": 4}'}, "",
     ['routing.thresholds = {"huge": 4.0} names "huge", which is not a configured tier (fast, strong)', "ATEAMS_ROUTING__THRESHOLDS"]),
    ({"ATEAMS_ROUTING__THRESHOLDS": '{"strong": 7}'}, "", ["is outside 1..5", "[routing] thresholds", "ATEAMS_ROUTING__THRESHOLDS"]),
    ({"ATEAMS_ROUTING__WEIGHTS": '{"reasoning": 1, "speed": 1}'}, "",
     ['names "speed", which is not a routing criterion (reasoning, domain, language, quality)', "ATEAMS_ROUTING__WEIGHTS"]),
    ({"ATEAMS_ROUTING__WEIGHTS": '{"reasoning": -1, "domain": 1}'}, "", ["is negative", "ATEAMS_ROUTING__WEIGHTS"]),
    ({"ATEAMS_ROUTING__WEIGHTS": '{"reasoning": 0, "domain": 0}'}, "", ["has no positive weight", "ATEAMS_ROUTING__WEIGHTS"]),
    ({"ATEAMS_TOOLS__ENABLED": '["retrieve", "pyhton"]'}, "",
     ['tools.enabled = ["retrieve", "pyhton"] names "pyhton", which is not a tool (retrieve, python, web_search)',
      "set [tools] enabled in config.toml or ATEAMS_TOOLS__ENABLED"]),
    ({"ATEAMS_TOOLS__ENABLED": '["retrieve", "web_search"]'}, "", ['tools.web_search = false but tools.enabled lists "web_search"',
                                                                  "ATEAMS_TOOLS__WEB_SEARCH"]),
    ({"ATEAMS_TOOLS__WEB_SEARCH": "true"}, "", ['lacks "web_search" while tools.web_search = true', "ATEAMS_TOOLS__ENABLED"]),
    ({}, '[llm.tiers.fast]\nmodel = "local-small"\n[llm.tiers.strong]\nmodel = "gpt-4o"\n',
     ['llm.tiers.fast.model = "local-small" has no price', "[llm.prices.local-small]", "ATEAMS_LLM__PRICES"]),
    ({"ATEAMS_LLM__TIERS": "{}"}, "", ["llm.tiers = {} has no tier", "ATEAMS_LLM__TIERS"]),
    ({"ATEAMS_LLM__TIERS__FAST__MODEL": " "}, "", ['llm.tiers.fast.model = " " is empty', "ATEAMS_LLM__TIERS__FAST__MODEL"]),
    ({"ATEAMS_LLM__BASE_URL": "localhost:8080/v1"}, "", ['llm.base_url = "localhost:8080/v1" is not an http(s) URL', "ATEAMS_LLM__BASE_URL"]),
    ({"ATEAMS_MEMORY__SERVER_URL": "ftp://chroma:8000"}, "", ["memory.server_url", "ATEAMS_MEMORY__SERVER_URL"]),
    ({"ATEAMS_MEMORY__EMBEDDING": "openai"}, "", ['memory.embedding = "openai" needs OPENAI_API_KEY', "ATEAMS_MEMORY__EMBEDDING"]),
    ({"ATEAMS_DISCORD__HQ_CHANNEL": ""}, "", ['discord.hq_channel = "" is empty', "ATEAMS_DISCORD__HQ_CHANNEL"]),
    ({"ATEAMS_DATABASE_URL": "sqlite:///x.db"}, "", ['database_url = "sqlite:///x.db" needs an async driver', "ATEAMS_DATABASE_URL"]),
    ({"ATEAMS_DATABASE_URL": "not a url"}, "", ["is not a SQLAlchemy URL", "ATEAMS_DATABASE_URL"]),
    ({"ATEAMS_DATABASE_URL": "nosuchdb+aiofoo://host/db"}, "", ["dialect or driver SQLAlchemy does not know", "ATEAMS_DATABASE_URL"]),
])
def test_each_bad_cross_reference_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], toml: str,
                                            expected: list[str]) -> None:
    msg = _problems(monkeypatch, tmp_path, env, toml)
    assert msg.startswith("Invalid settings:")
    for part in expected:
        assert part in msg, msg


def test_a_database_password_is_not_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    msg = _problems(monkeypatch, tmp_path, {"ATEAMS_DATABASE_URL": "postgresql://app:hunter2-db@db/app"})
    assert "hunter2-db" not in msg and "ATEAMS_DATABASE_URL" in msg


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATEAMS_CONFIG", str(tmp_path / "absent.toml"))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SettingsError, match="data_dir = .* is a file, not a folder; set data_dir in config.toml or ATEAMS_DATA_DIR"):
        load_settings(data_dir=tmp_path / "afile")


def test_a_tier_table_replaces_the_default_tiers_and_that_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defining [llm.tiers.fast] alone drops the default "strong" tier: the threshold that names it, and the model
    that has no price, were accepted silently and left routing and budgets quietly broken."""
    msg = _problems(monkeypatch, tmp_path, {}, '[llm.tiers.fast]\nmodel = "local-small"\n')
    lines = msg.splitlines()[1:]
    assert len(lines) == 2, msg
    assert 'llm.tiers.fast.model = "local-small" has no price' in lines[0]
    assert 'routing.thresholds = {"strong": 3.5} names "strong", which is not a configured tier (fast)' in lines[1]


def test_every_problem_is_reported_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    msg = _problems(monkeypatch, tmp_path, {"ATEAMS_LLM__DEFAULT_TIER": "huge", "ATEAMS_TOOLS__ENABLED": '["nope"]',
                                            "ATEAMS_ROUTING__THRESHOLDS": '{"mid": 3}'})
    for env in ("ATEAMS_LLM__DEFAULT_TIER", "ATEAMS_TOOLS__ENABLED", "ATEAMS_ROUTING__THRESHOLDS"):
        assert env in msg
    assert len(msg.splitlines()) == 4


def test_a_value_out_of_range_names_the_key_value_and_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    msg = _problems(monkeypatch, tmp_path, {"ATEAMS_ENGINE__BUDGET_WARN_RATIO": "1.5", "ATEAMS_LLM__CONCURRENCY": "0"})
    assert '- engine.budget_warn_ratio = "1.5": Input should be less than 1; set [engine] budget_warn_ratio in config.toml or ' \
           "ATEAMS_ENGINE__BUDGET_WARN_RATIO" in msg
    assert "llm.concurrency" in msg and "ATEAMS_LLM__CONCURRENCY" in msg


def test_the_defaults_are_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATEAMS_CONFIG", str(tmp_path / "absent.toml"))
    s = load_settings(data_dir=tmp_path / "data", database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    assert s.llm.default_tier in s.llm.tiers and set(s.routing.thresholds) <= set(s.llm.tiers)
    assert all(t.model in s.llm.prices for t in s.llm.tiers.values())


def test_the_cli_stops_with_the_message_and_no_traceback(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "ATEAMS_CONFIG": str(tmp_path / "absent.toml"), "ATEAMS_DATA_DIR": str(tmp_path / "data"),
           "ATEAMS_LLM__DEFAULT_TIER": "huge", "COLUMNS": "400"}
    env.pop("OPENAI_API_KEY", None)
    r = subprocess.run([sys.executable, "-m", "agency", "run", "--dry-run", "--auto-approve", "Write a haiku about rain"],
                       env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "Traceback" not in out
    assert 'llm.default_tier = "huge" is not a configured tier (fast, strong)' in out and "ATEAMS_LLM__DEFAULT_TIER" in out
    assert not (tmp_path / "data").exists()  # nothing was started
