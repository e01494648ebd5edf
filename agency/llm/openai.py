"""The OpenAI-compatible chat model (OpenAI, Ollama, vLLM, llama.cpp, ...).

Servers disagree on structured output, so the provider speaks three modes:

- ``json_schema``: ``response_format={"type": "json_schema", ...}`` (OpenAI, vLLM, Ollama);
- ``json_object``: ``response_format={"type": "json_object", "schema": ...}`` plus
  the schema in the system message (llama.cpp, which answers 500 to json_schema);
- ``tool``: one function tool whose parameters are the schema, forced with
  ``tool_choice``; the reply is the call's arguments.

``mode="auto"`` tries them in that order, falls back only when the server
explicitly refuses a mode (HTTP 400 or 422 whose error names the field the mode
sends: ``response_format`` / ``json_schema`` / ``json_object`` for the JSON
modes, ``tools`` / ``tool_choice`` for the tool mode), and remembers the mode
that worked. Anything else keeps the mode: a 5xx, 408, 409 or 429, a timeout or
a dropped connection is a :class:`~agency.errors.TransientModelError` that the
caller's retry layer (``agency.llm.client``: tenacity, exponential backoff with
jitter) retries; a 400 about something else (context length, a bad parameter)
is a plain :class:`~agency.errors.LLMError` with the server's reason. An outage
therefore never changes the mode nor blocks a project as "refused every mode".
(Old llama.cpp builds answered ``json_schema`` with a 500; current ones accept
it, and where one does not, set ``[llm] mode = "json_object"``.) The client
never retries itself (``max_retries=0``).
"""
from __future__ import annotations

import email.utils
import json
import logging
import math
import re
import time
from typing import Any, Literal, get_args

import openai
from openai.types.chat import ChatCompletion

from agency.errors import LLMError, ModelRefusedModeError, TransientModelError
from agency.llm.base import ModelReply, ModelRequest, StructuredMode

log = logging.getLogger(__name__)

__all__ = ["AUTO_ORDER", "OpenAIModel", "parse_retry_after", "refuses_mode"]

AUTO_ORDER: tuple[StructuredMode, ...] = ("json_schema", "json_object", "tool")
_MODES = frozenset(get_args(StructuredMode))
_TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
_MAX_SERVER_MESSAGE = 300
# the client errors that can be a refusal of a mode: 400, and 422 (servers that validate the body with a schema)
_REFUSAL_STATUSES = frozenset({400, 422})
# the request fields each mode sends: a refusal names one of them (in the error's ``param`` or its message)
_MODE_FIELDS: dict[StructuredMode, re.Pattern[str]] = {
    "json_schema": re.compile(r"response[ _-]?format|json[ _-]?schema", re.IGNORECASE),
    "json_object": re.compile(r"response[ _-]?format|json[ _-]?object", re.IGNORECASE),
    "tool": re.compile(r"\btools\b|tool[ _-]?choice|tool[ _-]?call(?:s|ing)?\b|function[ _-]?call(?:s|ing)?\b", re.IGNORECASE),
}
# a request too long for the model names its parts ("... 1000 in the functions"); it is never a refusal of a mode
_NOT_A_REFUSAL = re.compile(r"context[ _-]?length|maximum context|too many tokens|max_tokens", re.IGNORECASE)


def refuses_mode(mode: StructuredMode, status: int, detail: str, param: str | None = None) -> bool:
    """Whether an error answer is the server refusing ``mode`` itself (then auto mode moves to the next one).

    Only a 400/422 that names a field the mode sends counts: when the server says which parameter it
    objects to (``param``), that decides; otherwise its message must name the field. A 5xx never counts
    (an outage is retried, not taken for a refusal), nor does a 404 (a wrong model name or base URL)."""
    if status not in _REFUSAL_STATUSES:
        return False
    pattern = _MODE_FIELDS[mode]
    if param:
        return bool(pattern.search(param))
    return bool(pattern.search(detail)) and not _NOT_A_REFUSAL.search(detail)


def parse_retry_after(headers: Any, *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (seconds or HTTP-date), or None."""
    if headers is None:
        return None
    try:
        raw_ms = headers.get("retry-after-ms")
        if raw_ms is not None:
            return max(0.0, float(raw_ms) / 1000.0)
    except (TypeError, ValueError):
        pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = str(raw).strip()
    try:
        value = float(raw)
        return max(0.0, value) if math.isfinite(value) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _safe_name(name: str) -> str:
    """OpenAI wants ``^[a-zA-Z0-9_-]{1,64}$`` for schema and function names."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", name or "")[:64]
    return cleaned or "Output"


def _estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / 4) if text else 0


def _aiohttp_client(timeout: float) -> Any:
    """The SDK's aiohttp transport (``openai[aiohttp]``), or None (the SDK's httpx) where this SDK lacks it."""
    factory = getattr(openai, "DefaultAioHttpClient", None)
    if factory is None:
        return None
    try:
        return factory(timeout=timeout)
    except RuntimeError as e:  # the SDK without its aiohttp extra
        log.info("aiohttp transport unavailable (%s); using httpx", e)
        return None


