from pathlib import Path

import pytest

from agency.errors import SettingsError
from agency.settings import load_settings


def test_toml_then_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('log_level = "DEBUG"\n[engine]\nmax_revisions = 3\nproject_concurrency = 2\n[llm.tiers.fast]\nmodel = "local-small"\n')
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
