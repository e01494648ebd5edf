"""Transitions that several stages make, each inside the caller's transaction:
complete, reopen or escalate a task; block, pause or cancel a project.

Each returns whether it applied (the conditional update matched); the caller
keeps or drops the rest of its step accordingly.
"""
from __future__ import annotations

from sqlalchemy import case, select
from sqlalchemy.ext.asyncio import AsyncSession

from agency.db.repos import SYSTEM, overview, post, stream_addr
from agency.db.tables import ApprovalRow, EventRow, FeedbackRow, MemberRow, ProjectRow, StreamRow, TaskRow
from agency.engine.base import DEPENDENT_KEYS, PM_HANDLE, now
from agency.states import (
    APPROVAL,
    PROJECT,
    PROJECT_TERMINAL,
    TASK,
    ApprovalState,
    ProjectState,
    TaskState,
    transition,
)

ACTIVE = (ProjectState.NEW, ProjectState.AWAITING_APPROACH, ProjectState.PLANNING, ProjectState.AWAITING_PLAN,
          ProjectState.STAFFING, ProjectState.RUNNING, ProjectState.DELIVERING)


async def complete(s: AsyncSession, p: ProjectRow, t: TaskRow, *, frm: tuple[str, ...] = (TaskState.REVIEW, TaskState.APPROVAL, TaskState.BLOCKED),
                   seq: int | None = None) -> bool:
    """A task's one completion: ``completions`` counts it, so a second one is visible in the record."""
    where = [TaskRow.seq == seq] if seq is not None else []
    if not await transition(s, TASK, t.id, TaskState.DONE, frm=frm, where=where, project_id=p.id, event="task_done", key=t.key,
                            values={"finished_at": now(), "completions": TaskRow.completions + 1}):
        return False
    dependents = list((await s.execute(DEPENDENT_KEYS, {"tid": t.id})).scalars())
    if dependents:
        st = await s.get(StreamRow, t.stream_id)
        collab = await s.get(MemberRow, st.collaborator_id) if st and st.collaborator_id else None
        post(s, p.agency_id, p.id, stream_addr(t.stream_id), collab.handle if collab else SYSTEM,
             f"/handoff {t.key} -> {', '.join(dependents)}: output passed on.", kind="action")
    return True


async def reopen(s: AsyncSession, p: ProjectRow, t: TaskRow, notes: str, *, frm: tuple[str, ...]) -> bool:
    """Send a task back to its assignee with the Director's notes (a rejected task or milestone)."""
    done = t.status == TaskState.DONE
    if not await transition(s, TASK, t.id, TaskState.RUNNING, frm=frm, project_id=p.id, event="reopened", key=t.key,
                            values={"revision": TaskRow.revision + 1, "step": 0, "review_notes": notes, "context": [],
                                    # completions counts the standing completion; it will complete again
                                    "completions": TaskRow.completions - (1 if done else 0)}):
        return False
    s.add(FeedbackRow(agency_id=p.agency_id, project_id=p.id, member_id=t.assignee_id, task_id=t.id, source="director", text=notes, author="Director"))
    post(s, p.agency_id, p.id, stream_addr(t.stream_id), SYSTEM, f"{t.key} reopened. {notes}")
    return True


async def escalate(s: AsyncSession, p: ProjectRow, t: TaskRow, reason: str, *, frm: tuple[str, ...], seq: int | None = None,
                   values: dict | None = None) -> bool:
    """Specialist -> Collaborator -> PM: the task waits (``escalated``) for the PM's decision, a step of its own."""
    where = [TaskRow.seq == seq] if seq is not None else []
    if not await transition(s, TASK, t.id, TaskState.ESCALATED, frm=frm, where=where, project_id=p.id, event="escalated",
                            key=t.key, reason=reason, attempt=t.attempt, values={"blocked_reason": reason, **(values or {})}):
        return False
    s.add(FeedbackRow(agency_id=p.agency_id, project_id=p.id, member_id=t.assignee_id, task_id=t.id, source="escalation", text=reason))
    st = await s.get(StreamRow, t.stream_id)
    collab = await s.get(MemberRow, st.collaborator_id) if st and st.collaborator_id else None
    post(s, p.agency_id, p.id, stream_addr(t.stream_id), collab.handle if collab else SYSTEM,
         f"/blocker {t.key}: {reason} (to @{PM_HANDLE})", kind="action")
    return True


