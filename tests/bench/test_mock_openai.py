"""Smoke tests for the local chat-completions mock."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import openai

from bench.mock_openai import MockFault, MockOpenAIServer, estimate_tokens, request_mode


async def _ask(client: openai.AsyncOpenAI, text: str, **kw: Any) -> Any:
    return await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": text}], **kw
    )


async def test_counters_add_up() -> None:
    async def handler(body: dict[str, Any]) -> dict[str, Any]:
        return {"len": len(body["messages"][0]["content"])}

    async with MockOpenAIServer(handler, latency=0.01, jitter=0.01, seed=3) as srv:
        client = openai.AsyncOpenAI(base_url=srv.base_url, api_key="k", max_retries=0, timeout=5)
        try:
            texts = [f"question {i} " * (i + 1) for i in range(25)]
            replies = await asyncio.gather(*(_ask(client, t) for t in texts))
        finally:
            await client.close()
    assert srv.calls == 25 == len(srv.requests) == srv.answered
    assert srv.prompt_tokens == sum(r.usage.prompt_tokens for r in replies) == sum(estimate_tokens(t) for t in texts)
    assert srv.completion_tokens == sum(r.usage.completion_tokens for r in replies)
    assert sorted(json.loads(r.choices[0].message.content)["len"] for r in replies) == sorted(len(t) for t in texts)
    srv.reset()
    assert srv.calls == srv.prompt_tokens == srv.completion_tokens == 0 and srv.requests == []


async def test_modes_faults_and_refusals() -> None:
    answers: list[Any] = [
        "plain",
        MockFault(status=429, retry_after=3),
        MockFault(body="```json {bad"),
        MockFault(drop=True),
        {"ok": True},
    ]

    async with MockOpenAIServer(lambda body: answers.pop(0), refuse_modes={"json_schema"}) as srv:
        client = openai.AsyncOpenAI(base_url=srv.base_url, api_key="k", max_retries=0, timeout=5)
        try:
            r = await _ask(client, "a")
            assert r.choices[0].message.content == "plain"
            try:
                await _ask(client, "b")
            except openai.RateLimitError as exc:
                assert exc.response.headers["retry-after"] == "3"
            else:
                raise AssertionError("expected 429")
            r = await _ask(client, "c", response_format={"type": "json_object"})
            assert r.choices[0].message.content == "```json {bad"
            try:
                await _ask(client, "d")
            except openai.APIConnectionError:
                pass
            else:
                raise AssertionError("expected a dropped connection")
            try:
                await _ask(client, "e", response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}})
            except openai.InternalServerError as exc:
                assert exc.status_code == 500
            else:
                raise AssertionError("expected a refusal")
            tool = {"type": "function", "function": {"name": "Out", "parameters": {"type": "object"}}}
            r = await _ask(client, "f", tools=[tool], tool_choice={"type": "function", "function": {"name": "Out"}})
            call = r.choices[0].message.tool_calls[0]
            assert call.function.name == "Out" and json.loads(call.function.arguments) == {"ok": True}
        finally:
            await client.close()
    assert srv.calls == 6 and srv.answered == 3 and srv.faults == 3
    assert [request_mode(b) for b in srv.requests] == [None, None, "json_object", None, "json_schema", "tool"]


async def test_plain_path_and_models_endpoint() -> None:
    async with MockOpenAIServer(lambda body: "hi") as srv:
        root = srv.base_url.removesuffix("/v1")
        client = openai.AsyncOpenAI(base_url=root, api_key="k", max_retries=0, timeout=5)
        try:
            r = await _ask(client, "x")  # POST /chat/completions
            assert r.choices[0].message.content == "hi"
        finally:
            await client.close()
        async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="k", max_retries=0) as client2:
            models = await client2.models.list()
        assert [m.id for m in models.data] == ["mock-model"]
