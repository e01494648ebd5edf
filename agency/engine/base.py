"""What every stage of the engine shares, below the stages: the constants, the
prebuilt statements, the commit helper and :class:`Core` (the database, the
model client, the settings and the small helpers each stage uses).

Stages import from here and from :mod:`agency.engine.tasks`; nothing here or
there imports a stage or the lifecycle that dispatches them.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from agency.db import repos
from agency.db.session import Database
from agency.db.tables import MemberRow, ProjectRow, StreamRow, SystemMessageRow, TaskDepRow, TaskRow
from agency.llm.client import CallContext, LLMClient
from agency.roles.common import specialist_system_message
from agency.schemas import SpecialistDefinition
from agency.settings import Settings
from specialists.loader import Catalogue

log = logging.getLogger("agency.engine")
PM_HANDLE = "PM"
LEARNING_HANDLE = "Learning-Manager"
EST_PROMPT_TOKENS = 1500
EST_COMPLETION_TOKENS = 600
HISTORY_ITEMS = 12  # a task's kept conversation: the member's drafts, answers, feedback (newest last)
LOCK_RETRIES = 5

Recall = Callable[[int, str, str | None, str, int | None], Awaitable[tuple[str, list[Any]]]]
ProjectHook = Callable[[int], Awaitable[None]]

# Built once: constructing a SQLAlchemy statement costs more than SQLite running it, and these run
# for every model call or task step.
PROJECT_GATE = select(ProjectRow.status, ProjectRow.budget_usd, ProjectRow.budget_tokens).where(ProjectRow.id == bindparam("pid"))
TASK_STEP = (select(TaskRow.status, MemberRow.kind, TaskRow.asks).join(MemberRow, MemberRow.id == TaskRow.assignee_id)
             .where(TaskRow.id == bindparam("tid")))
DEP_OUTPUTS = (select(TaskRow.key, TaskRow.output).join(TaskDepRow, TaskDepRow.depends_on_id == TaskRow.id)
               .where(TaskDepRow.task_id == bindparam("tid")).order_by(TaskRow.key))
OTHER_OUTPUTS = select(TaskRow.key, TaskRow.output).where(
    TaskRow.project_id == bindparam("pid"), TaskRow.id != bindparam("tid"), TaskRow.output.is_not(None))
PROJECT_STREAMS = select(StreamRow).where(StreamRow.project_id == bindparam("pid"))
AGENCY_HUMANS = select(MemberRow.id).where(MemberRow.agency_id == bindparam("aid"), MemberRow.kind == "human")
DEPENDENT_KEYS = (select(TaskRow.key).join(TaskDepRow, TaskDepRow.task_id == TaskRow.id)
                  .where(TaskDepRow.depends_on_id == bindparam("tid")).order_by(TaskRow.key))


class ProjectPaused(Exception):
    """Raised before a model call when the project is no longer running."""


def is_lock_timeout(e: BaseException) -> bool:
    return "database is locked" in str(getattr(e, "orig", e))


# PostgreSQL's transient failures (SQLSTATE): serialization failure, deadlock, and the connection classes
_PG_TRANSIENT = {"40001", "40P01", "08000", "08003", "08006", "08001", "08004", "57P01", "57P02", "57P03"}


def is_transient_db_error(e: BaseException) -> bool:
    """A database error that a redo of the step cures: SQLite's lock timeout, PostgreSQL's serialization
    failures, deadlocks and lost connections (every step is safe to redo: its transaction was rolled back)."""
    if is_lock_timeout(e) or getattr(e, "connection_invalidated", False):
        return True
    orig = getattr(e, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return str(code) in _PG_TRANSIENT if code else False


def now() -> datetime:
    return datetime.now(UTC)


def norm(text: str | None) -> str:
    return " ".join((text or "").lower().split())


class Changes:
    """Who hears of a committed change: the outbox (``outbox_ready``) and the listeners of a project's
    changes (live status, metrics). Built first, so that everything that commits can be given it."""

    def __init__(self) -> None:
        self.outbox_ready = asyncio.Event()
        self.on_change: list[Callable[[int], None]] = []

    def changed(self, pid: int | None) -> None:
        self.outbox_ready.set()
        if pid is None:
            return
        for cb in self.on_change:
            try:
                cb(pid)
            except Exception:
                log.exception("on_change callback failed")


class RunFlags:
    """Whether the engine is stopping, and which projects' workers must stop at their next step; read by
    the budget gate before every model call."""

    def __init__(self) -> None:
        self.stopping = False
        self.halting: set[int] = set()
        self.lost: set[int] = set()  # projects whose lease another process took: this one stops running them

    def halted(self, pid: int) -> bool:
        return self.stopping or pid in self.halting or pid in self.lost


class Core:
    """The collaborators every stage needs, and the helpers they share."""

    def __init__(self, db: Database, llm: LLMClient, settings: Settings, catalogue: Catalogue, *, changes: Changes,
                 recall: Recall | None = None, tools: Any = None) -> None:
        self.db = db
        self.llm = llm
        self.settings = settings
        self.catalogue = catalogue
        self.changes = changes
        self.recall = recall  # memory: (agency_id, handle, role, query, project_id) -> (text, retrieved)
        self.tools = tools  # agency.tools.registry.ToolRegistry, or None: no tools

    @property
    def outbox_ready(self) -> asyncio.Event:
        return self.changes.outbox_ready

    def changed(self, pid: int) -> None:
        self.changes.changed(pid)

    async def commit(self, s: AsyncSession, pid: int | None) -> None:
        """Commit a step (its state change, event and outbound messages) and wake the outbox."""
        await s.commit()
        self.changes.changed(pid)

    async def ensure_member(self, s: AsyncSession, agency_id: int, handle: str, kind: str, role: str,
                            definition: SpecialistDefinition | None = None) -> MemberRow:
        m = await repos.member_by_handle(s, agency_id, handle)
        if m is not None:
            return m
        m = MemberRow(agency_id=agency_id, handle=handle, kind=kind, role=role,
                      definition=definition.model_dump() if definition else None)
        try:
            async with s.begin_nested():
                s.add(m)
        except IntegrityError:  # created meanwhile by a concurrent project of the same agency
            existing = await repos.member_by_handle(s, agency_id, handle)
            if existing is None:
                raise
            return existing
        if definition is not None:
            s.add(SystemMessageRow(member_id=m.id, version=1, text=specialist_system_message(handle, definition),
                                   status="active", reason="created from the definition"))
        return m

    async def project_and_pm(self, s: AsyncSession, pid: int) -> tuple[ProjectRow, MemberRow]:
        """The project of a PM step and its agency's PM (created, and committed, on the agency's first one)."""
        p = await s.get(ProjectRow, pid)
        assert p is not None
        pm = await self.ensure_member(s, p.agency_id, PM_HANDLE, "pm", "pm")
        await s.commit()
        return p, pm

    async def recall_for(self, agency_id: int, handle: str, role: str | None, query: str, project_id: int | None) -> tuple[str, list[Any]]:
        if self.recall is None:
            return "", []
        try:
            return await self.recall(agency_id, handle, role, query, project_id)
        except Exception:
            log.exception("memory recall failed (project=%s); continuing without memories", project_id)
            return "", []

    @staticmethod
    def ctx(p: ProjectRow, role: str, purpose: str, key: str, **kw: Any) -> CallContext:
        return CallContext(role=role, purpose=purpose, agency_id=p.agency_id, project_id=p.id,
                           call_key=f"p{p.id}:{key}", meta={"objective": p.objective, "purpose": purpose, **kw.pop("meta", {})}, **kw)

    @staticmethod
    def task_view(t: TaskRow) -> dict[str, Any]:
        return {"key": t.key, "title": t.title, "description": t.description, "success_criteria": t.success_criteria}

    def tier_for(self, scores: dict[str, int] | None) -> str:
        from agency.llm.router import choose_tier

        tier, _ = choose_tier(scores, self.settings.routing, list(self.settings.llm.tiers), self.settings.llm.default_tier)
        return tier
