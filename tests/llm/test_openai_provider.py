"""The OpenAI-compatible provider against a local chat-completions mock (real openai client)."""
from __future__ import annotations

import email.utils
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agency.errors import LLMError, ModelRefusedModeError, TransientModelError
from agency.llm.base import ChatModel, ModelRequest
from agency.llm.openai import OpenAIModel, parse_retry_after
from bench.mock_openai import MockFault, MockOpenAIServer, request_mode

SECRET = "sk-test-SECRET-0123456789abcdef"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["answer", "score"],
}
ANSWER = {"answer": "forty-two", "score": 42}


def make_request(**kw: Any) -> ModelRequest:
    base: dict[str, Any] = dict(
        messages=[
            {"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": "What is the answer?"},
        ],
        schema_name="Answer",
        json_schema=SCHEMA,
    )
    base.update(kw)
    return ModelRequest(**base)


@pytest.fixture
async def server() -> AsyncIterator[MockOpenAIServer]:
    async with MockOpenAIServer(lambda body: ANSWER) as srv:
        yield srv


def model_for(srv: MockOpenAIServer, **kw: Any) -> OpenAIModel:
    kw.setdefault("timeout", 5.0)
    return OpenAIModel(model="test-model", base_url=srv.base_url, api_key=SECRET, **kw)


@pytest.fixture(params=["aiohttp", "httpx"])
async def make_model(server: MockOpenAIServer, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """Every provider test runs over both HTTP transports the SDK offers (settings: llm.http_transport)."""
    made: list[OpenAIModel] = []

    def factory(**kw: Any) -> OpenAIModel:
        kw.setdefault("transport", request.param)
        m = model_for(server, **kw)
        made.append(m)
        return m

    yield factory
    for m in made:
        await m.aclose()


def assert_no_secret(exc: BaseException) -> None:
    assert SECRET not in str(exc)
    assert SECRET not in getattr(exc, "user_message", "")
    assert SECRET not in repr(exc)


async def test_is_a_chat_model(make_model: Any) -> None:
    m = make_model()
    assert isinstance(m, ChatModel)
    assert m.name == "openai:test-model"
    assert SECRET not in repr(m)


async def test_json_schema_mode_request_shape(server: MockOpenAIServer, make_model: Any) -> None:
    reply = await make_model(mode="json_schema").generate(make_request(temperature=0.2))
    assert json.loads(reply.text) == ANSWER
    body = server.requests[-1]
    assert body["model"] == "test-model"
    assert body["temperature"] == 0.2
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Answer", "schema": SCHEMA, "strict": False},
    }
    assert "tools" not in body
    assert body["messages"][0]["content"] == "You are a careful assistant."  # no schema suffix


async def test_json_object_mode_carries_schema(server: MockOpenAIServer, make_model: Any) -> None:
    reply = await make_model(mode="json_object").generate(make_request())
    assert json.loads(reply.text) == ANSWER
    body = server.requests[-1]
    assert body["response_format"] == {"type": "json_object", "schema": SCHEMA}
    system = body["messages"][0]
    assert system["role"] == "system"
    assert system["content"].startswith("You are a careful assistant.")
    assert '"required":["answer","score"]' in system["content"]
    assert len(body["messages"]) == 2


async def test_json_object_mode_adds_system_message_when_missing(server: MockOpenAIServer, make_model: Any) -> None:
    req = make_request(messages=[{"role": "user", "content": "hi"}])
    await make_model(mode="json_object").generate(req)
    msgs = server.requests[-1]["messages"]
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "Answer" in msgs[0]["content"]
    assert req.messages == [{"role": "user", "content": "hi"}]  # the request is not mutated


async def test_tool_mode_reads_arguments(server: MockOpenAIServer, make_model: Any) -> None:
    reply = await make_model(mode="tool").generate(make_request(schema_name="Work Plan!"))
    assert json.loads(reply.text) == ANSWER
    body = server.requests[-1]
    assert request_mode(body) == "tool"
    assert "response_format" not in body
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "Work_Plan_", "description": "Return the Work_Plan_ answer.", "parameters": SCHEMA},
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "Work_Plan_"}}


async def test_request_model_overrides_default(server: MockOpenAIServer, make_model: Any) -> None:
    reply = await make_model(mode="json_schema").generate(make_request(model="other-model"))
    assert server.requests[-1]["model"] == "other-model"
    assert reply.model == "other-model"


