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

:class:`MockOpenAIServer` runs in the caller's event loop (the tests use it so).
:class:`MockProcess` runs the same server in a child process, driven over its
stdin/stdout, so that its work shares neither the CPU time, the interpreter
lock nor the event loop of the process under test (the benchmarks use it so).

Run standalone with an echo handler: ``python -m bench.mock_openai --port 8000``
(``--handler module:attr`` for another, ``--latency 0.5`` for a slow model;
it prints the address it bound on its first line).
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import math
import os
import random
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self, TextIO
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

__all__ = ["MockFault", "MockOpenAIServer", "MockProcess", "echo_handler", "estimate_tokens", "load_handler", "request_mode"]

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


# ---- the server in a process of its own -------------------------------------------------------------
#
# ``python -m bench.mock_openai --control`` serves until its stdin closes: a benchmark keeps the mock
# out of the engine's process (its CPU, its interpreter lock, its event loop) and drives it through
# :class:`MockProcess`. The protocol is one JSON object per line: the child's first stdout line is
# ``{"ready": true, "port": ..., "base_url": ..., "pid": ...}``, then it answers each command read on
# stdin (``{"op": "stats" | "reset" | "set" | "burst" | "ping" | "stop", ...}``) with one line on
# stdout (``{"error": "..."}`` when the command failed). Closing stdin stops it, so does the parent's
# death (the pipe closes with it), so the child never outlives the bench; it ignores SIGINT (a Ctrl-C
# in the terminal reaches the whole process group: the parent decides when the mock stops) and stops
# on SIGTERM.

_ROOT = Path(__file__).resolve().parents[1]


def load_handler(spec: str | None, args: dict[str, Any] | None = None) -> Handler:
    """The handler named ``module:attr`` (``None``: :func:`echo_handler`).

    A class is instantiated with ``**args``; any other callable is called with ``**args`` to make the
    handler when ``args`` is given, else used as the handler itself.
    """
    if not spec:
        return echo_handler
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"a handler is named module:attr, not {spec!r}")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    if inspect.isclass(obj) or args is not None:
        obj = obj(**(args or {}))
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    return obj  # type: ignore[no-any-return]


def _command(server: MockOpenAIServer, cmd: dict[str, Any]) -> dict[str, Any]:
    """One control command of the child process, answered with a JSON-ready dict."""
    op = cmd.get("op")
    handler: Any = server.handler
    if op == "ping":
        return {"ok": True}
    if op == "stats":
        out: dict[str, Any] = {
            "calls": server.calls,
            "answered": server.answered,
            "faults": server.faults,
            "prompt_tokens": server.prompt_tokens,
            "completion_tokens": server.completion_tokens,
            "latency": server.latency,
            "jitter": server.jitter,
            "burst_left": server.burst_left,
            "cpu_s": time.process_time(),  # the whole mock process: its server, handler and control channel
            "handler": handler.stats() if callable(getattr(handler, "stats", None)) else None,
        }
        if cmd.get("requests"):
            out["requests"] = server.requests
        return out
    if op == "reset":
        server.reset()
        if callable(getattr(handler, "reset", None)):
            handler.reset()
        return {"ok": True}
    if op == "set":
        if "latency" in cmd:
            server.latency = max(0.0, float(cmd["latency"]))
        if "jitter" in cmd:
            server.jitter = max(0.0, float(cmd["jitter"]))
        if "refuse_modes" in cmd:
            server.refuse_modes = set(cmd["refuse_modes"] or ())
        if "refuse_status" in cmd:
            server.refuse_status = int(cmd["refuse_status"])
        return {"ok": True}
    if op == "burst":
        server.burst(MockFault(**(cmd.get("fault") or {})), int(cmd.get("count", 1)))
        return {"ok": True, "burst_left": server.burst_left}
    if op == "stop":
        return {"ok": True}
    raise ValueError(f"unknown command {op!r}")


