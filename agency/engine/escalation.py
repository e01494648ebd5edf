"""The PM's decision on an escalated task (Specialist -> Collaborator -> PM ->
Director): one model call, then one transaction: guidance, a reassignment or
a new hire (``escalated -> running``), or the Director's gate
(``escalated -> blocked`` with an approval). Past the handoff chain, or when
the PM's answer cannot be used, the Director decides.

The Director's gate is a choice, and a plain approval (``/approve``, a
button, ``--auto-approve``) takes the recommended option, never "accept the
output as it is": an output at an escalation has not passed review (accepted
work is done, not escalated). The options (:data:`RETRY`, :data:`STOP`,
:data:`ACCEPT`, in that order; the last only when there is an output) are
stored on the approval, with the recommendation in ``choice``: retry with the
PM's guidance, or stop the task once the Director has already sent it back
(so an unattended run cannot loop). Accepting failed work takes an explicit
``/approve 3``, and the deliverable then says it was not reviewed.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from agency.db import repos
from agency.db.repos import overview, post, stream_addr, thread_addr
from agency.db.tables import ApprovalRow, EventRow, MemberRow, ProjectRow, StreamMemberRow, TaskRow
from agency.engine.base import PM_HANDLE, Core
from agency.engine.tasks import project_handles
from agency.errors import AgencyError, LLMOutputError
from agency.guided import escalation_schema
from agency.llm.client import CallContext
from agency.roles import pm as pm_role
from agency.schemas import EscalationDecision
from agency.states import TASK, ApprovalState, TaskState, transition

RETRY, STOP, ACCEPT = 1, 2, 3  # the options of an escalation approval, by number
DIRECTOR_RETRIES = 1  # retries the Director's gate recommends before it recommends stopping the task


class Escalations:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def pm_decision(self, pid: int, tid: int) -> None:
        core = self.core
        async with core.db.session() as s:
            t = await s.get(TaskRow, tid)
            p = await s.get(ProjectRow, pid)
            assert t is not None and p is not None
            seq, attempt, reason = t.seq, t.attempt, t.blocked_reason or "escalated"
            pm = await core.ensure_member(s, p.agency_id, PM_HANDLE, "pm", "pm")
            await s.commit()
            assignee = await s.get(MemberRow, t.assignee_id)
            assert assignee is not None
            members = await project_handles(s, pid)
            schema = escalation_schema([h for h in members if h not in (PM_HANDLE, assignee.handle)], core.catalogue.roles)
            task_view = {**core.task_view(t), "assignee": assignee.handle, "attempt": attempt, "output": (t.output or "")[:2000]}
            ctx = CallContext(role="pm", purpose="escalation", agency_id=p.agency_id, project_id=pid, task_id=tid, member_id=pm.id,
                              call_key=f"t{tid}:a{attempt}:escalation", meta={"purpose": "escalation", "reason": reason, "task": task_view})
        decision: EscalationDecision | None = None
        if attempt < core.settings.engine.handoff_chain - 1:  # bounded handoff chain, then the Director
            try:
                decision = await core.llm.call(EscalationDecision, pm_role.escalation_messages(task_view, reason, members, schema), ctx,
                                               json_schema=schema)
            except LLMOutputError:
                decision = None  # the PM's answer cannot be used: the Director decides
        async with core.db.session() as s:
            t = await s.get(TaskRow, tid)
            p = await s.get(ProjectRow, pid)
            assert t is not None and p is not None
            if await self._apply(s, p, t, decision, reason, seq):
                await core.commit(s, pid)
            else:
                await s.rollback()

    async def _apply(self, s: AsyncSession, p: ProjectRow, t: TaskRow, decision: EscalationDecision | None, reason: str, seq: int) -> bool:
        pid, tid = p.id, t.id
        guard = [TaskRow.seq == seq]
        action = decision.action if decision else "escalate"
        target: MemberRow | None = None
        if action == "reassign":
            target = await repos.member_by_handle(s, p.agency_id, decision.assignee) if decision and decision.assignee else None
            if target is None or target.kind not in ("specialist", "human") or target.id == t.assignee_id:
                action = "escalate"
        elif action == "hire":
            role = (decision.hire_role if decision else "") or ""
            definition = self.core.catalogue.get(role)
            if definition is None:
                action = "escalate"
            else:
                target = await self.core.ensure_member(s, p.agency_id, await self._free_handle(s, p.agency_id, role), "specialist",
                                                       definition.role, definition)
        elif action == "replan":
            action = "escalate"  # a replan mid-run is the Director's call
        again: dict[str, Any] = {"attempt": t.attempt + 1, "revision": 0, "step": 0, "blocked_reason": None, "asks": []}
        if action in ("reassign", "hire") and target is not None:
            old = (await s.get(MemberRow, t.assignee_id))
            if not await transition(s, TASK, tid, TaskState.RUNNING, frm=(TaskState.ESCALATED,), where=guard,
                                    values={**again, "assignee_id": target.id, "review_notes": None,
                                            "context": [{"from": PM_HANDLE, "text": decision.message if decision else reason}]}):
                return False
            repos.event(s, pid, action, task_id=tid, to=target.handle)  # not via transition(): its own `to` is the state
            if (await s.execute(select(StreamMemberRow).where(StreamMemberRow.stream_id == t.stream_id, StreamMemberRow.member_id == target.id))).first() is None:
                s.add(StreamMemberRow(stream_id=t.stream_id, member_id=target.id))
                if target.kind != "human":
                    await repos.declare_space(s, p.agency_id, thread_addr(t.stream_id, target.id), "thread", f"{target.handle} - work", parent=stream_addr(t.stream_id))
            post(s, p.agency_id, pid, overview(pid), PM_HANDLE,
                 f"/assign {t.key} @{target.handle} (was @{old.handle if old else '?'}): {reason}", kind="action")
            return True
        if action == "feedback" and decision is not None:
            if not await transition(s, TASK, tid, TaskState.RUNNING, frm=(TaskState.ESCALATED,), where=guard, project_id=pid,
                                    event="pm_feedback", values={**again, "context": [{"from": PM_HANDLE, "text": decision.message}]}):
                return False
            post(s, p.agency_id, pid, stream_addr(t.stream_id), PM_HANDLE, f"Guidance for {t.key}: {decision.message}")
            return True
        why = decision.message if decision and decision.message else reason
        if not await transition(s, TASK, tid, TaskState.BLOCKED, frm=(TaskState.ESCALATED,), where=guard, project_id=pid,
                                event="escalated_to_director", reason=why, values={"blocked_reason": reason}):
            return False
        retried = await director_retries(s, tid)
        recommended = RETRY if retried < DIRECTOR_RETRIES else STOP
        options = escalation_options(t, why, retried)
        appr = ApprovalRow(project_id=pid, kind="escalation", subject=t.key, status=ApprovalState.PENDING, options=options,
                           choice=recommended)
        s.add(appr)
        await s.flush()
        listed = "\n".join(f"{i}. {o}" + (" (recommended)" if i == recommended else "") for i, o in enumerate(options, 1))
        post(s, p.agency_id, pid, overview(pid), PM_HANDLE,
             f"/escalate {t.key} '{t.title}' needs you: {why}\n{listed}\n"
             f"`/approve` takes option {recommended}, `/approve N` another one, `/reject <guidance>` retries with your guidance.",
             kind="approval", approval_id=appr.id, mentions=["director"])
        return True

    @staticmethod
    async def _free_handle(s: AsyncSession, agency_id: int, role: str) -> str:
        base = role.capitalize()
        for suffix in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
            h = f"{base}-{suffix}"
            if await repos.member_by_handle(s, agency_id, h) is None:
                return h
        raise AgencyError(f"No free handle for role {role}.")


async def director_retries(s: AsyncSession, tid: int) -> int:
    """How many times the Director has sent this task back to work."""
    return int((await s.execute(select(func.count(EventRow.id)).where(EventRow.task_id == tid, EventRow.kind == "director_retry"))).scalar() or 0)


def escalation_options(t: TaskRow, guidance: str, retried: int) -> list[str]:
    """The Director's options at an escalation, numbered RETRY, STOP, ACCEPT (ACCEPT only with an output)."""
    g = " ".join((guidance or "").split())
    options = [
        f"Retry {t.key} with the PM's guidance: {g[:300]}" + (f" (sent back {retried} time(s) already)" if retried else ""),
        f"Stop {t.key} (and the tasks that need it); the deliverable will say what is missing",
    ]
    if t.output:
        options.append(f"Accept {t.key}'s output as it is, though it did not pass review")
    return options
