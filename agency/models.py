"""Plain dataclasses the core hands to adapters (never ORM rows)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

TERMINAL = ("done", "cancelled", "failed")
PROJECT_STATES = (
    "new",  # the PM proposes approaches
    "awaiting_approach",
    "planning",
    "awaiting_plan",
    "staffing",
    "running",
    "delivering",
    "paused",
    "blocked",  # needs the Director (reason in error)
    *TERMINAL,
)
TASK_STATES = ("pending", "running", "review", "approval", "blocked", "done", "cancelled")


@dataclass(frozen=True)
class Actor:
    """Who is acting: a person (by external user id) or a model-backed member."""

    name: str
    external_user_id: str | None = None
    is_director: bool = False
    is_model: bool = False
    agency: str | None = None  # the external id of the agency (guild) the person acts in: every id they name is resolved there


@dataclass(frozen=True)
class ProjectInfo:
    id: int
    agency_id: int
    objective: str
    oversight: str
    status: str
    dry_run: bool
    deliverable_title: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class TaskInfo:
    key: str
    title: str
    stream: str
    assignee: str
    status: str
    depends_on: list[str]
    revision: int = 0
    tier: str | None = None
    completions: int = 0


@dataclass
class StatusReport:
    project: ProjectInfo
    tasks: list[TaskInfo]
    streams: dict[str, dict[str, int]]  # stream -> state -> count
    running: list[str]
    blockers: list[str]
    pending_approvals: list[tuple[int, str, str]]  # (id, kind, subject)
    tokens: int
    cost_usd: float
    budget_usd: float | None
    budget_tokens: int | None
    elapsed_seconds: float
    calls: int
    dry_run: bool
    undeliverable: list[tuple[int, str]] = field(default_factory=list)  # (count, reason) of messages the chat refused

    @property
    def done(self) -> int:
        return sum(1 for t in self.tasks if t.status == "done")


@dataclass(frozen=True)
class MemberInfo:
    handle: str
    kind: str
    role: str
    external_user_id: str | None = None
    definition: dict | None = None
    system_message: str | None = None
    system_version: int | None = None
    record: dict = field(default_factory=dict)
    created_at: datetime | None = None
