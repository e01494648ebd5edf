"""The tool registry: validates every tool call, runs it, records the result.

Checks, in order: the tool is known, enabled by the policy, allowed for the
caller's role, and its arguments validate against the tool's ``Args`` model.
Each refusal is a :class:`ToolResult` with ``ok=False`` and a message that
tells the agent what to fix; a tool that raises becomes one too. Every
execution, refusals included, goes to the optional ``recorder``.
"""
from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ValidationError

from agency.errors import AgencyError, SettingsError
from agency.ports import Memory
from agency.tools.base import ROLES, Tool, ToolCall, ToolContext, ToolResult, clip
from agency.tools.isolation import isolation_status
from agency.tools.python_sandbox import PythonTool, SandboxLimits
from agency.tools.retrieve import RetrieveTool
from agency.tools.web_search import DISABLED_MESSAGE, WebSearchTool

log = logging.getLogger(__name__)

__all__ = ["Recorder", "ToolPolicy", "ToolRegistry", "build_registry"]

Recorder = Callable[[ToolContext, ToolCall, ToolResult], Awaitable[None]]

BUILTIN_TOOLS: tuple[str, ...] = ("retrieve", "python", "web_search")


@dataclass(frozen=True)
class ToolPolicy:
    """Which tools run and within which limits (the ``[tools]`` table of config.toml)."""

    enabled: frozenset[str] = frozenset(BUILTIN_TOOLS)
    python: SandboxLimits = field(default_factory=SandboxLimits)
    web_search_enabled: bool = False
    max_calls_per_turn: int = 3
    max_output_chars: int = 8000  # for every tool's output

    def is_enabled(self, name: str) -> bool:
        if name == "web_search" and not self.web_search_enabled:
            return False
        return name in self.enabled

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> ToolPolicy:
        """Build from the ``[tools]`` table::

            [tools]
            enabled = ["retrieve", "python", "web_search"]
            web_search = false
            max_calls_per_turn = 3

            [tools.python]
            cpu_seconds = 5
            memory_mb = 256
            wall_seconds = 10
            output_chars = 8000
        """
        data = dict(data or {})
        known = {"enabled", "web_search", "max_calls_per_turn", "max_output_chars", "python"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(f"unknown setting tools.{unknown[0]} (known: {', '.join(sorted(known))})")
        kwargs: dict[str, Any] = {}
        if "enabled" in data:
            names = data["enabled"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise SettingsError("tools.enabled must be a list of tool names, e.g. [\"retrieve\", \"python\"]")
            kwargs["enabled"] = frozenset(names)
        if "web_search" in data:
            if not isinstance(data["web_search"], bool):
                raise SettingsError("tools.web_search must be true or false")
            kwargs["web_search_enabled"] = data["web_search"]
        for key in ("max_calls_per_turn", "max_output_chars"):
            if key in data:
                value = data[key]
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise SettingsError(f"tools.{key} must be a positive whole number")
                kwargs[key] = value
        if "python" in data:
            table = data["python"]
            if not isinstance(table, Mapping):
                raise SettingsError("tools.python must be a table, e.g. [tools.python] cpu_seconds = 5")
            fields = set(SandboxLimits.__dataclass_fields__)
            for key, value in table.items():
                if key not in fields:
                    raise SettingsError(f"unknown setting tools.python.{key} (known: {', '.join(sorted(fields))})")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise SettingsError(f"tools.python.{key} must be a positive number")
                if key != "wall_seconds" and not isinstance(value, int):
                    raise SettingsError(f"tools.python.{key} must be a whole number")
            kwargs["python"] = SandboxLimits(**table)
        return cls(**kwargs)


@functools.cache
def _schema_for_prompt(model: type[BaseModel]) -> str:
    """The Args JSON schema without titles: shorter, same meaning."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "title"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return json.dumps(strip(model.model_json_schema()), separators=(",", ":"), ensure_ascii=False)


def _format_validation(tool: Tool, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(arguments)"
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown argument; remove it"
        elif err.get("type") == "missing":
            msg = "required argument is missing"
        problems.append(f"'{loc}': {msg}")
    return (
        f"invalid arguments for tool '{tool.name}': " + "; ".join(problems)
        + f". Expected arguments (JSON schema): {_schema_for_prompt(tool.Args)}"
    )


class ToolRegistry:
    """Validates and runs tool calls for agents."""

    def __init__(
        self,
        tools: Iterable[Tool],
        policy: ToolPolicy | None = None,
        *,
        recorder: Recorder | None = None,
        unavailable: Mapping[str, str] | None = None,
    ) -> None:
        self.policy = policy or ToolPolicy()
        self.recorder = recorder
        # enabled tools that cannot run on this machine (name -> why): never offered, refused if called
        self.unavailable = dict(unavailable or {})
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            if tool.name in self._tools:
                raise ValueError(f"two tools are named {tool.name!r}")
            bad = set(tool.roles) - ROLES
            if bad:
                raise ValueError(f"tool {tool.name!r} names unknown roles: {sorted(bad)}")
            self._tools[tool.name] = tool

    @property
    def names(self) -> list[str]:
        return sorted(self._tools)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def available_for(self, role: str) -> list[Tool]:
        """The tools this role may call under the current policy."""
        return [t for n, t in sorted(self._tools.items()) if self.policy.is_enabled(n) and role in t.roles]

    def describe_for(self, role: str) -> str:
        """Prompt text: the tools this role may call and how to call them."""
        tools = self.available_for(role)
        if not tools:
            return "You have no tools."
        lines = [
            f"Tools you can call (at most {self.policy.max_calls_per_turn} per turn), "
            'each as {"tool": "<name>", "args": {...}}; the results come back to you in the next message:',
        ]
        for tool in tools:
            lines.append(f"- {tool.name}: {tool.description}\n  args: {_schema_for_prompt(tool.Args)}")
        return "\n".join(lines)

    def _refusal(self, call: ToolCall, ctx: ToolContext) -> str | None:
        tool = self._tools.get(call.tool)
        allowed = [t.name for t in self.available_for(ctx.role)]
        if tool is None and call.tool in self.unavailable and self.policy.is_enabled(call.tool):
            return f"the tool '{call.tool}' is not available on this machine ({self.unavailable[call.tool]})"
        if tool is None:
            known = ", ".join(allowed) if allowed else "none"
            return f"unknown tool '{call.tool}'; the tools you can call are: {known}"
        if not self.policy.is_enabled(call.tool):
            if call.tool == "web_search":
                return DISABLED_MESSAGE
            return f"the tool '{call.tool}' is disabled in this agency's settings (tools.enabled in config.toml)"
        if ctx.role not in tool.roles:
            known = ", ".join(allowed) if allowed else "none"
            return f"the tool '{call.tool}' is not available to the {ctx.role} role; the tools you can call are: {known}"
        return None

    async def execute(self, call: ToolCall, ctx: ToolContext) -> ToolResult:
        """Validate and run one call. Failures come back as ``ok=False`` results, never as exceptions."""
        start = time.monotonic()
        refusal = self._refusal(call, ctx)
        if refusal is not None:
            log.info("tool refused: %s for %s (%s): %s", call.tool, ctx.member, ctx.role, refusal)
            result = ToolResult.failure(call.tool, refusal)
        else:
            tool = self._tools[call.tool]
            try:
                args = tool.Args.model_validate(call.args)
            except ValidationError as exc:
                result = ToolResult.failure(call.tool, _format_validation(tool, exc))
            else:
                result = await self._run(tool, args, ctx)
        output, cut = clip(result.output, self.policy.max_output_chars)
        result = replace(
            result,
            tool=call.tool,
            output=output,
            truncated=result.truncated or cut,
            duration_ms=result.duration_ms or int((time.monotonic() - start) * 1000),
        )
        await self._record(ctx, call, result)
        return result

    async def execute_many(self, calls: Iterable[ToolCall], ctx: ToolContext) -> list[ToolResult]:
        """Run a turn's calls in order, refusing those past ``max_calls_per_turn``."""
        results = []
        limit = self.policy.max_calls_per_turn
        for i, call in enumerate(calls):
            if i >= limit:
                result = ToolResult.failure(
                    call.tool, f"only {limit} tool calls are allowed per turn; this call was skipped, ask again next turn"
                )
                await self._record(ctx, call, result)
            else:
                result = await self.execute(call, ctx)
            results.append(result)
        return results

    async def _run(self, tool: Tool, args: BaseModel, ctx: ToolContext) -> ToolResult:
        try:
            result = await tool.run(args, ctx)
        except AgencyError as exc:
            return ToolResult.failure(tool.name, exc.user_message)
        except Exception as exc:
            log.exception("tool %s failed for %s", tool.name, ctx.member)
            return ToolResult.failure(tool.name, f"the tool failed: {type(exc).__name__}: {exc}")
        if not isinstance(result, ToolResult):
            raise TypeError(f"tool {tool.name!r} returned {type(result).__name__}, not a ToolResult")
        return result

    async def _record(self, ctx: ToolContext, call: ToolCall, result: ToolResult) -> None:
        if self.recorder is None:
            return
        try:
            await self.recorder(ctx, call, result)
        except Exception:  # recording must not break the agent's turn
            log.exception("tool recorder failed for %s", call.tool)


def build_registry(
    policy: ToolPolicy | None = None,
    *,
    memory: Memory | None = None,
    recorder: Recorder | None = None,
    extra_tools: Iterable[Tool] = (),
) -> ToolRegistry:
    """The registry with the built-in tools, configured by ``policy``.

    ``python`` is registered only when real process isolation works here
    (probed once per process, :func:`agency.tools.isolation.isolation_status`);
    otherwise it is not offered to models, a warning says what to install, and
    a call to it is refused.
    """
    policy = policy or ToolPolicy()
    tools: list[Tool] = [RetrieveTool(memory)]
    unavailable: dict[str, str] = {}
    status = isolation_status() if policy.is_enabled("python") else None  # disabled: no probe, refused as disabled
    if status is None or status.available:
        tools.append(PythonTool(policy.python))
    else:
        unavailable["python"] = f"no process isolation: {status.reason}"
    tools += [WebSearchTool(enabled=policy.web_search_enabled), *extra_tools]
    return ToolRegistry(tools, policy, recorder=recorder, unavailable=unavailable)
