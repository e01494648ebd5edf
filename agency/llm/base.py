"""The model port: what the core needs from any chat model.

A provider turns a list of chat messages plus a JSON schema into a reply text
(JSON) and its token usage. Validation against the pydantic schema, the repair
round, recording and caching happen once, in :mod:`agency.llm.client`, so every
provider (OpenAI-compatible, scripted fakes, the dry-run simulator) gets them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

StructuredMode = Literal["json_schema", "json_object", "tool"]


@dataclass(frozen=True)
class ModelRequest:
    """One call: chat messages and the schema the reply must satisfy."""

    messages: list[dict[str, str]]  # [{"role": "system"|"user"|"assistant", "content": ...}]
    schema_name: str  # e.g. "WorkPlan"
    json_schema: dict[str, Any]  # the schema to send, as built by agency.guided: compact, strict, with this call's enums
    model: str | None = None  # the model name chosen by the router; None = provider default
    temperature: float | None = None
    max_tokens: int | None = None  # the reply's length bound (``[llm] max_tokens`` by purpose); None = the server's
    # context for fakes and logs; never needed by a real provider
    role: str = ""  # pm | collaborator | specialist | learning
    purpose: str = ""  # approaches | plan | work | review | deliver | answer | ...
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelReply:
    text: str  # the JSON text (or tool-call arguments) the model produced
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    simulated: bool = False  # True when no real model was called (dry run, fakes)


@runtime_checkable
class ChatModel(Protocol):
    """Anything that can answer a :class:`ModelRequest`."""

    name: str

    async def generate(self, request: ModelRequest) -> ModelReply: ...
