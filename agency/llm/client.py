"""The one gateway every role uses to call a model.

It picks the model for a tier, enforces the global concurrency limit and the
project's budget, retries transient failures with backoff (honouring
Retry-After), validates the reply against the pydantic schema with one repair
round, and records every physical call in ``llm_calls``. A call with a
``call_key`` whose answer is already recorded is answered from the record, so a
restart never pays twice for the same answer.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import insert, select
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from agency.db.session import Database
from agency.db.tables import LLMCallRow, utcnow
from agency.errors import LLMError, LLMOutputError, TransientModelError
from agency.guided import sent_schema
from agency.llm.base import ChatModel, ModelReply, ModelRequest
from agency.llm.usage import cost_usd, estimate_tokens
from agency.logs import redact
from agency.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T", bound=BaseModel)
_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*\n?(.*?)\n?\s*```\s*$", re.S)


@dataclass
class CallContext:
    """Who is calling and why; stored with the record."""

    role: str
    purpose: str
    agency_id: int | None = None
    project_id: int | None = None
    task_id: int | None = None
    member_id: int | None = None
    stream_id: int | None = None
    call_key: str | None = None
    tier: str | None = None
    retrieved: list[Any] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # for fakes and the simulator


@dataclass
class ModelSet:
    """The models by tier: tier name -> (provider, model name)."""

    tiers: dict[str, tuple[ChatModel, str]]
    default_tier: str
    simulated: bool = False

    def get(self, tier: str | None) -> tuple[str, ChatModel, str]:
        name = tier if tier in self.tiers else self.default_tier
        provider, model = self.tiers[name]
        return name, provider, model

    @property
    def order(self) -> list[str]:
        return list(self.tiers)

    async def aclose(self) -> None:
        """Close each provider once (tiers may share one); providers without ``aclose`` have nothing open."""
        seen: set[int] = set()
        for provider, _ in self.tiers.values():
            close = getattr(provider, "aclose", None)
            if close is not None and id(provider) not in seen:
                seen.add(id(provider))
                await close()


def extract_json(text: str) -> Any:
    """Parse a reply that should be JSON; tolerate code fences and leading prose."""
    s = text.strip()
    m = _FENCE.match(s)
    if m:
        s = m.group(1).strip()
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        start, end = s.find("{"), s.rfind("}")
        if 0 <= start < end:
            return json.loads(s[start : end + 1])
        raise


def validate_reply(schema: type[T], text: str) -> T:
    """Raise ValueError with a readable message when ``text`` is not a valid ``schema``."""
    try:
        data = extract_json(text)
    except (json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"the reply is not valid JSON ({e}); reply with one JSON object only") from None
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        errs = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in e.errors()[:10]
        )
        raise ValueError(errs) from None


class CircuitBreaker:
    """Pauses calls to a model that keeps failing: work waits instead of burning retries.

    After ``failures`` consecutive transient failures the circuit opens for
    ``cooldown`` seconds; every caller waits. The first call after the cooldown
    is a probe: a success closes the circuit, a failure opens it again.
    """

    def __init__(self, failures: int, cooldown: float) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self._count: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self.trips = 0

    def is_open(self, key: str) -> bool:
        return self._open_until.get(key, 0.0) > time.monotonic()

    async def wait(self, key: str) -> None:
        # a deadline that a new failure may move, not a flag someone sets: re-read at least every second
        while (delay := self._open_until.get(key, 0.0) - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(min(delay, 1.0))

    def success(self, key: str) -> None:
        self._count[key] = 0
        self._open_until.pop(key, None)

    def failure(self, key: str) -> None:
        n = self._count.get(key, 0) + 1
        self._count[key] = n
        if n >= self.failures:
            self._open_until[key] = time.monotonic() + self.cooldown
            self._count[key] = self.failures - 1  # half-open: one more failure re-opens
            self.trips += 1
            log.warning("model %s failed %d times in a row; pausing calls to it for %.0f s", key, n, self.cooldown)


def _outgoing(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The messages as they leave for the model: every content redacted. The one place prompts are redacted,
    before the request is built; the record (``llm_calls``) keeps exactly what was sent."""
    return [{**m, "content": redact(c)} if isinstance(c := m.get("content"), str) and c else m for m in messages]


def _recorded_request(request: ModelRequest) -> dict[str, Any]:
    """The request as recorded in ``llm_calls``: the messages as sent (redacted by :func:`_outgoing`)."""
    return {"messages": [{**m, "content": m.get("content") or ""} for m in request.messages], "schema": request.schema_name}


# built once: constructing a SQLAlchemy statement costs more than running it on SQLite
_INSERT_CALL = insert(LLMCallRow)
_CALL_COLUMNS = tuple(c.key for c in LLMCallRow.__table__.columns if c.key not in ("id", "created_at"))