async def _serve_controlled(server: MockOpenAIServer, out: TextIO) -> None:
    """Serve until stdin closes, a ``stop`` command or SIGTERM; answer the commands read on stdin."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    try:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Unix
        pass
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(answer: dict[str, Any]) -> bool:
        try:
            out.write(json.dumps(answer, default=str) + "\n")
            out.flush()
            return True
        except (OSError, ValueError):  # the parent is gone
            return False

    async def control() -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:  # EOF: the parent closed the pipe, or died
                    return
                if not line.strip():
                    continue
                op = None
                try:
                    cmd = json.loads(line)
                    if not isinstance(cmd, dict):
                        raise TypeError("a command is a JSON object")
                    op = cmd.get("op")
                    answer = _command(server, cmd)
                except Exception as exc:  # noqa: BLE001 - report it, keep serving
                    answer = {"error": f"{type(exc).__name__}: {exc}"}
                if not reply(answer) or op == "stop":
                    return
        finally:
            stop.set()

    url = await server.start()
    task = asyncio.ensure_future(control())
    reply({"ready": True, "port": server.port, "base_url": url, "pid": os.getpid()})
    try:
        await stop.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()


class MockProcess:
    """A :class:`MockOpenAIServer` in a child process (``python -m bench.mock_openai --control``), on 127.0.0.1.

    ``handler`` names the handler to load there (``"module:attr"``, see :func:`load_handler`;
    ``handler_args`` must be JSON). :meth:`start` returns once the child has bound its port and said
    so (no polling, no sleeps); :meth:`stats`, :meth:`reset`, :meth:`set` and :meth:`burst` talk to it
    over its stdin/stdout and block until it answers (call them while nothing is measured);
    :meth:`stop` closes its stdin and reaps it (SIGTERM, then SIGKILL if it lingers). Use it as a
    context manager. The child also exits when this process dies, whatever kills it.
    """

    def __init__(
        self,
        handler: str | None = None,
        handler_args: dict[str, Any] | None = None,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        seed: int = 0,
        refuse_modes: set[str] | frozenset[str] | None = None,
        refuse_status: int = 500,
        model: str = "mock-model",
        start_timeout: float = 60.0,
        reply_timeout: float = 60.0,
    ) -> None:
        self.handler = handler
        self.handler_args = handler_args
        self.latency = latency
        self.jitter = jitter
        self.seed = seed
        self.refuse_modes = set(refuse_modes or ())
        self.refuse_status = refuse_status
        self.model = model
        self.start_timeout = start_timeout
        self.reply_timeout = reply_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.pid: int | None = None
        self.returncode: int | None = None
        self._base_url: str | None = None
        self._buf = b""

    def argv(self) -> list[str]:
        cmd = [sys.executable, "-m", "bench.mock_openai", "--control", "--port", "0",
               "--latency", repr(self.latency), "--jitter", repr(self.jitter), "--seed", str(self.seed),
               "--refuse-status", str(self.refuse_status), "--model", self.model]
        for mode in sorted(self.refuse_modes):
            cmd += ["--refuse", mode]
        if self.handler:
            cmd += ["--handler", self.handler]
        if self.handler_args is not None:
            cmd += ["--handler-args", json.dumps(self.handler_args)]
        return cmd

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("MockProcess is not started")
        return self._base_url

    def start(self) -> str:
        if self.proc is not None:
            return self.base_url
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
        self._buf = b""
        self.returncode = None
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=_ROOT, env=env)
        try:
            ready = self._read(self.start_timeout)
            if not ready.get("ready"):
                raise RuntimeError(f"the mock server process did not start: {ready}")
        except BaseException:
            self.stop()
            raise
        self.port, self.pid, self._base_url = int(ready["port"]), int(ready["pid"]), str(ready["base_url"])
        log.debug("mock OpenAI server process %s listening on %s", self.pid, self._base_url)
        return self._base_url

    def _read(self, timeout: float) -> dict[str, Any]:
        """The child's next stdout line, parsed (raw reads from the pipe: no buffer hides a line from select)."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the mock server process said nothing for {timeout:g} s")
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise RuntimeError(f"the mock server process exited (code {self.proc.wait()})")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        answer = json.loads(line)
        if not isinstance(answer, dict):
            raise TypeError(f"the mock server process said {line[:200]!r}")
        return answer

    def _ask(self, op: str, **kw: Any) -> dict[str, Any]:
        if self.proc is None or self.proc.stdin is None:
            raise RuntimeError("MockProcess is not started")
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kw}).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise RuntimeError(f"the mock server process is gone (code {self.proc.poll()})") from exc
        answer = self._read(self.reply_timeout)
        if "error" in answer:
            raise RuntimeError(f"mock server process: {answer['error']}")
        return answer

    def stats(self, *, requests: bool = False) -> dict[str, Any]:
        """The server's counters (``calls``, ``answered``, ``faults``, ``prompt_tokens``,
        ``completion_tokens``), its ``latency``, the child's CPU seconds (``cpu_s``), the handler's
        ``stats()`` when it has one (``handler``), and with ``requests`` every received body."""
        return self._ask("stats", requests=requests)

    def reset(self) -> None:
        """Zero the counters, forget the requests, and reset the handler when it has a ``reset()``."""
        self._ask("reset")

    def set(self, **settings: Any) -> None:
        """Change ``latency``, ``jitter``, ``refuse_modes`` or ``refuse_status`` for the next requests."""
        self._ask("set", **settings)
        for name in ("latency", "jitter", "refuse_status"):
            if name in settings:
                setattr(self, name, settings[name])

    def burst(self, fault: MockFault, count: int) -> None:
        """Answer the next ``count`` chat requests with ``fault`` (see :meth:`MockOpenAIServer.burst`)."""
        self._ask("burst", fault=asdict(fault), count=count)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Close the child's stdin (it stops serving and exits) and reap it; its exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return self.returncode
        try:
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            try:
                self.returncode = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    self.returncode = proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    self.returncode = proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
            self._base_url = None
        return self.returncode

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- command line -------------------------------------------------------------------------------------

