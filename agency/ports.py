"""The ports the core talks through. Adapters implement them; the core never
imports a chat platform, a vector store or a model vendor directly."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Protocol, runtime_checkable

from agency.llm.base import ChatModel  # re-exported: the model port

__all__ = [
    "ChatModel",
    "ChatPort",
    "Clock",
    "SystemClock",
    "SpaceSpec",
    "OutboundMessage",
    "Memory",
    "MemoryEntry",
    "MemoryHit",
]

SpaceKind = Literal["hq", "project", "overview", "stream", "thread"]


@dataclass(frozen=True)
class SpaceSpec:
    """A place to talk, declared by the core and materialised by the adapter.

    ``address`` is the core's stable name for it (``hq``, ``project:7``,
    ``overview:7``, ``stream:12``, ``thread:12:5``); the adapter maps it to its
    own id (a Discord category, channel or thread; a heading in the terminal).
    """

    address: str
    kind: SpaceKind
    name: str
    parent: str | None = None  # address of the enclosing space
    topic: str = ""
    agency_external_id: str = ""


@dataclass(frozen=True)
class OutboundMessage:
    """One row of the outbox, as handed to the adapter for delivery."""

    id: int
    agency_external_id: str
    space: SpaceSpec
    persona: str  # the handle speaking, e.g. "PM", "Researcher-A"; "A-TEAMs" for the system
    content: str
    kind: str = "chat"  # chat | approval | status | deliverable | notice
    attachment_name: str | None = None
    attachment_text: str | None = None
    approval_id: int | None = None
    approval_options: list[str] = field(default_factory=list)  # button labels; empty = approve/reject
    mention_user_ids: list[str] = field(default_factory=list)  # real people to mention
    upsert_key: str | None = None  # when set, edit the earlier message with this key instead of posting
    nonce: str = ""  # stable per row: lets an adapter make a resend idempotent
    # the process may have sent it before it died (a send whose "delivered" mark was never written):
    # an adapter that can look should find it and return its id instead of posting it again
    maybe_sent: bool = False


@runtime_checkable
class ChatPort(Protocol):
    """What the core needs from a chat platform."""

    async def ensure_space(self, space: SpaceSpec) -> str:
        """Create the space if missing (idempotent); return its external id."""

    async def send(self, message: OutboundMessage, space_external_id: str) -> str:
        """Post (or, with ``upsert_key`` and a known id, edit); return the message's external id."""

    async def edit(self, message: OutboundMessage, space_external_id: str, external_id: str) -> str:
        """Replace the content of an earlier message; return its (possibly new) external id."""


class Clock(Protocol):
    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def monotonic(self) -> float:
        return time.monotonic()


MemoryKind = Literal["knowledge", "lesson", "work"]


@dataclass(frozen=True)
class MemoryEntry:
    text: str
    kind: MemoryKind
    agency_id: int
    project_id: int | None = None
    stream: str | None = None
    member: str | None = None  # handle
    role: str | None = None
    source: str | None = None  # e.g. file name, task key
    created_at: datetime | None = None


@dataclass(frozen=True)
class MemoryHit:
    id: str
    text: str
    kind: MemoryKind
    distance: float
    metadata: dict[str, Any]


@runtime_checkable
class Memory(Protocol):
    """Long-term memory of an agency (knowledge, lessons, project work)."""

    async def add(self, entries: list[MemoryEntry]) -> list[str]: ...

    async def search(
        self,
        agency_id: int,
        query: str,
        *,
        kinds: list[MemoryKind] | None = None,
        where: dict[str, Any] | None = None,
        limit: int = 5,
    ) -> list[MemoryHit]: ...

    async def count(self, agency_id: int, kind: MemoryKind | None = None) -> int: ...