async def test_usage_tokens_propagated(server: MockOpenAIServer, make_model: Any) -> None:
    m = make_model(mode="json_schema")
    r1 = await m.generate(make_request())
    r2 = await m.generate(make_request())
    assert r1.prompt_tokens > 0 and r1.completion_tokens == -(-len(json.dumps(ANSWER)) // 4)
    assert r1.prompt_tokens + r2.prompt_tokens == server.prompt_tokens
    assert r1.completion_tokens + r2.completion_tokens == server.completion_tokens
    assert r1.simulated is False


async def test_empty_content_gives_empty_text(server: MockOpenAIServer, make_model: Any) -> None:
    server.handler = lambda body: ""
    reply = await make_model(mode="json_schema").generate(make_request())
    assert reply.text == ""


async def test_invalid_content_is_returned_raw(server: MockOpenAIServer, make_model: Any) -> None:
    server.handler = lambda body: MockFault(body="```json {bad")
    reply = await make_model(mode="json_object").generate(make_request())
    assert reply.text == "```json {bad"


async def test_auto_falls_back_on_an_explicit_refusal_and_remembers(
    server: MockOpenAIServer, make_model: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server.refuse_modes, server.refuse_status = {"json_schema"}, 400
    m = make_model()  # auto
    assert m.active_mode is None
    with caplog.at_level(logging.WARNING, logger="agency.llm.openai"):
        reply = await m.generate(make_request())
        assert json.loads(reply.text) == ANSWER
        assert [request_mode(b) for b in server.requests] == ["json_schema", "json_object"]
        assert m.active_mode == "json_object"

        await m.generate(make_request())  # straight to the working mode
        assert [request_mode(b) for b in server.requests] == ["json_schema", "json_object", "json_object"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "json_schema" in warnings[0].getMessage()
    assert SECRET not in caplog.text
    assert "careful assistant" not in caplog.text  # no prompts in logs


async def test_auto_falls_back_to_tool(server: MockOpenAIServer, make_model: Any) -> None:
    server.refuse_modes, server.refuse_status = {"json_schema", "json_object"}, 400
    m = make_model()
    reply = await m.generate(make_request())
    assert json.loads(reply.text) == ANSWER
    assert [request_mode(b) for b in server.requests] == ["json_schema", "json_object", "tool"]
    assert m.active_mode == "tool"


async def test_auto_falls_back_on_400(server: MockOpenAIServer, make_model: Any) -> None:
    server.handler = lambda body: (
        MockFault(status=400, message="response_format json_schema unsupported")
        if request_mode(body) == "json_schema"
        else ANSWER
    )
    m = make_model()
    assert json.loads((await m.generate(make_request())).text) == ANSWER
    assert m.active_mode == "json_object"


async def test_auto_every_mode_refused(server: MockOpenAIServer, make_model: Any) -> None:
    server.refuse_modes, server.refuse_status = {"json_schema", "json_object", "tool"}, 400
    m = make_model()
    with pytest.raises(ModelRefusedModeError) as info:
        await m.generate(make_request())
    msg = str(info.value)
    for mode in ("json_schema", "json_object", "tool"):
        assert mode in msg
    assert m.active_mode is None  # nothing remembered
    assert_no_secret(info.value)


async def test_auto_remembered_mode_refused_later_moves_on(server: MockOpenAIServer, make_model: Any) -> None:
    m = make_model()
    await m.generate(make_request())
    assert m.active_mode == "json_schema"
    server.refuse_modes, server.refuse_status = {"json_schema"}, 400
    await m.generate(make_request())
    assert m.active_mode == "json_object"


async def test_auto_503_is_transient_not_refusal(server: MockOpenAIServer, make_model: Any) -> None:
    server.handler = lambda body: MockFault(status=503)
    m = make_model()
    with pytest.raises(TransientModelError) as info:
        await m.generate(make_request())
    assert info.value.status == 503
    assert len(server.requests) == 1


async def test_rate_limit_retry_after_seconds(server: MockOpenAIServer, make_model: Any) -> None:
    server.handler = lambda body: MockFault(status=429, retry_after=7, message="slow down")
    for mode in ("auto", "json_schema"):
        with pytest.raises(TransientModelError) as info:
            await make_model(mode=mode).generate(make_request())
        assert info.value.status == 429
        assert info.value.retry_after == 7.0
        assert_no_secret(info.value)


async def test_rate_limit_retry_after_http_date(server: MockOpenAIServer, make_model: Any) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    server.handler = lambda body: MockFault(status=429, retry_after=when)
    with pytest.raises(TransientModelError) as info:
        await make_model(mode="tool").generate(make_request())
    assert info.value.retry_after is not None
    assert 20 <= info.value.retry_after <= 31


def test_parse_retry_after() -> None:
    assert parse_retry_after({"retry-after": "2.5"}) == 2.5
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_in_fixed_mode_is_transient(server: MockOpenAIServer, make_model: Any, status: int) -> None:
    server.handler = lambda body: MockFault(status=status)
    with pytest.raises(TransientModelError) as info:
        await make_model(mode="json_schema").generate(make_request())
    assert info.value.status == status
    assert len(server.requests) == 1  # the client does not retry
    assert_no_secret(info.value)


async def test_refused_mode_in_fixed_mode_is_transient_500(server: MockOpenAIServer, make_model: Any) -> None:
    # a fixed mode never falls back; llama.cpp's 500 looks like any other 500
    server.refuse_modes = {"json_schema"}
    with pytest.raises(TransientModelError):
        await make_model(mode="json_schema").generate(make_request())


async def test_400_in_fixed_mode_names_the_mode(server: MockOpenAIServer, make_model: Any) -> None:
    server.handler = lambda body: MockFault(status=400, message="unsupported response_format")
    with pytest.raises(ModelRefusedModeError) as info:
        await make_model(mode="json_schema").generate(make_request())
    assert "json_schema" in str(info.value)
    assert "unsupported response_format" in str(info.value)


async def test_timeout_is_transient(server: MockOpenAIServer, make_model: Any) -> None:
    server.handler = lambda body: MockFault(delay=2.0, body="{}")
    with pytest.raises(TransientModelError) as info:
        await make_model(mode="json_schema", timeout=0.2).generate(make_request())
    assert "timed out" in str(info.value)
    assert_no_secret(info.value)


async def test_dropped_connection_is_transient(server: MockOpenAIServer, make_model: Any) -> None:
    server.handler = lambda body: MockFault(drop=True)
    with pytest.raises(TransientModelError) as info:
        await make_model().generate(make_request())
    assert info.value.status is None
    assert_no_secret(info.value)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_connection_refused_is_transient(transport: str) -> None:
    srv = MockOpenAIServer()
    url = await srv.start()
    await srv.stop()  # nothing listens on that port any more
    m = OpenAIModel(model="x", base_url=url, api_key=SECRET, timeout=2.0, transport=transport)  # type: ignore[arg-type]
    try:
        with pytest.raises(TransientModelError) as info:
            await m.generate(make_request())
        assert_no_secret(info.value)
    finally:
        await m.aclose()


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_errors_point_at_the_key_but_never_show_it(
    server: MockOpenAIServer, make_model: Any, status: int
) -> None:
    server.handler = lambda body: MockFault(status=status, message=f"Incorrect API key provided: {SECRET}")
    with pytest.raises(LLMError) as info:
        await make_model(mode="json_schema").generate(make_request())
    assert not isinstance(info.value, TransientModelError)
    assert "OPENAI_API_KEY" in str(info.value)
    assert_no_secret(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


async def test_secret_scrubbed_from_server_messages(server: MockOpenAIServer, make_model: Any) -> None:
    server.handler = lambda body: MockFault(status=400, message=f"bad key {SECRET} in request")
    with pytest.raises(LLMError) as info:
        await make_model(mode="tool").generate(make_request())
    assert_no_secret(info.value)


async def test_missing_usage_is_estimated(make_model: Any) -> None:
    # a server that sends no usage block
    import bench.mock_openai as mock

    class NoUsage(MockOpenAIServer):
        def _completion(self, body: dict[str, Any], content: str) -> bytes:
            payload = {
                "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            }
            return self._response(200, json.dumps(payload).encode())

    async with NoUsage(lambda body: "x" * 40) as srv:
        m = model_for(srv, mode="json_schema")
        try:
            reply = await m.generate(make_request())
        finally:
            await m.aclose()
    assert reply.completion_tokens == 10
    assert reply.prompt_tokens == mock.estimate_tokens("You are a careful assistant.What is the answer?")


def test_unknown_transport_rejected() -> None:
    with pytest.raises(ValueError, match="aiohttp or httpx"):
        OpenAIModel(model="x", base_url="http://127.0.0.1:1/v1", api_key=None, transport="curl")  # type: ignore[arg-type]


def test_unknown_mode_rejected() -> None:
    with pytest.raises(ValueError):
        OpenAIModel(model="x", base_url="http://127.0.0.1:1/v1", api_key=None, mode="xml")  # type: ignore[arg-type]


async def test_concurrent_calls(server: MockOpenAIServer, make_model: Any) -> None:
    import asyncio

    m = make_model()
    replies = await asyncio.gather(*(m.generate(make_request()) for _ in range(20)))
    assert all(json.loads(r.text) == ANSWER for r in replies)
    assert server.calls == 20


# ---- auto mode: only an explicit refusal changes the mode; an outage is retried (issue 11, defect 7) ----------


async def _client_for(settings: Any, model: OpenAIModel) -> Any:
    from agency.db.session import Database
    from agency.llm.client import LLMClient, ModelSet

    settings.llm.max_retries = 4
    settings.llm.retry_max_wait_seconds = 0.05  # tenacity's exponential wait with jitter, capped small for the test
    db = Database(settings.db_url)
    await db.upgrade()
    return LLMClient(db, ModelSet({"fast": (model, "test-model")}, "fast"), settings), db


def _answer_schema() -> Any:
    from pydantic import BaseModel

    class Answer(BaseModel):
        answer: str
        score: int

    return Answer


async def test_auto_500_is_transient_and_keeps_the_mode(server: MockOpenAIServer, make_model: Any) -> None:
    m = make_model()
    await m.generate(make_request())
    assert m.active_mode == "json_schema"
    server.handler = lambda body: MockFault(status=500, message="upstream exploded")
    with pytest.raises(TransientModelError) as info:
        await m.generate(make_request())
    assert info.value.status == 500
    assert [request_mode(b) for b in server.requests] == ["json_schema", "json_schema"]  # no other mode tried
    assert m.active_mode == "json_schema"


async def test_auto_500_naming_response_format_is_still_an_outage(server: MockOpenAIServer, make_model: Any) -> None:
    # old llama.cpp answered json_schema with a 500; a 5xx is never taken for a refusal (set mode = json_object there)
    server.refuse_modes = {"json_schema"}  # refuse_status 500
    m = make_model()
    with pytest.raises(TransientModelError):
        await m.generate(make_request())
    assert [request_mode(b) for b in server.requests] == ["json_schema"]
    assert m.active_mode is None


async def test_a_500_burst_is_retried_with_backoff_and_the_mode_stays(
    server: MockOpenAIServer, make_model: Any, settings: Any
) -> None:
    from agency.llm.client import CallContext

    m = make_model()
    client, db = await _client_for(settings, m)
    try:
        schema = _answer_schema()
        await client.call(schema, make_request().messages, CallContext(role="pm", purpose="plan"))
        assert m.active_mode == "json_schema"
        server.burst(MockFault(status=500, message="internal error"), 3)
        server.requests.clear()
        loop_stamps: list[float] = []
        real_chat = server._chat

        async def stamped(body: dict[str, Any]) -> Any:
            loop_stamps.append(time.monotonic())
            return await real_chat(body)

        server._chat = stamped  # type: ignore[method-assign]
        out = await client.call(schema, make_request().messages, CallContext(role="pm", purpose="plan"))
        assert out.answer == "forty-two"
        assert server.burst_left == 0
        assert [request_mode(b) for b in server.requests] == ["json_schema"] * 4  # three 500s, then the answer
        assert m.active_mode == "json_schema"  # the outage changed nothing
        gaps = [b - a for a, b in itertools.pairwise(loop_stamps)]
        assert len(gaps) == 3 and all(g >= 0.04 for g in gaps), gaps  # each retry waited for its backoff
    finally:
        await db.dispose()


async def test_a_500_burst_before_any_mode_is_known_does_not_pick_one(
    server: MockOpenAIServer, make_model: Any, settings: Any
) -> None:
    from agency.llm.client import CallContext

    server.refuse_modes, server.refuse_status = {"json_schema"}, 400
    server.burst(MockFault(status=502), 2)
    m = make_model()
    client, db = await _client_for(settings, m)
    try:
        out = await client.call(_answer_schema(), make_request().messages, CallContext(role="pm", purpose="plan"))
        assert out.score == 42
        # two outages on the first mode, then the explicit 400 refusal of json_schema, then json_object works
        assert [request_mode(b) for b in server.requests] == ["json_schema", "json_schema", "json_schema", "json_object"]
        assert m.active_mode == "json_object"
    finally:
        await db.dispose()


async def test_a_long_outage_ends_as_a_retryable_failure_not_a_mode_refusal(
    server: MockOpenAIServer, make_model: Any, settings: Any
) -> None:
    from agency.llm.client import CallContext

    m = make_model()
    client, db = await _client_for(settings, m)
    settings.llm.max_retries = 2
    server.burst(MockFault(status=500), 10)
    try:
        with pytest.raises(LLMError) as info:
            await client.call(_answer_schema(), make_request().messages, CallContext(role="pm", purpose="plan"))
        assert not isinstance(info.value, ModelRefusedModeError)
        assert "HTTP 500" in str(info.value) and "refused" not in str(info.value)
        assert [request_mode(b) for b in server.requests] == ["json_schema"] * 3
        assert m.active_mode is None
    finally:
        await db.dispose()


async def test_a_400_naming_response_format_switches_the_mode(server: MockOpenAIServer, make_model: Any) -> None:
    server.handler = lambda body: (
        MockFault(status=400, message="Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.")
        if request_mode(body) == "json_schema"
        else ANSWER
    )
    m = make_model()
    assert json.loads((await m.generate(make_request())).text) == ANSWER
    assert [request_mode(b) for b in server.requests] == ["json_schema", "json_object"]
    assert m.active_mode == "json_object"


async def test_a_400_whose_param_is_tools_switches_from_the_tool_mode(server: MockOpenAIServer, make_model: Any) -> None:
    m = make_model()
    m._working_mode = "tool"  # as if tool mode had worked before
    server.handler = lambda body: (
        MockFault(status=400, message="this model does not support that", param="tools") if request_mode(body) == "tool" else ANSWER
    )
    await m.generate(make_request())
    assert [request_mode(b) for b in server.requests] == ["tool", "json_schema"]
    assert m.active_mode == "json_schema"


@pytest.mark.parametrize(
    ("message", "param"),
    [
        (("This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens "
          "(8000 in the messages, 1000 in the functions). Please reduce the length of the messages."), "messages"),
        ("temperature must be between 0 and 2", None),
        ("context_length_exceeded: the prompt plus response_format is too long", None),
    ],
)
async def test_a_400_naming_something_else_keeps_the_mode(
    server: MockOpenAIServer, make_model: Any, message: str, param: str | None
) -> None:
    m = make_model()
    await m.generate(make_request())
    assert m.active_mode == "json_schema"
    server.handler = lambda body: MockFault(status=400, message=message, param=param)
    with pytest.raises(LLMError) as info:
        await m.generate(make_request())
    assert not isinstance(info.value, (TransientModelError, ModelRefusedModeError))
    assert "HTTP 400" in str(info.value) and message[:30] in str(info.value)
    assert [request_mode(b) for b in server.requests] == ["json_schema", "json_schema"]  # no fallback tried
    assert m.active_mode == "json_schema"


async def test_a_404_is_a_wrong_model_or_url_not_a_refusal(server: MockOpenAIServer, make_model: Any) -> None:
    server.handler = lambda body: MockFault(status=404, message="model 'test-model' not found")
    m = make_model()
    with pytest.raises(LLMError) as info:
        await m.generate(make_request())
    assert not isinstance(info.value, ModelRefusedModeError)
    assert "check the model name and the base URL" in str(info.value)
    assert len(server.requests) == 1 and m.active_mode is None


def test_refuses_mode_reads_param_first() -> None:
    from agency.llm.openai import refuses_mode

    assert refuses_mode("json_schema", 400, "whatever", "response_format")
    assert not refuses_mode("json_schema", 400, "response_format is fine, messages are not", "messages")
    assert refuses_mode("tool", 422, "tool_choice 'required' is not supported")
    assert refuses_mode("tool", 400, '"auto" tool choice requires --enable-auto-tool-choice')
    assert not refuses_mode("json_object", 400, "tools are not supported")  # not a field the mode sends
    for status in (404, 429, 500, 502, 503):
        assert not refuses_mode("json_schema", status, "response_format json_schema unsupported", "response_format")


async def test_every_call_sends_its_reply_bound(server: MockOpenAIServer, make_model: Any) -> None:
    """Issue 13: max_tokens is sent on every call (a compatible server gets the classic name)."""
    for mode in ("json_schema", "json_object", "tool"):
        await make_model(mode=mode).generate(make_request(max_tokens=321))
        assert server.requests[-1]["max_tokens"] == 321, mode


async def test_json_object_mode_sends_the_schema_once(server: MockOpenAIServer, make_model: Any) -> None:
    """Issue 13: a system prompt that already shows the schema (as the agency's do) does not get it again."""
    compact = json.dumps(SCHEMA, separators=(",", ":"))
    req = make_request(messages=[{"role": "system", "content": f"You are a careful assistant.\n\nJSON schema of your reply:\n{compact}"},
                                 {"role": "user", "content": "hi"}])
    await make_model(mode="json_object").generate(req)
    system = server.requests[-1]["messages"][0]["content"]
    assert system.count(compact) == 1 and system.endswith("schema above.")