BudgetCheck = Callable[[CallContext], Awaitable[None]]
CallObserver = Callable[[LLMCallRow], None]


class LLMClient:
    def _max_tokens(self, purpose: str) -> int | None:
        limits = self.settings.llm.max_tokens
        return limits.get(purpose, limits.get("default"))

    def __init__(self, db: Database, models: ModelSet, settings: Settings, *, budget_check: BudgetCheck | None = None) -> None:
        self.db = db
        self.models = models
        self.settings = settings
        self._sem = asyncio.Semaphore(settings.llm.concurrency)
        self.budget_check = budget_check  # the engine's budget gate (agency.engine.budget), before every call
        self.observers: list[CallObserver] = []  # metrics, live status
        self.calls_made = 0  # physical calls made by this process (not answered from the record)
        # projects created by this process: a recorded answer for one of their keys can only be one recorded here
        self.fresh_projects: set[int] = set()
        self._keys_recorded: set[str] = set()
        # tasks waiting on a model right now: the only place a task may be cancelled without
        # interrupting a database write (agency.engine stops the others at their next step)
        self.in_model: set[asyncio.Task[Any]] = set()
        self.breaker = CircuitBreaker(settings.llm.circuit_failures, settings.llm.circuit_cooldown_seconds)

    @property
    def simulated(self) -> bool:
        return self.models.simulated

    async def call(self, schema: type[T], messages: list[dict[str, str]], ctx: CallContext, *,
                   json_schema: dict[str, Any] | None = None) -> T:
        """``json_schema``: the schema this call sends (per-call enums, see :mod:`agency.guided`); by default
        the class's compact one. The reply is validated against ``schema`` either way."""
        if ctx.call_key and self._may_be_recorded(ctx):
            cached = await self._recorded(ctx.call_key, schema)
            if cached is not None:
                return cached
        if self.budget_check is not None:
            await self.budget_check(ctx)
        tier, provider, model = self.models.get(ctx.tier)
        ctx.tier = tier
        # a secret in a prompt (a person's paste, a document, a tool's output) never reaches the provider; the
        # repair round below builds on these messages and on the reply, which _generate returns redacted
        messages = _outgoing(messages)
        request = ModelRequest(
            messages=messages,
            schema_name=schema.__name__,
            json_schema=json_schema if json_schema is not None else sent_schema(schema),
            model=model,
            max_tokens=self._max_tokens(ctx.purpose),
            role=ctx.role,
            purpose=ctx.purpose,
            meta=ctx.meta,
        )
        reply = await self._generate(provider, request, ctx)
        try:
            parsed = validate_reply(schema, reply.text)
        except ValueError as first:
            await self._record(ctx, request, reply, outcome="invalid", error=str(first), key_suffix="#invalid")
            log.warning("invalid %s from %s (project=%s); repair round: %s", schema.__name__, model, ctx.project_id, first)
            repair = ModelRequest(
                messages=[
                    *messages,
                    {"role": "assistant", "content": reply.text[:8000]},
                    {
                        "role": "user",
                        "content": f"Your reply did not validate against the {schema.__name__} schema: {first}. "
                        "Reply again with a single JSON object that fixes these errors and nothing else.",
                    },
                ],
                schema_name=request.schema_name,
                json_schema=request.json_schema,
                model=model,
                max_tokens=request.max_tokens,
                role=ctx.role,
                purpose=ctx.purpose,
                meta={**ctx.meta, "repair": str(first)},
            )
            reply2 = await self._generate(provider, repair, ctx)
            try:
                parsed = validate_reply(schema, reply2.text)
            except ValueError as second:
                await self._record(ctx, repair, reply2, outcome="invalid", error=str(second), key_suffix="#invalid2")
                raise LLMOutputError(schema.__name__, str(second), reply2.text) from None
            await self._record(ctx, repair, reply2, outcome="repaired", parsed=parsed)
            return parsed
        await self._record(ctx, request, reply, outcome="ok", parsed=parsed)
        return parsed

    async def _generate(self, provider: ChatModel, request: ModelRequest, ctx: CallContext) -> ModelReply:
        cfg = self.settings.llm

        def _wait(retry_state: Any) -> float:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            base = wait_exponential_jitter(multiplier=0.5, max=cfg.retry_max_wait_seconds)(retry_state)
            if isinstance(exc, TransientModelError) and exc.retry_after:
                return min(max(exc.retry_after, 0.0), cfg.retry_max_wait_seconds)
            return base

        started = time.perf_counter()
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(TransientModelError),
                stop=stop_after_attempt(cfg.max_retries + 1),
                wait=_wait,
                reraise=True,
            ):
                with attempt:
                    key = request.model or provider.name
                    await self.breaker.wait(key)
                    me = asyncio.current_task()
                    if me is not None:
                        self.in_model.add(me)
                    try:
                        async with self._sem:
                            self.calls_made += 1
                            try:
                                async with asyncio.timeout(cfg.timeout_seconds * 1.5):
                                    reply = await provider.generate(request)
                            except (TransientModelError, TimeoutError):
                                self.breaker.failure(key)
                                raise
                            self.breaker.success(key)
                    finally:
                        self.in_model.discard(me)
        except TimeoutError:
            await self._record_error(ctx, request, "timeout", started)
            raise LLMError(f"The model did not answer within {cfg.timeout_seconds:.0f} s.") from None
        except TransientModelError as e:
            await self._record_error(ctx, request, e.user_message, started)
            raise LLMError(f"The model kept failing after {cfg.max_retries} retries: {e.user_message}") from e
        except LLMError as e:
            await self._record_error(ctx, request, e.user_message, started)
            raise
        ctx.meta["_latency_ms"] = (time.perf_counter() - started) * 1000
        # a secret a model repeats (read from a tool, a prompt, a document) stops here, before it reaches
        # any record, message, log or later prompt
        return replace(reply, text=redact(reply.text))

    def _may_be_recorded(self, ctx: CallContext) -> bool:
        """Skip the database lookup when no recorded answer can exist (the common case, saving a query per call)."""
        if ctx.project_id is None or ctx.project_id not in self.fresh_projects:
            return True
        return ctx.call_key in self._keys_recorded

    async def _recorded(self, key: str, schema: type[T]) -> T | None:
        async with self.db.session() as s:
            row = (
                await s.execute(
                    select(LLMCallRow)
                    .where(LLMCallRow.call_key == key, LLMCallRow.outcome.in_(("ok", "repaired")))
                    .order_by(LLMCallRow.id.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
        if row is None or row.response is None:
            return None
        try:
            return validate_reply(schema, row.response)
        except ValueError:
            return None

    async def _record(
        self,
        ctx: CallContext,
        request: ModelRequest,
        reply: ModelReply,
        *,
        outcome: str,
        error: str | None = None,
        parsed: BaseModel | None = None,
        key_suffix: str = "",
    ) -> None:
        pt = reply.prompt_tokens or sum(estimate_tokens(m.get("content", "")) for m in request.messages)
        ct = reply.completion_tokens or estimate_tokens(reply.text)
        await self._store(
            ctx, request, key_suffix,
            model=reply.model or (request.model or ""),
            response=redact(parsed.model_dump_json() if parsed is not None else reply.text),
            prompt_tokens=pt,
            completion_tokens=ct,
            cost_usd=cost_usd(self.settings.price(request.model or reply.model), pt, ct),
            latency_ms=float(ctx.meta.get("_latency_ms", 0.0)),
            simulated=int(reply.simulated),
            outcome=outcome,
            error=error,
        )

    async def _record_error(self, ctx: CallContext, request: ModelRequest, error: str, started: float) -> None:
        await self._store(ctx, request, "#error", model=request.model or "", outcome="error", error=error[:2000],
                          latency_ms=(time.perf_counter() - started) * 1000)

    async def _store(self, ctx: CallContext, request: ModelRequest, key_suffix: str, **fields: Any) -> None:
        """Write one ``llm_calls`` row (every physical call, whatever its outcome) and tell the observers."""
        row = LLMCallRow(
            agency_id=ctx.agency_id,
            project_id=ctx.project_id,
            task_id=ctx.task_id,
            member_id=ctx.member_id,
            stream_id=ctx.stream_id,
            call_key=(ctx.call_key + key_suffix) if ctx.call_key else None,
            role=ctx.role,
            purpose=ctx.purpose,
            tier=ctx.tier,
            request=_recorded_request(request),
            retrieved=ctx.retrieved,
            **fields,
        )
        values = {k: v for k in _CALL_COLUMNS if (v := getattr(row, k)) is not None}  # None: the column's default
        values["created_at"] = row.created_at = utcnow()
        async with self.db.engine.begin() as conn:  # a prebuilt insert, no ORM session: this runs for every model call
            pk = (await conn.execute(_INSERT_CALL, values)).inserted_primary_key
            assert pk is not None  # (None only when no row was inserted)
            row.id = pk[0]
        if row.call_key and fields.get("outcome") in ("ok", "repaired"):
            self._keys_recorded.add(row.call_key)
        for obs in self.observers:
            try:
                obs(row)
            except Exception:  # an observer must never break a call
                log.exception("LLM call observer failed")
