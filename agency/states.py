"""The state machine: every status a row can have, the legal moves between
them, and :func:`transition`, the one function that changes a status.

A transition is a conditional ``UPDATE ... SET status = :to WHERE id = :id AND
status IN (:legal sources) [AND guards]`` plus its event, written in the
caller's transaction (which also holds the step's outbound messages). It
returns whether it applied: ``False`` means another step, process or click got
there first, and the caller drops its work (rolls back) instead of applying it
twice. Several processes may share one database; nothing here assumes it is
alone, and nothing reads a status and then writes it.

No other module assigns a status column (``tests/agency/test_states.py`` scans
the code for that); new rows start in their machine's initial state.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from agency.db.tables import ApprovalRow, Base, MessageRow, ProjectRow, StreamRow, SystemMessageRow, TaskRow


class IllegalTransition(RuntimeError):
    """A programming error: the code asked for a move the machine does not have."""


class ProjectState(StrEnum):
    NEW = "new"  # the PM proposes approaches
    AWAITING_APPROACH = "awaiting_approach"
    PLANNING = "planning"
    AWAITING_PLAN = "awaiting_plan"
    STAFFING = "staffing"
    RUNNING = "running"
    DELIVERING = "delivering"
    PAUSED = "paused"  # by the Director or at the budget; paused_from says where it resumes
    BLOCKED = "blocked"  # needs the Director (reason in error); paused_from says where it resumes
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"  # no step moves a project here today; kept for rows and tools that may


class TaskState(StrEnum):
    PENDING = "pending"  # waits for its dependencies
    RUNNING = "running"  # the assignee works (a turn per step)
    REVIEW = "review"  # the Collaborator reviews the submission
    APPROVAL = "approval"  # passed review; the Director approves (oversight every_task)
    ESCALATED = "escalated"  # the PM decides (feedback, reassign, hire) or passes it to the Director
    BLOCKED = "blocked"  # the Director decides
    DONE = "done"
    CANCELLED = "cancelled"


class ApprovalState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"


class StreamState(StrEnum):
    OPEN = "open"
    GATED = "gated"  # complete; the Director approves the milestone
    DONE = "done"


class MessageState(StrEnum):
    PENDING = "pending"  # outbound, not yet delivered (retried with backoff)
    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"  # a permanent error; redelivered when its cause is fixed
    FAILED = "failed"  # kept for rows written by older versions
    SUPERSEDED = "superseded"  # an edit-in-place message replaced before delivery
    RECEIVED = "received"  # inbound


class VersionState(StrEnum):
    """A specialist's system-message version."""

    PROPOSED = "proposed"
    ACTIVE = "active"
    RETIRED = "retired"
    REJECTED = "rejected"


P, T, A, S, M, V = ProjectState, TaskState, ApprovalState, StreamState, MessageState, VersionState
_ACTIVE = (P.NEW, P.AWAITING_APPROACH, P.PLANNING, P.AWAITING_PLAN, P.STAFFING, P.RUNNING, P.DELIVERING)
PROJECT_TERMINAL = frozenset({P.DONE, P.CANCELLED, P.FAILED})
TASK_FINISHED = frozenset({T.DONE, T.CANCELLED})


