"""Settings: ``config.toml`` plus environment variables (the environment wins).

Secrets (``DISCORD_TOKEN``, ``OPENAI_API_KEY``) are read from the environment
only; a secret written in the TOML file is refused at start-up. Every key is
documented in ``config.example.toml``. Nested keys map to environment variables
as ``ATEAMS_<SECTION>__<KEY>``, e.g. ``ATEAMS_ENGINE__MAX_REVISIONS=3``.

The settings are validated as a whole when they are loaded: each value on its
own (types, ranges) and then every cross-reference (:func:`_cross_check`: the
default tier, routing thresholds and weights, a price for each tier's model,
tool names, URLs, the database URL and its driver, the data folder). Every
problem is reported at once, each naming its key, where to set it in
``config.toml`` and its environment variable; nothing invalid is left to fail
later, in the middle of a project.
"""
from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
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
    # a bound on every reply, by purpose ("default" for the rest): a model that runs on never ties up a local
    # server or a paid API for minutes; generous enough for a full plan, a task's output or the deliverable
    max_tokens: dict[str, Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: {
        "default": 2000, "plan": 4000, "work": 4000, "deliver": 6000, "review": 1200, "approaches": 2000})
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
    # what a plan may hold: a bigger plan goes back to the PM with the problem (and the limits are in its schema)
    plan_max_tasks: int = Field(16, ge=1, le=100)
    plan_max_streams: int = Field(5, ge=1, le=12)
    plan_max_specialists: int = Field(8, ge=1, le=30)
    # a model's submission shorter than this (or a plan to work, a restatement of the task, or work that
    # touches none of its criteria) goes back to the specialist without a review call (agency.checks)
    min_output_chars: int = Field(200, ge=0, le=20000)
    task_deadline_seconds: float = Field(900.0, gt=0)
    default_oversight: Oversight = "plan"
    budget_usd: float | None = Field(None, gt=0)
    budget_tokens: int | None = Field(None, gt=0)
    budget_warn_ratio: float = Field(0.8, gt=0, lt=1)
    # several processes on one database: a project is run by the process holding its lease
    lease_seconds: float = Field(30.0, ge=2, description="a project's lease lasts this long unless renewed")
    poll_seconds: float = Field(2.0, gt=0, le=60, description="how often a process looks for work and for decisions made elsewhere")


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
    # collection-name prefix on a shared Chroma server; empty = this deployment's id (made at the first start)
    namespace: str = Field("", max_length=24)


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

    @model_validator(mode="after")
    def _as_a_whole(self) -> "Settings":
        problems = _cross_check(self)
        if problems:
            raise PydanticCustomError("settings_whole", "{problems}", {"problems": "\n".join(problems)})
        return self

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


# -- validation as a whole -----------------------------------------------------------

def _toml_key(part: str) -> str:
    return part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)


def _where(loc: tuple[str, ...]) -> str:
    """Where a key is set: ``[llm] default_tier in config.toml or ATEAMS_LLM__DEFAULT_TIER``."""
    env = "ATEAMS_" + "__".join(p.upper() for p in loc)
    if len(loc) == 1:
        return f"{loc[0]} in config.toml or {env}"
    return f"[{'.'.join(_toml_key(p) for p in loc[:-1])}] {_toml_key(loc[-1])} in config.toml or {env}"


