"""Small helpers over a session: take a session, add or read rows.

Every helper that writes only adds to the session; the caller commits, so a
state change and its outbound messages land in one transaction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from agency.db.tables import (
    AgencyRow,
    DeploymentRow,
    EventRow,
    LLMCallRow,
    MemberRow,
    MessageRow,
    ProjectRow,
    SpaceRow,
    StreamRow,
    SystemMessageRow,
    TaskDepRow,
    TaskRow,
)
from agency.errors import NotFoundError

SYSTEM = "A-TEAMs"


def hq() -> str:
    return "hq"


def project_addr(pid: int) -> str:
    return f"project:{pid}"


def overview(pid: int) -> str:
    return f"overview:{pid}"


def stream_addr(sid: int) -> str:
    return f"stream:{sid}"


def thread_addr(sid: int, mid: int) -> str:
    return f"thread:{sid}:{mid}"


def post(
    s: AsyncSession,
    agency_id: int,
    project_id: int | None,
    address: str,
    persona: str,
    content: str,
    *,
    kind: str = "chat",
    approval_id: int | None = None,
    attachment: tuple[str, str] | None = None,
    mentions: list[str] | None = None,
    upsert_key: str | None = None,
) -> MessageRow:
    from agency.logs import redact

    row = MessageRow(
        agency_id=agency_id,
        project_id=project_id,
        direction="out",
        address=address,
        persona=persona,
        kind=kind,
        content=redact(content),
        approval_id=approval_id,
        attachment_name=attachment[0] if attachment else None,
        attachment_text=redact(attachment[1]) if attachment else None,
        mentions=mentions or [],
        upsert_key=upsert_key,
        status="pending",
    )
    s.add(row)
    return row


async def supersede_pending(s: AsyncSession, upsert_key: str) -> None:
    """An edit-in-place message: drop older undelivered versions of it (waiting or undeliverable)."""
    from agency.states import MESSAGE, MessageState, transition

    await transition(s, MESSAGE, None, MessageState.SUPERSEDED, frm=(MessageState.PENDING, MessageState.UNDELIVERABLE, MessageState.FAILED),
                     where=[MessageRow.upsert_key == upsert_key])


def event(s: AsyncSession, project_id: int | None, event_kind: str, /, task_id: int | None = None, **data: Any) -> None:
    from agency.logs import redact

    def clean(v: Any) -> Any:  # the audit trail never keeps a secret
        if isinstance(v, str):
            return redact(v)
        if isinstance(v, list):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    s.add(EventRow(project_id=project_id, task_id=task_id, kind=event_kind, data=clean(data)))


async def declare_space(
    s: AsyncSession, agency_id: int, address: str, kind: str, name: str, parent: str | None = None, topic: str = ""
) -> SpaceRow:
    row = (
        await s.execute(select(SpaceRow).where(SpaceRow.agency_id == agency_id, SpaceRow.address == address))
    ).scalar_one_or_none()
    if row is None:
        row = SpaceRow(agency_id=agency_id, address=address, kind=kind, name=name[:100], parent=parent, topic=topic)
        s.add(row)
    return row


async def get_or_create_agency(s: AsyncSession, external_id: str, name: str) -> AgencyRow:
    """The agency of ``external_id``, created (with its ``hq`` space) if it is new. Two processes may
    create it at once: the loser's insert fails on the unique external id inside a savepoint, and it
    takes the winner's row."""
    query = select(AgencyRow).where(AgencyRow.external_id == external_id)
    row = (await s.execute(query)).scalar_one_or_none()
    if row is not None:
        return row
    try:
        async with s.begin_nested():
            row = AgencyRow(external_id=external_id, name=name, settings={})
            s.add(row)
            await s.flush()
            await declare_space(s, row.id, hq(), "hq", "hq", topic="Director <-> PM, agency-wide news")
            await s.flush()
    except IntegrityError:
        row = (await s.execute(query)).scalar_one_or_none()
        if row is None:
            raise
    return row


_MEMBER_BY_HANDLE = select(MemberRow).where(MemberRow.agency_id == bindparam("aid"), func.lower(MemberRow.handle) == bindparam("handle"))


async def member_by_handle(s: AsyncSession, agency_id: int, handle: str) -> MemberRow | None:
    return (await s.execute(_MEMBER_BY_HANDLE, {"aid": agency_id, "handle": handle.lstrip("@").lower()})).scalar_one_or_none()


async def member_by_user(s: AsyncSession, agency_id: int, user_id: str) -> MemberRow | None:
    return (
        await s.execute(
            select(MemberRow).where(MemberRow.agency_id == agency_id, MemberRow.external_user_id == user_id)
        )
    ).scalar_one_or_none()


_ACTIVE_SYSTEM_MESSAGE = (select(SystemMessageRow)  # built once: it runs before every model call of a member
                          .where(SystemMessageRow.member_id == bindparam("mid"), SystemMessageRow.status == "active")
                          .order_by(SystemMessageRow.version.desc()).limit(1))