async def block(s: AsyncSession, pid: int, reason: str) -> bool:
    """The project needs the Director: blocked with the reason; ``/project resume`` retries where it stopped."""
    p = await s.get(ProjectRow, pid)
    if p is None:
        return False
    resume_to = case((ProjectRow.status.in_((ProjectState.BLOCKED, ProjectState.PAUSED)), ProjectRow.paused_from), else_=ProjectRow.status)
    if not await transition(s, PROJECT, pid, ProjectState.BLOCKED, frm=(*ACTIVE, ProjectState.PAUSED), project_id=pid,
                            event="blocked", reason=reason, values={"paused_from": resume_to, "error": reason}):
        return False
    post(s, p.agency_id, pid, overview(pid), SYSTEM,
         f"Project #{pid} is blocked: {reason}\nFix the cause, then `/project resume` to retry, or `/project cancel`.",
         kind="notice", mentions=["director"])
    return True


async def pause_for_budget(s: AsyncSession, pid: int, message: str) -> bool:
    p = await s.get(ProjectRow, pid)
    if p is None:
        return False
    if not await transition(s, PROJECT, pid, ProjectState.PAUSED, frm=ACTIVE, project_id=pid, event="budget_exceeded",
                            values={"paused_from": ProjectRow.status}):
        return False
    appr = ApprovalRow(project_id=pid, kind="budget", subject="budget", status=ApprovalState.PENDING,
                       options=["Raise the budget by 50%", "Stop the project"])
    s.add(appr)
    await s.flush()
    post(s, p.agency_id, pid, overview(pid), SYSTEM, message + "\nApprove to raise the budget by 50%, reject to stop.",
         kind="approval", approval_id=appr.id, mentions=["director"])
    return True


async def cancel(s: AsyncSession, p: ProjectRow, why: str) -> bool:
    """Stop the project: its unfinished tasks are cancelled, its pending approvals superseded."""
    live = [x for x in PROJECT.states() if x not in PROJECT_TERMINAL]
    if not await transition(s, PROJECT, p.id, ProjectState.CANCELLED, frm=live, project_id=p.id, event="cancelled", why=why,
                            values={"finished_at": now(), "error": why}):
        return False
    await transition(s, TASK, None, TaskState.CANCELLED, where=[TaskRow.project_id == p.id])
    await transition(s, APPROVAL, None, ApprovalState.SUPERSEDED, where=[ApprovalRow.project_id == p.id])
    post(s, p.agency_id, p.id, overview(p.id), SYSTEM, f"Project #{p.id} cancelled: {why}", kind="notice")
    return True


async def supersede_approvals(s: AsyncSession, pid: int, kind: str) -> int:
    return await transition(s, APPROVAL, None, ApprovalState.SUPERSEDED, where=[ApprovalRow.project_id == pid, ApprovalRow.kind == kind])


async def unreviewed(s: AsyncSession, pid: int) -> set[int]:
    """Tasks the Director accepted as they were, without passing review (and not reviewed and accepted since)."""
    rows = (await s.execute(select(EventRow.task_id, EventRow.kind).where(
        EventRow.project_id == pid, EventRow.kind.in_(("accepted_without_review", "accepted"))).order_by(EventRow.id))).all()
    out: set[int] = set()
    for tid, kind in rows:
        if tid is None:
            continue
        if kind == "accepted_without_review":
            out.add(tid)
        else:
            out.discard(tid)
    return out


async def project_handles(s: AsyncSession, pid: int) -> list[str]:
    rows = (await s.execute(select(MemberRow.handle).join(TaskRow, TaskRow.assignee_id == MemberRow.id).where(TaskRow.project_id == pid).distinct())).scalars()
    return sorted({*rows, PM_HANDLE})


__all__ = ["ACTIVE", "block", "cancel", "complete", "escalate", "pause_for_budget", "project_handles", "reopen", "supersede_approvals",
           "unreviewed"]
