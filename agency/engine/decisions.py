"""The Director's decisions: approve or reject a pending approval, exactly once.

:meth:`Decisions.decide` first moves the approval ``pending -> approved |
rejected`` with a conditional update (the first statement of its transaction,
so two clicks, a button and ``/approve``, or two processes serialise on it):
only the first caller applies the effect; every other one is told who decided
it. The effect is one handler per approval kind, in the same transaction.
Other parts of the agency add kinds through ``extra`` (the Learning Manager's
``revision``).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from agency.db import repos
from agency.db.repos import SYSTEM, overview, post, stream_addr
from agency.db.tables import ApprovalRow, ProjectRow, StreamRow, TaskRow
from agency.engine.base import Core, now
from agency.engine.planning import Planning
from agency.engine.tasks import cancel, complete, reopen
from agency.errors import AgencyError, NotFoundError
from agency.states import APPROVAL, PROJECT, PROJECT_TERMINAL, STREAM, TASK, ApprovalState, ProjectState, StreamState, TaskState, transition

Handler = Callable[[AsyncSession, ProjectRow, ApprovalRow, bool, "str | None", "int | None"], Awaitable[str]]


class Decisions:
    def __init__(self, core: Core, planning: Planning, extra: Mapping[str, Handler] | None = None,
                 on_decided: Callable[[int], None] | None = None) -> None:
        self.core = core
        self.planning = planning
        self.on_decided = on_decided  # wakes the project's runner
        self.handlers: dict[str, Handler] = {
            "approach": self._approach, "plan": self._plan, "milestone": self._milestone, "task": self._task,
            "escalation": self._escalation, "budget": self._budget, **(extra or {}),
        }
        self.core_kinds = frozenset({"approach", "plan", "milestone", "task", "escalation", "budget"})

    async def decide(self, approval_id: int, approved: bool, *, actor: str, reason: str | None = None, choice: int | None = None,
                     agency_id: int | None = None) -> str:
        """Apply the Director's approve/reject once. ``agency_id``: the caller's agency; an approval of
        another agency answers like an unknown one."""
        if not approved and not (reason or "").strip():
            raise AgencyError("A reject needs a reason: say what to change, e.g. `/reject use more recent sources`.")
        if choice is not None and choice < 1:
            raise AgencyError("Choose an approach by its number, from 1: e.g. `/approve 2`.")
        async with self.core.db.session() as s:
            values: dict[str, Any] = {"reason": reason, "decided_by": actor, "decided_at": now()}
            if approved and choice is not None:
                values["choice"] = choice
            to = ApprovalState.APPROVED if approved else ApprovalState.REJECTED
            mine = [ApprovalRow.project_id.in_(select(ProjectRow.id).where(ProjectRow.agency_id == agency_id))] if agency_id is not None else []
            if not await transition(s, APPROVAL, approval_id, to, frm=(ApprovalState.PENDING,), where=mine, values=values):
                await s.rollback()
                a = await s.get(ApprovalRow, approval_id)
                p = await s.get(ProjectRow, a.project_id) if a is not None else None
                if a is None or p is None or (agency_id is not None and p.agency_id != agency_id):
                    raise NotFoundError(f"There is no approval #{approval_id}.")
                return f"Approval #{approval_id} was already {a.status}" + (f" by {a.decided_by}." if a.decided_by else ".")
            a = await s.get(ApprovalRow, approval_id)
            assert a is not None
            p = await s.get(ProjectRow, a.project_id)
            assert p is not None
            if p.status in PROJECT_TERMINAL and a.kind in self.core_kinds:  # extra kinds (a revision) outlive the project
                await s.rollback()
                await s.refresh(p)  # a rollback expires what the session loaded
                raise AgencyError(f"Project #{p.id} is {p.status}.")
            handler = self.handlers.get(a.kind)
            if handler is None:
                kind = a.kind
                await s.rollback()
                raise AgencyError(f"Unknown approval kind {kind}.")
            try:
                result = await handler(s, p, a, approved, reason, choice)
            except Exception:
                await s.rollback()  # nothing of the decision stands: the approval stays pending
                raise
            repos.event(s, p.id, "decision", approval=a.id, kind=a.kind, approved=approved, reason=reason, actor=actor)
            await self.core.commit(s, p.id)
            pid = p.id
        if self.on_decided is not None:
            self.on_decided(pid)
        return result

    async def pending(self, project_id: int) -> ApprovalRow | None:
        async with self.core.db.session() as s:
            return (await s.execute(select(ApprovalRow).where(ApprovalRow.project_id == project_id, ApprovalRow.status == ApprovalState.PENDING)
                                    .order_by(ApprovalRow.id).limit(1))).scalar_one_or_none()

    @staticmethod
    def _moved_on(p: ProjectRow, what: str) -> AgencyError:
        return AgencyError(f"Project #{p.id} is no longer waiting for {what} (it is {p.status}).")

    # -- one handler per kind ---------------------------------------------------------------------
    async def _approach(self, s: AsyncSession, p: ProjectRow, a: ApprovalRow, approved: bool, reason: str | None, choice: int | None) -> str:
        pid = p.id
        if approved:
            idx = choice or a.choice or 1
            if not await self.planning.choose_approach(s, p, idx):
                raise self._moved_on(p, "an approach")
            post(s, p.agency_id, pid, overview(pid), SYSTEM, f"Approach {idx} chosen; the PM is writing the plan.")
            return f"Approach {idx} chosen."
        if not await transition(s, PROJECT, pid, ProjectState.NEW, frm=(ProjectState.AWAITING_APPROACH,), project_id=pid,
                                event="approaches_rejected", values={"director_notes": [*p.director_notes, {"about": "approach", "text": reason}],
                                                                     "approach_round": ProjectRow.approach_round + 1}):
            raise self._moved_on(p, "an approach")
        post(s, p.agency_id, pid, overview(pid), SYSTEM, f"Approaches rejected: {reason}. The PM will propose again.")
        return "The PM will propose new approaches."

    async def _plan(self, s: AsyncSession, p: ProjectRow, a: ApprovalRow, approved: bool, reason: str | None, choice: int | None) -> str:
        pid = p.id
        if approved:
            if not await transition(s, PROJECT, pid, ProjectState.STAFFING, frm=(ProjectState.AWAITING_PLAN,), project_id=pid, event="plan_approved"):
                raise self._moved_on(p, "plan approval")
            post(s, p.agency_id, pid, overview(pid), SYSTEM, "Plan approved; setting up streams and starting work.")
            return "Plan approved."
        if not await transition(s, PROJECT, pid, ProjectState.PLANNING, frm=(ProjectState.AWAITING_PLAN,), project_id=pid, event="plan_rejected",
                                values={"director_notes": [*p.director_notes, {"about": "plan", "text": reason}],
                                        "plan_round": ProjectRow.plan_round + 1, "plan_attempt": 0, "plan_problems": None}):
            raise self._moved_on(p, "plan approval")
        post(s, p.agency_id, pid, overview(pid), SYSTEM, f"Plan rejected: {reason}. The PM will revise it.")
        return "The PM will revise the plan."

    async def _milestone(self, s: AsyncSession, p: ProjectRow, a: ApprovalRow, approved: bool, reason: str | None, choice: int | None) -> str:
        pid = p.id
        st = (await s.execute(select(StreamRow).where(StreamRow.project_id == pid, StreamRow.key == a.subject))).scalar_one()
        if approved:
            if not await transition(s, STREAM, st.id, StreamState.DONE, frm=(StreamState.GATED,), project_id=pid, event="milestone_approved", stream=st.key):
                raise self._moved_on(p, f"milestone {st.key}")
            post(s, p.agency_id, pid, stream_addr(st.id), SYSTEM, f"Milestone #{st.key} approved by the Director.")
            return f"Milestone {st.key} approved."
        last = (await s.execute(select(TaskRow).where(TaskRow.stream_id == st.id, TaskRow.status == TaskState.DONE)
                                .order_by(TaskRow.finished_at.desc(), TaskRow.key.desc()).limit(1))).scalar_one()
        if not (await transition(s, STREAM, st.id, StreamState.OPEN, frm=(StreamState.GATED,), project_id=pid, event="milestone_rejected", stream=st.key)
                and await reopen(s, p, last, f"Director: {reason}", frm=(TaskState.DONE,))):
            raise self._moved_on(p, f"milestone {st.key}")
        return f"{last.key} reopened with your notes."

    async def _task(self, s: AsyncSession, p: ProjectRow, a: ApprovalRow, approved: bool, reason: str | None, choice: int | None) -> str:
        t = (await s.execute(select(TaskRow).where(TaskRow.project_id == p.id, TaskRow.key == a.subject))).scalar_one()
        if approved:
            if not await complete(s, p, t, frm=(TaskState.APPROVAL,)):
                raise self._moved_on(p, f"approval of {t.key}")
            return f"{t.key} approved."
        if not await reopen(s, p, t, f"Director: {reason}", frm=(TaskState.APPROVAL,)):
            raise self._moved_on(p, f"approval of {t.key}")
        return f"{t.key} sent back with your notes."

    async def _escalation(self, s: AsyncSession, p: ProjectRow, a: ApprovalRow, approved: bool, reason: str | None, choice: int | None) -> str:
        pid = p.id
        t = (await s.execute(select(TaskRow).where(TaskRow.project_id == pid, TaskRow.key == a.subject))).scalar_one()
        if approved and t.output:
            if not await complete(s, p, t, frm=(TaskState.BLOCKED,)):
                raise self._moved_on(p, f"a decision on {t.key}")
            post(s, p.agency_id, pid, stream_addr(t.stream_id), SYSTEM, f"The Director accepted {t.key} as it is.")
            return f"{t.key} accepted as it is."
        if not await transition(s, TASK, t.id, TaskState.RUNNING, frm=(TaskState.BLOCKED,), project_id=pid, event="director_retry",
                                values={"attempt": TaskRow.attempt + 1, "step": 0, "revision": 0, "blocked_reason": None, "asks": [],
                                        "context": [{"from": "Director", "text": reason or "Please try again."}]}):
            raise self._moved_on(p, f"a decision on {t.key}")
        post(s, p.agency_id, pid, stream_addr(t.stream_id), SYSTEM, f"The Director sent {t.key} back to work" + (f": {reason}" if reason else "."))
        return f"{t.key} is running again."

    async def _budget(self, s: AsyncSession, p: ProjectRow, a: ApprovalRow, approved: bool, reason: str | None, choice: int | None) -> str:
        pid = p.id
        if not approved:
            if not await cancel(s, p, f"stopped at the budget: {reason}"):
                raise self._moved_on(p, "a budget decision")
            return "Project stopped."
        values: dict[str, Any] = {"budget_warned": 0, "paused_from": None}
        if p.budget_usd:
            values["budget_usd"] = round(p.budget_usd * 1.5, 6) if not choice else float(choice)
        if p.budget_tokens:
            values["budget_tokens"] = int(p.budget_tokens * 1.5) if not choice else int(choice)
        if not await transition(s, PROJECT, pid, p.paused_from or ProjectState.RUNNING, frm=(ProjectState.PAUSED,),
                                where=[ProjectRow.paused_from == p.paused_from] if p.paused_from else [], project_id=pid,
                                event="budget_raised", values=values):
            raise self._moved_on(p, "a budget decision")
        post(s, p.agency_id, pid, overview(pid), SYSTEM, "Budget raised; the project continues.")
        return "Budget raised."
