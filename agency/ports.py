"""The ports the core talks through. Adapters implement them; the core never
imports a chat platform, a vector store or a model vendor directly."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, runtime_checkable

from agency.llm.base import ChatModel  # re-exported: the model port

__all__ = [
    "ChatModel",
    "ChatPort",
    "Clock",
    "DeliveryError",
    "DeliveryPermanentError",
    "DeliveryTransientError",
    "Memory",
    "MemoryEntry",
    "MemoryHit",
    "OutboundMessage",
    "SpaceSpec",
    "SystemClock",
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


class DeliveryError(Exception):
    """A chat port could not deliver (or place) a message. Adapters raise one of the two subclasses;
    the outbox treats any other exception as transient (and logs it)."""


class DeliveryTransientError(DeliveryError):
    """It may work later (an outage, a 5xx, a rate limit, not connected yet): the outbox retries with
    backoff, without a limit on attempts. ``retry_after``: the platform's own hint, in seconds."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class DeliveryPermanentError(DeliveryError):
    """It will not work until a person changes something (a permission, a deleted channel, a full
    server, a moderation rule). The outbox keeps the message as ``undeliverable`` with ``reason``,
    tells the Director once per ``cause`` (``reason`` and ``what_to_do``), and delivers it again when
    the cause may be fixed (``OutboxDispatcher.redeliver``).

    ``cause``: a short stable key; messages failing for the same cause share one notice (default: the
    reason). ``content``: the failure is about this message's content only (e.g. blocked by AutoMod),
    so later messages of the same space go on; otherwise the whole space waits, in order, for the fix.
    """

    def __init__(self, reason: str, what_to_do: str, *, cause: str | None = None, content: bool = False) -> None:
        super().__init__(f"{reason} {what_to_do}".strip())
        self.reason = reason
        self.what_to_do = what_to_do
        self.cause = cause or reason
        self.content = content


@runtime_checkable
class ChatPort(Protocol):
    """What the core needs from a chat platform.

    ``ensure_space``, ``send`` and ``edit`` raise :class:`DeliveryTransientError` or
    :class:`DeliveryPermanentError` when they cannot deliver. The outbox calls them for one message of a
    space at a time (spaces run concurrently). An adapter may declare ``pace_limits``: ``(count,
    seconds)`` windows per space (e.g. ``((30, 60.0),)``) within which the outbox paces each space.
    """

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
        return datetime.now(UTC)

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