class OpenAIModel:
    """A :class:`~agency.llm.base.ChatModel` backed by any OpenAI-compatible endpoint."""

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None,
        api_key: str | None,
        mode: StructuredMode | Literal["auto"] = "auto",
        timeout: float = 60.0,
        http_client: Any = None,
        name: str | None = None,
        transport: Literal["aiohttp", "httpx"] = "aiohttp",
    ) -> None:
        if mode != "auto" and mode not in _MODES:
            raise ValueError(f"unknown structured-output mode {mode!r}; use auto, json_schema, json_object or tool")
        if transport not in ("aiohttp", "httpx"):
            raise ValueError(f"unknown HTTP transport {transport!r}; use aiohttp or httpx")
        self.model = model
        self.base_url = base_url
        self._openai_api = base_url is None or "api.openai.com" in base_url
        self.mode: StructuredMode | Literal["auto"] = mode
        self.timeout = timeout
        self.name = name or f"openai:{model}"
        self._secret = api_key or ""
        self._owns_http_client = http_client is None
        if http_client is None and transport == "aiohttp":
            http_client = _aiohttp_client(timeout)
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "not-needed",
            timeout=timeout,
            max_retries=0,
            http_client=http_client,
        )
        # auto mode: the mode that last worked on this endpoint
        self._working_mode: StructuredMode | None = None
        self._warned: set[str] = set()

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIModel(model={self.model!r}, base_url={self.base_url!r}, mode={self.mode!r})"

    @property
    def active_mode(self) -> StructuredMode | None:
        """The mode requests go out in: the fixed mode, or the one auto mode settled on (None = not yet)."""
        return self.mode if self.mode != "auto" else self._working_mode

    async def aclose(self) -> None:
        """Close the HTTP client (a client passed in as ``http_client`` is left to its owner)."""
        if self._owns_http_client:
            await self._client.close()

    async def __aenter__(self) -> OpenAIModel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- the call ----------------------------------------------------------

    async def generate(self, request: ModelRequest) -> ModelReply:
        model = request.model or self.model
        if self.mode != "auto":
            return await self._call(request, model, self.mode, auto=False)

        order = list(AUTO_ORDER)
        if self._working_mode is not None:
            order.remove(self._working_mode)
            order.insert(0, self._working_mode)
        refused: list[tuple[StructuredMode, str]] = []
        for mode in order:
            try:
                reply = await self._call(request, model, mode, auto=True)
            except _ModeRefused as refusal:
                refused.append((mode, refusal.detail))
                continue
            if mode != self._working_mode:
                if refused and mode not in self._warned:
                    self._warned.add(mode)
                    log.warning(
                        "model endpoint %s refused structured-output mode(s) %s; using %s from now on",
                        self.base_url or "(default)",
                        ", ".join(m for m, _ in refused),
                        mode,
                    )
                self._working_mode = mode
            return reply
        tried = ", ".join(m for m, _ in refused)
        last = refused[-1][1] if refused else ""
        raise ModelRefusedModeError(
            f"The model endpoint refused every structured-output mode for {model} (tried {tried})"
            + (f"; last error: {last}" if last else "")
            + ". Check the model name and the server's support for JSON output."
        )

    async def _call(self, request: ModelRequest, model: str, mode: StructuredMode, *, auto: bool) -> ModelReply:
        kwargs = self._build(request, model, mode)
        log.debug("chat completion: model=%s mode=%s schema=%s purpose=%s", model, mode, request.schema_name, request.purpose)
        try:
            # the SDK's own POST with the body built here: the same endpoint, auth, timeouts and typed errors as
            # ``chat.completions.create``, without re-walking the request through the SDK's parameter types
            # (half of the SDK's CPU per call in bench/; the body above is already plain JSON)
            response = await self._client.post("/chat/completions", body=kwargs, cast_to=ChatCompletion)
        except openai.APITimeoutError as exc:
            raise TransientModelError(f"The model call to {model} timed out after {self.timeout:g}s.") from exc
        except openai.APIConnectionError as exc:
            raise TransientModelError(
                f"Could not reach the model endpoint for {model} (connection failed or dropped)."
            ) from exc
        except openai.RateLimitError as exc:
            retry_after = parse_retry_after(exc.response.headers)
            wait = f" (retry after {retry_after:g}s)" if retry_after is not None else ""
            raise TransientModelError(
                f"The model endpoint is rate limiting requests for {model}{wait}.", retry_after=retry_after, status=429
            ) from exc
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise LLMError(
                f"The model endpoint rejected the credentials (HTTP {exc.status_code}) for {model}: "
                "check OPENAI_API_KEY and that the key may use this model."
            ) from None  # the SDK's error can echo a masked key; keep it out of tracebacks
        except openai.APIStatusError as exc:
            status = exc.status_code
            detail = self._detail(exc)
            param = getattr(exc, "param", None)
            if refuses_mode(mode, status, detail, param if isinstance(param, str) else None):
                if auto:
                    log.info("model endpoint refused mode %s for %s (HTTP %s)", mode, model, status)
                    raise _ModeRefused(f"HTTP {status}: {detail}") from exc
                raise ModelRefusedModeError(
                    f"The model endpoint rejected the {mode} request for {model} (HTTP {status}): {detail}. "
                    "If the server does not support this structured-output mode, use mode 'auto'."
                ) from exc
            if status in _TRANSIENT_STATUSES or status >= 500:
                # an outage, not a refusal: the caller retries with backoff and the mode stays what it was
                raise TransientModelError(
                    f"The model endpoint failed for {model} (HTTP {status}).",
                    retry_after=parse_retry_after(exc.response.headers),
                    status=status,
                ) from exc
            if status == 404:
                raise LLMError(
                    f"The model endpoint answered 404 for {model}: check the model name and the base URL. {detail}"
                ) from exc
            raise LLMError(f"The model endpoint rejected the request for {model} (HTTP {status}): {detail}") from exc
        except openai.OpenAIError as exc:
            raise LLMError(f"The model call to {model} failed: {type(exc).__name__}.") from exc
        return self._reply(request, response, model, mode)

    # ---- request / reply shapes ---------------------------------------------

    def _build(self, request: ModelRequest, model: str, mode: StructuredMode) -> dict[str, Any]:
        name = _safe_name(request.schema_name)
        messages: list[dict[str, Any]] = [dict(m) for m in request.messages]
        kwargs: dict[str, Any] = {"model": model}
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.max_tokens:  # OpenAI's own API takes the newer name; compatible servers the classic one
            kwargs["max_completion_tokens" if self._openai_api else "max_tokens"] = request.max_tokens
        if mode == "json_schema":
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": name, "schema": request.json_schema, "strict": False},
            }
        elif mode == "json_object":
            kwargs["response_format"] = {"type": "json_object", "schema": request.json_schema}
            compact = json.dumps(request.json_schema, separators=(",", ":"))
            shown = bool(messages) and messages[0].get("role") == "system" and compact in (messages[0].get("content") or "")
            suffix = (  # the schema once: the agency's system prompts already end with it
                f"\n\nAnswer with one JSON object (no prose, no code fences) that conforms to the {name} JSON schema"
                + (" above." if shown else f":\n{compact}")
            )
            if messages and messages[0].get("role") == "system":
                messages[0]["content"] = f"{messages[0].get('content') or ''}{suffix}"
            else:
                messages.insert(0, {"role": "system", "content": suffix.lstrip()})
        elif mode == "tool":
            kwargs["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": name,
                        "description": f"Return the {name} answer.",
                        "parameters": request.json_schema,
                    },
                }
            ]
            kwargs["tool_choice"] = {"type": "function", "function": {"name": name}}
        else:  # pragma: no cover - guarded in __init__
            raise ValueError(f"unknown mode {mode!r}")
        kwargs["messages"] = messages
        return kwargs

    def _reply(self, request: ModelRequest, response: Any, model: str, mode: StructuredMode) -> ModelReply:
        text = ""
        choices = getattr(response, "choices", None) or []
        if choices:
            message = choices[0].message
            tool_calls = getattr(message, "tool_calls", None) or []
            args = ""
            for call in tool_calls:
                fn = getattr(call, "function", None)
                if fn is not None and getattr(fn, "arguments", None):
                    args = fn.arguments
                    break
            content = message.content or ""
            # prefer what the mode asked for, but take whatever the server gave
            text = (args or content) if mode == "tool" else (content or args)
        usage = getattr(response, "usage", None)
        if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
            prompt_tokens = int(usage.prompt_tokens or 0)
            completion_tokens = int(usage.completion_tokens or 0)
        else:
            prompt_tokens = _estimate_tokens("".join(str(m.get("content") or "") for m in request.messages))
            completion_tokens = _estimate_tokens(text)
        return ModelReply(
            text=text,
            model=getattr(response, "model", None) or model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    def _detail(self, exc: openai.APIStatusError) -> str:
        """The server's error message, shortened and scrubbed of the key."""
        body = exc.body
        message: Any = None
        if isinstance(body, dict):
            message = body.get("message") or body.get("error")
            if isinstance(message, dict):
                message = message.get("message")
        if not message:
            message = exc.message or ""
        text = " ".join(str(message).split())[:_MAX_SERVER_MESSAGE]
        if self._secret and len(self._secret) >= 4:
            text = text.replace(self._secret, "***")
        return text


class _ModeRefused(Exception):
    """Internal: the server refused one structured-output mode (auto mode falls back)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