def _show(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _problem(loc: tuple[str, ...], value: Any, problem: str) -> str:
    """``llm.default_tier = "huge" is not a configured tier (fast, strong); set [llm] default_tier in config.toml or
    ATEAMS_LLM__DEFAULT_TIER``."""
    return f"{'.'.join(loc)} = {_show(value)} {problem}; set {_where(loc)}"


def _url_problem(url: str, *, bare_host: bool = False) -> str | None:
    parsed = urlparse(f"http://{url}" if bare_host and "://" not in url else url)  # memory: host:port means http
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return "is not an http(s) URL (e.g. http://127.0.0.1:8080/v1)"
    try:
        _ = parsed.port  # reading it checks it
    except ValueError:
        return "has an invalid port"
    return None


def _database_problem(url: str) -> tuple[str, str] | None:
    """Whether SQLAlchemy can build an async engine for ``url`` (nothing is connected): (shown url, problem)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, InvalidRequestError, NoSuchModuleError
    from sqlalchemy.ext.asyncio import create_async_engine

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not shown)", "is not a SQLAlchemy URL (e.g. sqlite+aiosqlite:///.ateams/ateams.db)"
    try:
        create_async_engine(url)
    except InvalidRequestError:
        return shown, ("needs an async driver, e.g. sqlite+aiosqlite:///path/ateams.db or "
                       "postgresql+asyncpg://user@host/db")
    except NoSuchModuleError:
        return shown, "names a database dialect or driver SQLAlchemy does not know"
    except ImportError as e:
        return shown, f"needs a driver that is not installed ({e.name or e}): pip install it"
    except ArgumentError as e:
        return shown, f"is not usable: {e}"
    return None


def _cross_check(s: Settings) -> list[str]:
    """Every problem a value has with the rest of the settings (each value on its own is valid by now)."""
    out: list[str] = []
    tiers = s.llm.tiers
    names = ", ".join(tiers) or "none"
    if not tiers:
        out.append(_problem(("llm", "tiers"), {}, 'has no tier; configure one, e.g. [llm.tiers.fast] model = "gpt-4o-mini"'))
    for name, tier in tiers.items():
        if not tier.model.strip():
            out.append(_problem(("llm", "tiers", name, "model"), tier.model, "is empty: name the model this tier calls"))
        elif tier.model not in s.llm.prices:
            out.append(
                f"llm.tiers.{_toml_key(name)}.model = {_show(tier.model)} has no price (costs, budgets and estimates "
                f"need one; 0 for a free, self-hosted model); add [llm.prices.{_toml_key(tier.model)}] input = ... "
                f"output = ... (USD per million tokens) in config.toml or set ATEAMS_LLM__PRICES"
            )
        if tier.base_url is not None and (why := _url_problem(tier.base_url)):
            out.append(_problem(("llm", "tiers", name, "base_url"), tier.base_url, why))
    if s.llm.base_url is not None and (why := _url_problem(s.llm.base_url)):
        out.append(_problem(("llm", "base_url"), s.llm.base_url, why))
    if tiers and s.llm.default_tier not in tiers:
        out.append(_problem(("llm", "default_tier"), s.llm.default_tier, f"is not a configured tier ({names})"))

    for name, threshold in s.routing.thresholds.items():
        if name not in tiers:
            out.append(_problem(("routing", "thresholds"), {name: threshold}, f"names {_show(name)}, which is not a configured tier ({names})"))
        elif not 1 <= threshold <= 5:
            out.append(_problem(("routing", "thresholds"), {name: threshold}, "is outside 1..5, the range of a task's weighted score"))
    from agency.schemas import TaskScores  # the PM's routing scores
    from agency.tools.registry import BUILTIN_TOOLS

    criteria = tuple(TaskScores.model_fields)
    for name, weight in s.routing.weights.items():
        if name not in criteria:
            out.append(_problem(("routing", "weights"), {name: weight}, f"names {_show(name)}, which is not a routing criterion ({', '.join(criteria)})"))
        elif weight < 0:
            out.append(_problem(("routing", "weights"), {name: weight}, "is negative; weights are 0 or more"))
    if not any(w > 0 for w in s.routing.weights.values()):
        out.append(_problem(("routing", "weights"), s.routing.weights, "has no positive weight, so no task could be scored"))

    for name in s.tools.enabled:
        if name not in BUILTIN_TOOLS:
            out.append(_problem(("tools", "enabled"), s.tools.enabled, f"names {_show(name)}, which is not a tool ({', '.join(BUILTIN_TOOLS)})"))
    if "web_search" in s.tools.enabled and not s.tools.web_search:
        out.append(_problem(("tools", "web_search"), False, 'but tools.enabled lists "web_search": set it to true (it needs `pip install ddgs` '
                                                            "and network access) or remove web_search from tools.enabled"))
    elif s.tools.web_search and "web_search" not in s.tools.enabled:
        out.append(_problem(("tools", "enabled"), s.tools.enabled, 'lacks "web_search" while tools.web_search = true: add it, or set '
                                                                   "tools.web_search = false"))

    if s.memory.server_url is not None and (why := _url_problem(s.memory.server_url, bare_host=True)):
        out.append(_problem(("memory", "server_url"), s.memory.server_url, why))
    if s.memory.enabled and s.memory.embedding == "openai" and not s.has_model_endpoint:
        out.append(_problem(("memory", "embedding"), "openai", "needs OPENAI_API_KEY in the environment or llm.base_url "
                                                              '(or memory.embedding = "local")'))
    for key in ("director_role", "hq_channel"):
        if not getattr(s.discord, key).strip():
            out.append(_problem(("discord", key), getattr(s.discord, key), "is empty"))
    if s.database_url is not None and (bad := _database_problem(s.database_url)):
        out.append(f"database_url = {_show(bad[0])} {bad[1]}; set {_where(('database_url',))}")
    if s.data_dir.exists() and not s.data_dir.is_dir():
        out.append(_problem(("data_dir",), s.data_dir, "is a file, not a folder"))
    return out


def _describe(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        if err["type"] == "settings_whole":
            lines += [f"- {p}" for p in err["ctx"]["problems"].splitlines()]
            continue
        loc = tuple(str(p) for p in err["loc"])
        if not loc:
            lines.append(f"- {err['msg']}")
            continue
        key = ".".join(loc)
        if err["type"] == "extra_forbidden":
            env = "ATEAMS_" + "__".join(p.upper() for p in loc)
            lines.append(f"- {key} is not a setting (a typo?); remove it from config.toml or unset {env} "
                         "(config.example.toml lists every key)")
            continue
        secret = loc[0].lower() in SECRET_KEYS
        shown = "" if secret or err["type"] == "missing" else f" = {_show(err.get('input'))}"
        lines.append(f"- {key}{shown}: {err['msg']}; set {_where(loc)}")
    return "Invalid settings:\n" + "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Load and validate the settings; a bad value raises SettingsError naming the key."""
    _check_toml_for_secrets(Path(os.environ.get("ATEAMS_CONFIG", "config.toml")))
    try:
        return Settings(**overrides)
    except ValidationError as e:
        raise SettingsError(_describe(e)) from None
