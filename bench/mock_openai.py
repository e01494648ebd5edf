"""A local mock of the OpenAI chat-completions API, for tests and benchmarks.

Stdlib only: ``asyncio.start_server`` plus a tiny HTTP/1.1 parser (keep-alive,
``Content-Length`` and chunked request bodies). It binds 127.0.0.1 on an
ephemeral port and answers ``POST /v1/chat/completions`` (and
``/chat/completions``); ``GET /v1/models`` lists one model.

A *handler* decides what the model says::

    def handler(body: dict) -> str | dict | MockFault: ...

It may be sync or async. A ``str`` is the reply content as is, a ``dict`` is
``json.dumps``-ed, a :class:`MockFault` injects a failure (HTTP status with an
optional ``Retry-After``, a delay, a dropped connection, or raw invalid
content). The server wraps the content into a proper ``chat.completion``
honouring the request's structured-output mode: a forced tool call gets a
``tool_calls`` answer whose ``function.arguments`` is the content, anything else
gets ``message.content``.

``refuse_modes`` makes the server refuse structured-output modes: a request
using a refused mode (``"json_schema"``, ``"json_object"``, ``"tool"``) gets
an error whose message names the refused field (``response_format`` or
``tools``) and never reaches the handler. ``refuse_status`` is its HTTP status:
400 is how current servers refuse (OpenAI, vLLM, Ollama, llama.cpp); the
default 500 is how old llama.cpp builds answered ``json_schema``.

``burst(fault, count)`` answers the next ``count`` chat requests with
``fault`` before anything else (e.g. a burst of 500s during an outage).

Run standalone with an echo handler: ``python -m bench.mock_openai --port 8000``.
"""
from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

__all__ = ["MockFault", "MockOpenAIServer", "request_mode", "estimate_tokens", "echo_handler"]

_MAX_HEADER = 64 * 1024
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
}


@dataclass
class MockFault:
    """A failure a handler can inject instead of an answer.

    Applied in this order: ``delay`` (sleep first; longer than the client's
    timeout to provoke a timeout), then ``drop`` (close the connection without
    answering), then ``status`` (an HTTP error with a JSON error body, or
    ``body`` as the raw HTTP body when given; ``retry_after`` sets the
    ``Retry-After`` header), else a normal 200 answer whose content is ``body``
    verbatim (e.g. ``"```json {bad"``), ``""`` when ``body`` is None.
    """

    status: int | None = None
    retry_after: float | str | None = None
    delay: float = 0.0
    drop: bool = False
    body: str | None = None
    message: str | None = None  # error message for ``status``
    param: str | None = None  # the error body's ``param`` (the request field the server objects to)
    headers: dict[str, str] | None = None  # extra response headers


Handler = Callable[[dict[str, Any]], "str | dict[str, Any] | MockFault | Awaitable[str | dict[str, Any] | MockFault]"]


def estimate_tokens(text: str) -> int:
    """The mock's token estimate: ceil(len(text) / 4)."""
    return math.ceil(len(text) / 4) if text else 0


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def request_mode(body: dict[str, Any]) -> str | None:
    """The structured-output mode a request uses: json_schema, json_object, tool or None."""
    rf = body.get("response_format")
    if isinstance(rf, dict):
        kind = rf.get("type")
        if kind == "json_schema":
            return "json_schema"
        if kind == "json_object":
            return "json_object"
    if body.get("tools"):
        return "tool"
    return None


def _forced_tool(body: dict[str, Any]) -> str | None:
    """The function name the request forces, or None when no tool call is forced."""
    tools = body.get("tools") or []
    if not tools:
        return None
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        fn = choice.get("function") or {}
        if isinstance(fn, dict) and fn.get("name"):
            return str(fn["name"])
        return _first_tool_name(tools)
    if choice == "required":
        return _first_tool_name(tools)
    return None