@dataclass(frozen=True)
class Machine:
    name: str
    table: type[Base]
    initial: str
    moves: Mapping[str, frozenset[str]]  # from -> the states it may move to
    sources: dict[str, frozenset[str]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for to in {t for tos in self.moves.values() for t in tos}:
            self.sources[to] = frozenset(f for f, tos in self.moves.items() if to in tos)

    def legal(self, frm: str, to: str) -> bool:
        return to in self.moves.get(frm, ())

    def states(self) -> set[str]:
        return set(self.moves) | {t for tos in self.moves.values() for t in tos}


def _m(moves: dict[Any, Iterable[Any]]) -> dict[str, frozenset[str]]:
    return {str(k): frozenset(str(x) for x in v) for k, v in moves.items()}


PROJECT = Machine("project", ProjectRow, P.NEW, _m({
    P.NEW: {P.AWAITING_APPROACH, P.PLANNING, P.PAUSED, P.BLOCKED, P.CANCELLED},
    P.AWAITING_APPROACH: {P.PLANNING, P.NEW, P.PAUSED, P.BLOCKED, P.CANCELLED},
    P.PLANNING: {P.PLANNING, P.AWAITING_PLAN, P.STAFFING, P.PAUSED, P.BLOCKED, P.CANCELLED},  # planning -> planning: a plan returned for fixes
    P.AWAITING_PLAN: {P.STAFFING, P.PLANNING, P.PAUSED, P.BLOCKED, P.CANCELLED},
    P.STAFFING: {P.RUNNING, P.PAUSED, P.BLOCKED, P.CANCELLED},
    P.RUNNING: {P.DELIVERING, P.PAUSED, P.BLOCKED, P.CANCELLED},
    P.DELIVERING: {P.DONE, P.PAUSED, P.BLOCKED, P.CANCELLED},
    P.PAUSED: {*_ACTIVE, P.BLOCKED, P.CANCELLED},  # resume goes back to paused_from
    P.BLOCKED: {*_ACTIVE, P.PAUSED, P.CANCELLED},
    P.DONE: set(), P.CANCELLED: set(), P.FAILED: set(),
}))

TASK = Machine("task", TaskRow, T.PENDING, _m({
    T.PENDING: {T.RUNNING, T.CANCELLED},
    T.RUNNING: {T.RUNNING, T.REVIEW, T.ESCALATED, T.CANCELLED},  # running -> running: one more turn
    T.REVIEW: {T.DONE, T.APPROVAL, T.RUNNING, T.ESCALATED, T.CANCELLED},
    T.APPROVAL: {T.DONE, T.RUNNING, T.CANCELLED},
    T.ESCALATED: {T.RUNNING, T.BLOCKED, T.CANCELLED},
    T.BLOCKED: {T.RUNNING, T.DONE, T.CANCELLED},
    T.DONE: {T.RUNNING},  # a rejected milestone reopens its last task
    T.CANCELLED: set(),
}))

APPROVAL = Machine("approval", ApprovalRow, A.PENDING, _m({
    A.PENDING: {A.APPROVED, A.REJECTED, A.SUPERSEDED},
    A.APPROVED: set(), A.REJECTED: set(), A.SUPERSEDED: set(),
}))

STREAM = Machine("stream", StreamRow, S.OPEN, _m({
    S.OPEN: {S.GATED, S.DONE},
    S.GATED: {S.DONE, S.OPEN},
    S.DONE: set(),
}))

MESSAGE = Machine("message", MessageRow, M.PENDING, _m({
    M.PENDING: {M.DELIVERED, M.UNDELIVERABLE, M.SUPERSEDED, M.FAILED},
    M.UNDELIVERABLE: {M.PENDING, M.SUPERSEDED},
    M.FAILED: {M.PENDING, M.SUPERSEDED},
    # a send already in flight when a newer version superseded the row went out: it is recorded as
    # delivered, so the next version edits that message instead of posting another one
    M.SUPERSEDED: {M.DELIVERED},
    M.DELIVERED: set(), M.RECEIVED: set(),
}))

VERSION = Machine("version", SystemMessageRow, V.PROPOSED, _m({
    V.PROPOSED: {V.ACTIVE, V.REJECTED},
    V.ACTIVE: {V.RETIRED},
    V.RETIRED: set(), V.REJECTED: set(),
}))

MACHINES = (PROJECT, TASK, APPROVAL, STREAM, MESSAGE, VERSION)


def _apply(s: AsyncSession, table: Any, keys: list[str], rows: Sequence[Any]) -> None:
    """Rows of ``table`` loaded in ``s`` take what the UPDATE wrote, as it returned them (RETURNING): no
    second read, and no expired attribute (an async session cannot lazy-load one)."""
    written = {row[0]: row[1:] for row in rows}
    for obj in list(s.identity_map.values()):
        if isinstance(obj, table) and obj.id in written:
            for key, value in zip(keys, written[obj.id]):
                set_committed_value(obj, key, value)


def _sources(machine: Machine, to: str, frm: Iterable[str] | None) -> list[str]:
    legal = machine.sources.get(str(to), frozenset())
    chosen = legal if frm is None else legal & {str(x) for x in frm}
    if not chosen:
        asked = "any state" if frm is None else ", ".join(sorted(str(x) for x in frm))
        raise IllegalTransition(f"{machine.name}: no legal move from {asked} to {to}")
    return sorted(chosen)


async def transition(
    s: AsyncSession,
    machine: Machine,
    row_id: int | None,
    to: str,
    /,
    *,
    frm: Iterable[str] | None = None,
    where: Iterable[ColumnElement[bool]] = (),
    values: Mapping[str, Any] | None = None,
    event: str | None = None,
    project_id: int | None = None,
    task_id: int | None = None,
    **data: Any,
) -> int:
    """Move ``row_id`` (or, with ``row_id=None``, every row matching ``where``) to ``to``, from any
    legal source state (narrowed by ``frm``), if the ``where`` guards still hold; set ``values`` in the
    same statement and, when it applied, add ``event`` to the audit trail. Returns the rows moved (0:
    it did not apply; leave the step's work unapplied). Rows already loaded in ``s`` see the new
    values. Nothing is committed here: the caller commits the step as one transaction."""
    table: Any = machine.table
    conds = [table.status.in_(_sources(machine, to, frm)), *where]
    if row_id is not None:
        conds.insert(0, table.id == row_id)
    extra = dict(values or {})
    if machine is TASK:  # every task transition bumps seq: a step read at seq N applies only while seq is still N
        extra.setdefault("seq", TaskRow.seq + 1)
    keys = ["status", *extra]
    stmt = (update(table).where(*conds).values(status=str(to), **extra)
            .returning(table.id, *(getattr(table, k) for k in keys)))
    rows = (await s.execute(stmt, execution_options={"synchronize_session": False})).all()
    n = len(rows)
    if n:
        _apply(s, table, keys, rows)
    if n and event is not None:
        from agency.db import repos

        if machine is TASK and task_id is None and row_id is not None:
            task_id = row_id
        repos.event(s, project_id, event, task_id=task_id, **data)
    return n
