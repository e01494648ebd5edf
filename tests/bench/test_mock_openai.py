"""Smoke tests for the local chat-completions mock."""
from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

from bench.mock_openai import MockFault, MockOpenAIServer, MockProcess, estimate_tokens, request_mode

ROOT = Path(__file__).resolve().parents[2]


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


# -- the server in a process of its own (what the benchmarks use) ---------------------------------------

def _exits_within(pid: int, timeout: float) -> bool:
    """True once process ``pid`` (not necessarily our child) has exited; waits on a pidfd, no polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


async def test_process_mode_counts_controls_and_stops() -> None:
    with MockProcess("bench.roles:RoleHandler", {"shape": "aggregate:2"}, latency=0.05) as mock:
        assert mock.base_url.startswith("http://127.0.0.1:") and mock.pid != os.getpid()
        client = openai.AsyncOpenAI(base_url=mock.base_url, api_key="k", max_retries=0, timeout=10)
        try:
            replies = await asyncio.gather(*(_ask(client, f"question {i}") for i in range(4)))
            stats = mock.stats(requests=True)
            assert stats["calls"] == stats["answered"] == 4 and stats["latency"] == 0.05
            assert stats["prompt_tokens"] == sum(r.usage.prompt_tokens for r in replies)
            assert stats["completion_tokens"] == sum(r.usage.completion_tokens for r in replies)
            assert sorted(b["messages"][0]["content"] for b in stats["requests"]) == [f"question {i}" for i in range(4)]
            assert stats["handler"]["by_schema"] == {"?": 4} and len(stats["handler"]["log"]) == 4
            assert stats["cpu_s"] > 0

            mock.set(latency=0.0)
            mock.burst(MockFault(status=503), 1)
            try:
                await _ask(client, "x")
            except openai.InternalServerError as exc:
                assert exc.status_code == 503
            else:
                raise AssertionError("expected the burst's 503")
            mock.reset()
            stats = mock.stats()
            assert stats["calls"] == stats["prompt_tokens"] == 0 and stats["latency"] == 0.0
            assert stats["handler"] == {"by_schema": {}, "log": []}
        finally:
            await client.close()
        pid = mock.pid
    assert mock.returncode == 0 and mock.proc is None
    assert pid is not None and _exits_within(pid, 5)


def test_process_ignores_ctrl_c_and_reports_bad_commands() -> None:
    """A Ctrl-C reaches the whole process group: the parent, not the mock, decides when it stops."""
    with MockProcess() as mock:
        assert mock.pid is not None
        os.kill(mock.pid, signal.SIGINT)
        assert mock._ask("ping") == {"ok": True}
        with pytest.raises(RuntimeError, match="unknown command"):
            mock._ask("nope")
    assert mock.returncode == 0


def test_process_bad_handler_fails_fast() -> None:
    mock = MockProcess("bench.no_such_module:handler")
    with pytest.raises(RuntimeError, match="exited"):
        mock.start()
    assert mock.proc is None and mock.returncode not in (None, 0)


def test_process_dies_with_its_parent() -> None:
    """The mock exits when the process that started it is killed outright (no orphan)."""
    code = (
        "import sys\n"
        "from bench.mock_openai import MockProcess\n"
        "m = MockProcess(latency=0.5).__enter__()\n"
        "print(m.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)
    try:
        assert parent.stdout is not None
        mock_pid = int(parent.stdout.readline())
        assert not _exits_within(mock_pid, 0)
        parent.kill()
        parent.wait(10)
        assert _exits_within(mock_pid, 10)
    finally:
        parent.kill()
        parent.wait(10)


def test_standalone_prints_its_address_first() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "bench.mock_openai", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:(\d+)/v1", first)
        assert url, first
        with socket.create_connection(("127.0.0.1", int(url.group(1))), timeout=5):
            pass
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait(10)
