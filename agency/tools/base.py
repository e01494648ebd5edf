"""The tool port: typed inputs, a context, a result.

A tool call is an *intent* (:class:`ToolCall`) that an agent puts in its turn.
The :class:`~agency.tools.registry.ToolRegistry` validates it (known tool,
enabled, allowed for the role, arguments well-formed) before the tool's
:meth:`Tool.run` sees a typed ``Args`` instance; every outcome is a
:class:`ToolResult`, refusals included.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from agency.errors import AgencyError

log = logging.getLogger(__name__)

__all__ = [
    "ROLES",
    "Tool",
    "ToolArgs",
    "ToolCall",
    "ToolContext",
    "ToolError",
    "ToolResult",
    "clip",
]

ROLES: frozenset[str] = frozenset({"pm", "collaborator", "specialist", "learning"})


class ToolError(AgencyError):
    """A tool could not do what was asked; ``user_message`` says why."""


class ToolCall(BaseModel):
    """An agent's request to run a tool: ``{"tool": "python", "args": {"code": "..."}}``."""

    model_config = ConfigDict(extra="forbid")

    tool: str = Field(min_length=1, max_length=64, description="the tool's name")
    args: dict[str, Any] = Field(default_factory=dict, description="the tool's arguments")


class ToolArgs(BaseModel):
    """Base of every tool's ``Args``: unknown arguments are an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ToolContext:
    """Who is calling, and for what."""

    agency_id: int
    member: str  # the caller's handle, e.g. "Researcher-A"
    role: str  # pm | collaborator | specialist | learning
    project_id: int | None = None
    task_key: str | None = None


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one call. ``output`` is what the agent sees next."""

    tool: str
    ok: bool
    output: str = ""
    error: str | None = None
    duration_ms: int = 0
    truncated: bool = False

    @classmethod
    def failure(cls, tool: str, error: str, *, output: str = "", duration_ms: int = 0) -> ToolResult:
        return cls(tool=tool, ok=False, output=output, error=error, duration_ms=duration_ms)

    def for_agent(self) -> str:
        """The text to feed back to the model."""
        if self.ok:
            return self.output if self.output else "(no output)"
        text = f"ERROR: {self.error}"
        if self.output:
            text += "\n" + self.output
        return text


@runtime_checkable
class Tool(Protocol):
    """What every tool provides."""

    name: str
    description: str
    roles: frozenset[str]

    @property
    def Args(self) -> type[BaseModel]:
        """The arguments model (a ClassVar in each tool); read-only here, so a tool may name its own subclass."""
        ...

    async def run(self, args: Any, ctx: ToolContext) -> ToolResult: ...


def clip(text: str, limit: int) -> tuple[str, bool]:
    """Cut ``text`` to at most ``limit`` characters, keeping its head and tail.

    Returns the text and whether it was cut. The marker in the middle says how
    much is missing, so an agent knows its output was shortened.
    """
    if limit <= 0:
        return "", bool(text)
    if len(text) <= limit:
        return text, False
    marker = ""
    for _ in range(3):  # the marker's length depends on the count it shows
        room = limit - len(marker)
        marker = f"\n... [{len(text) - room} characters cut] ...\n"
    room = limit - len(marker)
    if room < 20:
        return text[:limit], True
    head = (room * 2) // 3
    tail = room - head
    return text[:head] + marker + text[len(text) - tail :], True
