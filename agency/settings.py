"""Settings: ``config.toml`` plus environment variables (the environment wins).

Secrets (``DISCORD_TOKEN``, ``OPENAI_API_KEY``) are read from the environment
only; a secret written in the TOML file is refused at start-up. Every key is
documented in ``config.example.toml``. Nested keys map to environment variables
as ``ATEAMS_<SECTION>__<KEY>``, e.g. ``ATEAMS_ENGINE__MAX_REVISIONS=3``.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from agency.errors import SettingsError

SECRET_KEYS = ("discord_token", "openai_api_key")
Oversight = Literal["autonomous", "plan", "milestones", "every_task"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tier(_Section):
    model: str
    base_url: str | None = None  # None: the [llm] base_url


class Price(_Section):
    input: float = Field(0.0, ge=0, description="USD per million prompt tokens")
    output: float = Field(0.0, ge=0, description="USD per million completion tokens")


class LLMSettings(_Section):
    base_url: str | None = None
    mode: Literal["auto", "json_schema", "json_object", "tool"] = "auto"
    timeout_seconds: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0, le=20)
    retry_max_wait_seconds: float = Field(30.0, gt=0)
    concurrency: int = Field(8, ge=1, le=256)
    default_tier: str = "fast"
    tiers: dict[str, Tier] = Field(
        default_factory=lambda: {"fast": Tier(model="gpt-4o-mini"), "strong": Tier(model="gpt-4o")}
    )
    prices: dict[str, Price] = Field(
        default_factory=lambda: {
            "gpt-4o-mini": Price(input=0.15, output=0.60),
            "gpt-4o": Price(input=2.50, output=10.00),
        }
    )
    circuit_failures: int = Field(5, ge=1)
    circuit_cooldown_seconds: float = Field(30.0, gt=0)
    # the OpenAI SDK's HTTP transport: aiohttp (the SDK's advice for concurrency; about 40% less CPU per
    # call in bench/) or httpx (the SDK's default)
    http_transport: Literal["aiohttp", "httpx"] = "aiohttp"


class RoutingSettings(_Section):
    weights: dict[str, float] = Field(
        default_factory=lambda: {"reasoning": 0.35, "domain": 0.25, "language": 0.15, "quality": 0.25}
    )
    # a task whose weighted score (1..5) is at least the threshold gets that tier
    thresholds: dict[str, float] = Field(default_factory=lambda: {"strong": 3.5})
    escalate_after_revisions: int = Field(2, ge=1)


class EngineSettings(_Section):
    project_concurrency: int = Field(4, ge=1, le=256, description="tasks in flight per project")
    max_revisions: int = Field(2, ge=0, le=10)
    plan_rounds: int = Field(3, ge=1, le=10)
    turn_steps: int = Field(4, ge=1, le=20, description="turns a specialist gets per task attempt")
    ask_hops: int = Field(2, ge=0, le=10)
    handoff_chain: int = Field(3, ge=1, le=20)
    task_deadline_seconds: float = Field(900.0, gt=0)
    default_oversight: Oversight = "plan"
    budget_usd: float | None = Field(None, gt=0)
    budget_tokens: int | None = Field(None, gt=0)
    budget_warn_ratio: float = Field(0.8, gt=0, lt=1)


class DiscordSettings(_Section):
    dev_guild_id: int | None = None
    director_role: str = "Director"
    hq_channel: str = "hq"


class MemorySettings(_Section):
    enabled: bool = True
    server_url: str | None = None
    embedding: Literal["local", "openai"] = "local"
    openai_embedding_model: str = "text-embedding-3-small"
    token_budget: int = Field(600, ge=0)
    top_k: int = Field(4, ge=0, le=50)


class LearningSettings(_Section):
    enabled: bool = True
    auto_apply: bool = False


class MetricsSettings(_Section):
    port: int = Field(0, ge=0, le=65535, description="0 = off")
    host: str = "127.0.0.1"


class ToolSettings(_Section):
    enabled: list[str] = Field(default_factory=lambda: ["retrieve", "python"])
    web_search: bool = False
    python_cpu_seconds: int = Field(5, ge=1)
    python_memory_mb: int = Field(256, ge=32)
    python_wall_seconds: float = Field(10.0, gt=0)
    python_output_chars: int = Field(8000, ge=100)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ATEAMS_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Path(".ateams")
    database_url: str | None = None
    db_busy_timeout_seconds: float = Field(10.0, gt=0)
    log_level: str = "INFO"
    dry_run: bool = False

    llm: LLMSettings = Field(default_factory=LLMSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    discord: DiscordSettings = Field(default_factory=DiscordSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    learning: LearningSettings = Field(default_factory=LearningSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tools: ToolSettings = Field(default_factory=ToolSettings)

    # secrets: environment only (see load_settings)
    discord_token: SecretStr | None = Field(None, validation_alias="DISCORD_TOKEN")
    openai_api_key: SecretStr | None = Field(None, validation_alias="OPENAI_API_KEY")

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = os.environ.get("ATEAMS_CONFIG", "config.toml")
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_file))

    # derived values -----------------------------------------------------
    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'ateams.db').as_posix()}"

    @property
    def has_model_endpoint(self) -> bool:
        """A real model can be called: a key, or a self-hosted base_url."""
        return bool(self.openai_api_key) or bool(self.llm.base_url)

    def price(self, model: str) -> Price:
        return self.llm.prices.get(model, Price())


def _check_toml_for_secrets(path: Path) -> None:
    if not path.is_file():
        return
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"{path} is not valid TOML: {e}") from e
    for key in data:
        if key.lower() in SECRET_KEYS or key.upper() in {"DISCORD_TOKEN", "OPENAI_API_KEY"}:
            raise SettingsError(
                f"{path}: `{key}` is a secret and is read only from the environment; "
                f"remove it from the file and set {key.upper()} in the environment."
            )


def _describe(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        env = "ATEAMS_" + "__".join(str(p).upper() for p in err["loc"])
        lines.append(f"- {loc}: {err['msg']} (config.toml key `{loc}`, or env {env})")
    return "Invalid settings:\n" + "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Load and validate the settings; a bad value raises SettingsError naming the key."""
    _check_toml_for_secrets(Path(os.environ.get("ATEAMS_CONFIG", "config.toml")))
    try:
        return Settings(**overrides)
    except ValidationError as e:
        raise SettingsError(_describe(e)) from None