def _first_tool_name(tools: list[Any]) -> str:
    first = tools[0] if tools else {}
    if isinstance(first, dict):
        fn = first.get("function") or {}
        if isinstance(fn, dict) and fn.get("name"):
            return str(fn["name"])
    return "tool"


def echo_handler(body: dict[str, Any]) -> dict[str, Any]:
    """A trivial handler: echoes the last user message."""
    last = ""
    for msg in body.get("messages") or []:
        if isinstance(msg, dict) and msg.get("role") == "user":
            last = _content_text(msg.get("content"))
    return {"echo": last}


class MockOpenAIServer:
    """An in-process chat-completions server on 127.0.0.1.

    Counters: ``calls`` (chat-completion requests received, faults and refusals
    included), ``prompt_tokens`` / ``completion_tokens`` (the ``usage`` of every
    answered request, summed), ``requests`` (every received JSON body, in order).
    """

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        seed: int = 0,
        refuse_modes: set[str] | frozenset[str] | None = None,
        refuse_status: int = 500,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = "mock-model",
    ) -> None:
        self.handler: Handler = handler or echo_handler
        self.latency = max(0.0, float(latency))
        self.jitter = max(0.0, float(jitter))
        self.refuse_modes: set[str] = set(refuse_modes or ())
        self.refuse_status = int(refuse_status)
        self._burst: list[MockFault] = []
        self.host = host
        self.port = port
        self.model = model
        self._rng = random.Random(seed)
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.requests: list[dict[str, Any]] = []
        self.answered = 0  # requests that got a 200 chat.completion
        self.faults = 0  # requests answered with an error status, dropped, or refused

    # ---- lifecycle ---------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("MockOpenAIServer is not started")
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> str:
        if self._server is None:
            self._server = await asyncio.start_server(self._on_connect, self.host, self.port, limit=_MAX_HEADER)
            self.port = self._server.sockets[0].getsockname()[1]
            log.debug("mock OpenAI server listening on %s:%s", self.host, self.port)
        return self.base_url

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.close()
        tasks = list(self._conns)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> MockOpenAIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def burst(self, fault: MockFault, count: int) -> None:
        """Answer the next ``count`` chat requests with ``fault`` (before the refusals and the handler)."""
        self._burst.extend([fault] * max(0, int(count)))

    @property
    def burst_left(self) -> int:
        """Faults of the burst not yet served."""
        return len(self._burst)

    def reset(self) -> None:
        """Zero the counters and forget the recorded requests."""
        self.calls = self.prompt_tokens = self.completion_tokens = self.answered = self.faults = 0
        self.requests.clear()

    # ---- connection loop ---------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self._writers.add(writer)
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    break
                method, path, headers, body = request
                keep_alive = headers.get("connection", "").lower() != "close"
                response = await self._dispatch(method, path, body)
                if response is None:  # drop
                    break
                writer.write(response)
                await writer.drain()
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # never let a bug kill the server silently
            log.exception("mock OpenAI server: connection failed")
        finally:
            self._writers.discard(writer)
            self._conns.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, asyncio.CancelledError):
                pass
            except Exception:  # pragma: no cover
                pass

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None  # client closed the keep-alive connection
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until an empty line
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(parts)
        else:
            length = int(headers.get("content-length", "0") or 0)
            if length:
                body = await reader.readexactly(length)
        return method.upper(), urlsplit(target).path, headers, body

    # ---- routing -----------------------------------------------------------

    async def _dispatch(self, method: str, path: str, raw: bytes) -> bytes | None:
        path = path.rstrip("/")
        if path.endswith("/chat/completions"):
            if method != "POST":
                return self._error(405, "Use POST for chat completions.")
            try:
                body = json.loads(raw) if raw else {}
                if not isinstance(body, dict):
                    raise ValueError("the request body is not a JSON object")
            except ValueError as exc:
                self.calls += 1
                self.faults += 1
                return self._error(400, f"Invalid JSON body: {exc}")
            return await self._chat(body)
        if path.endswith("/models") and method == "GET":
            payload = {"object": "list", "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "mock"}]}
            return self._response(200, json.dumps(payload).encode())
        return self._error(404, f"Unknown endpoint {method} {path}")

    async def _chat(self, body: dict[str, Any]) -> bytes | None:
        self.calls += 1
        self.requests.append(body)
        delay = self.latency + (self._rng.uniform(0.0, self.jitter) if self.jitter else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)

        result: Any
        if self._burst:
            result = self._burst.pop(0)
        else:
            mode = request_mode(body)
            if mode is not None and mode in self.refuse_modes:
                self.faults += 1
                field = "tools" if mode == "tool" else f"response_format of type {mode!r}"
                return self._error(
                    self.refuse_status,
                    f"mock server: {field} is not supported (structured-output mode {mode!r})",
                    err_type="server_error" if self.refuse_status >= 500 else None,
                    param="tools" if mode == "tool" else "response_format",
                )
            try:
                result = self.handler(body)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                log.exception("mock OpenAI handler failed")
                self.faults += 1
                return self._error(500, f"mock handler failed: {type(exc).__name__}", err_type="server_error")

        if isinstance(result, MockFault):
            fault = result
            if fault.delay > 0:
                await asyncio.sleep(fault.delay)
            if fault.drop:
                self.faults += 1
                return None
            if fault.status is not None and fault.status != 200:
                self.faults += 1
                headers = dict(fault.headers or {})
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(fault.retry_after)
                if fault.body is not None:
                    return self._response(fault.status, fault.body.encode(), headers, content_type="text/plain")
                return self._error(fault.status, fault.message or _REASONS.get(fault.status, "error"), headers=headers,
                                   param=fault.param)
            content = fault.body or ""
        elif isinstance(result, str):
            content = result
        elif result is None:
            content = ""
        else:
            content = json.dumps(result)
        return self._completion(body, content)

    def _completion(self, body: dict[str, Any], content: str) -> bytes:
        prompt_text = "".join(_content_text(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict))
        prompt_tokens = estimate_tokens(prompt_text)
        completion_tokens = estimate_tokens(content)
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.answered += 1

        message: dict[str, Any] = {"role": "assistant", "content": content}
        finish = "stop"
        tool = _forced_tool(body)
        if tool is not None:
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_" + uuid.uuid4().hex[:24],
                        "type": "function",
                        "function": {"name": tool, "arguments": content},
                    }
                ],
            }
            finish = "tool_calls"
        payload = {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return self._response(200, json.dumps(payload).encode())

    # ---- HTTP encoding -----------------------------------------------------

    def _error(
        self, status: int, message: str, *, err_type: str | None = None, headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> bytes:
        kind = err_type or _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        payload = {"error": {"message": message, "type": kind, "param": param, "code": status}}
        return self._response(status, json.dumps(payload).encode(), headers)

    @staticmethod
    def _response(
        status: int, data: bytes, headers: dict[str, str] | None = None, *, content_type: str = "application/json"
    ) -> bytes:
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(data)}",
            "Connection: keep-alive",
        ]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


async def _serve(port: int, latency: float, refuse: set[str], refuse_status: int = 500) -> None:
    server = MockOpenAIServer(echo_handler, latency=latency, port=port, refuse_modes=refuse, refuse_status=refuse_status)
    url = await server.start()
    print(f"mock OpenAI server on {url} (echo handler); Ctrl-C to stop", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A local mock of the OpenAI chat-completions API (echo handler).")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = ephemeral)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every call")
    parser.add_argument(
        "--refuse", action="append", default=[], choices=["json_schema", "json_object", "tool"],
        help="refuse a structured-output mode (repeatable)",
    )
    parser.add_argument("--refuse-status", type=int, default=500, help="HTTP status of a refusal (400 or 500)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        asyncio.run(_serve(args.port, args.latency, set(args.refuse), args.refuse_status))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