async def active_system_message(s: AsyncSession, member_id: int) -> SystemMessageRow | None:
    return (await s.execute(_ACTIVE_SYSTEM_MESSAGE, {"mid": member_id})).scalar_one_or_none()


async def next_version(s: AsyncSession, member_id: int) -> int:
    v = (
        await s.execute(select(func.max(SystemMessageRow.version)).where(SystemMessageRow.member_id == member_id))
    ).scalar()
    return (v or 0) + 1


_TASK_DEPS = (select(TaskDepRow.task_id, TaskDepRow.depends_on_id).join(TaskRow, TaskRow.id == TaskDepRow.task_id)
              .where(TaskRow.project_id == bindparam("pid")))


async def task_deps(s: AsyncSession, project_id: int) -> dict[int, list[int]]:
    rows = (await s.execute(_TASK_DEPS, {"pid": project_id})).all()
    out: dict[int, list[int]] = {}
    for t, d in rows:
        out.setdefault(t, []).append(d)
    return out


async def project_usage(s: AsyncSession, project_id: int) -> tuple[int, float, int]:
    """(tokens, cost in USD, calls) spent on a project, orchestration included."""
    tokens, cost, calls = (
        await s.execute(
            select(
                func.coalesce(func.sum(LLMCallRow.prompt_tokens + LLMCallRow.completion_tokens), 0),
                func.coalesce(func.sum(LLMCallRow.cost_usd), 0.0),
                func.count(LLMCallRow.id),
            ).where(LLMCallRow.project_id == project_id)
        )
    ).one()
    return int(tokens), float(cost), int(calls)


@dataclass
class ProjectFrame:
    """A project with its tasks (by key) and the names its rows refer to: stream keys and member handles by id."""

    project: ProjectRow
    tasks: list[TaskRow]
    streams: dict[int, str]
    members: dict[int, str]


async def project_frame(s: AsyncSession, project_id: int) -> ProjectFrame:
    """Load a project for a report (status, audit); raise NotFoundError for an unknown project."""
    p = await s.get(ProjectRow, project_id)
    if p is None:
        raise NotFoundError(f"There is no project #{project_id}.")
    tasks = await project_tasks(s, project_id)
    streams = dict((await s.execute(_STREAM_KEYS, {"pid": project_id})).all())
    members = dict((await s.execute(_PROJECT_MEMBERS, {"pid": project_id})).all())
    return ProjectFrame(p, tasks, streams, members)


async def project_tasks(s: AsyncSession, project_id: int) -> list[TaskRow]:
    """The project's tasks by key (the status board and the project loop read them on every change)."""
    return list((await s.execute(_PROJECT_TASKS, {"pid": project_id})).scalars())


# built once: the status board and the project loop run these on every change
_PROJECT_TASKS = select(TaskRow).where(TaskRow.project_id == bindparam("pid")).order_by(TaskRow.key)
_STREAM_KEYS = select(StreamRow.id, StreamRow.key).where(StreamRow.project_id == bindparam("pid"))
_PROJECT_MEMBERS = (select(MemberRow.id, MemberRow.handle).where(MemberRow.id.in_(  # the members the project's rows name
    select(TaskRow.assignee_id).where(TaskRow.project_id == bindparam("pid"))
    .union(select(StreamRow.collaborator_id).where(StreamRow.project_id == bindparam("pid")),
           select(LLMCallRow.member_id).where(LLMCallRow.project_id == bindparam("pid"))))))


@dataclass
class TaskFrame:
    """A task with the rows its steps read: its project, assignee, stream and the stream's Collaborator."""

    task: TaskRow
    project: ProjectRow
    assignee: MemberRow
    stream: StreamRow
    collaborator: MemberRow | None


_COLLABORATOR = aliased(MemberRow)
_TASK_FRAME = (select(TaskRow, ProjectRow, MemberRow, StreamRow, _COLLABORATOR)  # built once, like the others here
               .join(ProjectRow, ProjectRow.id == TaskRow.project_id)
               .join(MemberRow, MemberRow.id == TaskRow.assignee_id)
               .join(StreamRow, StreamRow.id == TaskRow.stream_id)
               .outerjoin(_COLLABORATOR, _COLLABORATOR.id == StreamRow.collaborator_id)
               .where(TaskRow.id == bindparam("tid")))


async def task_frame(s: AsyncSession, task_id: int) -> TaskFrame:
    """One statement for what every work turn and review reads first (they run for every task, twice or more)."""
    row = (await s.execute(_TASK_FRAME, {"tid": task_id})).one_or_none()
    if row is None:
        raise NotFoundError(f"There is no task #{task_id}.")
    return TaskFrame(*row)


async def deployment_id(s: AsyncSession) -> str:
    """This database's deployment id (made by migration 0005)."""
    return str((await s.execute(select(DeploymentRow.id).limit(1))).scalar_one())