async def _serve(server: MockOpenAIServer, label: str) -> None:
    url = await server.start()
    print(f"mock OpenAI server on {url} ({label}); Ctrl-C to stop", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A local mock of the OpenAI chat-completions API, on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = ephemeral)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every call")
    parser.add_argument("--jitter", type=float, default=0.0, help="up to this many seconds more, at random")
    parser.add_argument("--seed", type=int, default=0, help="seed of the jitter")
    parser.add_argument(
        "--refuse", action="append", default=[], choices=["json_schema", "json_object", "tool"],
        help="refuse a structured-output mode (repeatable)",
    )
    parser.add_argument("--refuse-status", type=int, default=500, help="HTTP status of a refusal (400 or 500)")
    parser.add_argument("--model", default="mock-model", help="the model GET /v1/models lists")
    parser.add_argument("--handler", default=None, help="module:attr of the handler (default: echo the last user message)")
    parser.add_argument("--handler-args", default=None, help="JSON keyword arguments that make the handler")
    parser.add_argument("--control", action="store_true",
                        help="driven by a parent process: JSON lines on stdin/stdout, stop when stdin closes")
    args = parser.parse_args(argv)
    handler = load_handler(args.handler, json.loads(args.handler_args) if args.handler_args else None)
    server = MockOpenAIServer(handler, latency=args.latency, jitter=args.jitter, seed=args.seed, port=args.port,
                              refuse_modes=set(args.refuse), refuse_status=args.refuse_status, model=args.model)
    if args.control:
        logging.basicConfig(level=logging.WARNING)  # to stderr: stdout is the control channel
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the mock stops
        out, sys.stdout = sys.stdout, sys.stderr  # a stray print must not corrupt the channel
        asyncio.run(_serve_controlled(server, out))
        return
    logging.basicConfig(level=logging.INFO)
    try:
        asyncio.run(_serve(server, args.handler or "echo handler"))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
