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
from agency.db.tables import ApprovalRow, EventRow, ProjectRow, StreamRow, TaskRow
from agency.engine.base import PM_HANDLE, Core, now
from agency.engine.escalation import ACCEPT, RETRY, STOP
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
        own: dict[str, Handler] = {
            "approach": self._approach, "plan": self._plan, "milestone": self._milestone, "task": self._task,
            "escalation": self._escalation, "budget": self._budget,
        }
        self.core_kinds = frozenset(own)  # the project's own gates; extra kinds (a revision) outlive the project
        self.handlers: dict[str, Handler] = {**own, **(extra or {})}

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
        """Approve takes the chosen option, else the recommended one (agency.engine.escalation: retry with the
        PM's guidance, stop the task, or, only when chosen explicitly, accept its unreviewed output); reject
        retries with the Director's guidance."""
        pid = p.id
        t = (await s.execute(select(TaskRow).where(TaskRow.project_id == pid, TaskRow.key == a.subject))).scalar_one()
        options = list(a.options or [])
        if approved and options:
            pick = choice or a.choice or RETRY
            if not 1 <= pick <= len(options):
                raise AgencyError(f"Choose an option between 1 and {len(options)}: " + "; ".join(f"{i}. {o}" for i, o in enumerate(options, 1)))
            if pick == ACCEPT:
                return await self._accept_unreviewed(s, p, t)
            if pick == STOP:
                return await self._stop_task(s, p, t)
            guidance = await self._pm_guidance(s, t) or "Please try again."
            return await self._retry(s, p, t, PM_HANDLE, guidance)
        if approved and t.output:  # an approval asked before escalations had options: what its message offered
            return await self._accept_unreviewed(s, p, t)
        return await self._retry(s, p, t, "Director", reason or "Please try again.")

    async def _retry(self, s: AsyncSession, p: ProjectRow, t: TaskRow, author: str, guidance: str) -> str:
        if not await transition(s, TASK, t.id, TaskState.RUNNING, frm=(TaskState.BLOCKED,), project_id=p.id, event="director_retry",
                                values={"attempt": TaskRow.attempt + 1, "step": 0, "revision": 0, "blocked_reason": None, "asks": [],
                                        "context": [{"from": author, "text": guidance}]}):
            raise self._moved_on(p, f"a decision on {t.key}")
        said = f" with the PM's guidance: {guidance}" if author == PM_HANDLE else (f": {guidance}" if guidance else ".")
        post(s, p.agency_id, p.id, stream_addr(t.stream_id), SYSTEM, f"The Director sent {t.key} back to work{said}")
        return f"{t.key} is running again."

    async def _accept_unreviewed(self, s: AsyncSession, p: ProjectRow, t: TaskRow) -> str:
        if not await complete(s, p, t, frm=(TaskState.BLOCKED,)):
            raise self._moved_on(p, f"a decision on {t.key}")
        repos.event(s, p.id, "accepted_without_review", task_id=t.id, key=t.key)
        post(s, p.agency_id, p.id, stream_addr(t.stream_id), SYSTEM,
             f"The Director accepted {t.key} as it is, though it did not pass review; the deliverable will say so.")
        return f"{t.key} accepted as it is (not reviewed)."

    async def _stop_task(self, s: AsyncSession, p: ProjectRow, t: TaskRow) -> str:
        """Cancel the task and every task that (transitively) needs it: the project goes on without them,
        and the deliverable says what is missing."""
        if not await transition(s, TASK, t.id, TaskState.CANCELLED, frm=(TaskState.BLOCKED,), project_id=p.id, event="task_stopped",
                                key=t.key, values={"blocked_reason": "stopped by the Director", "finished_at": now()}):
            raise self._moved_on(p, f"a decision on {t.key}")
        deps = await repos.task_deps(s, p.id)
        needs: dict[int, list[int]] = {}
        for tid, ds in deps.items():
            for d in ds:
                needs.setdefault(d, []).append(tid)
        tasks = {x.id: x for x in await repos.project_tasks(s, p.id)}
        stopped, todo = [], list(needs.get(t.id, []))
        while todo:
            x = tasks.get(todo.pop())
            if x is None or x.key in stopped:
                continue
            if await transition(s, TASK, x.id, TaskState.CANCELLED, frm=(TaskState.PENDING,), project_id=p.id, event="task_stopped",
                                key=x.key, because=t.key, values={"blocked_reason": f"needs {t.key}, which was stopped", "finished_at": now()}):
                stopped.append(x.key)
                todo += needs.get(x.id, [])
        also = f" with {', '.join(sorted(stopped))}, which need{'s' if len(stopped) == 1 else ''} it" if stopped else ""
        post(s, p.agency_id, p.id, stream_addr(t.stream_id), SYSTEM,
             f"The Director stopped {t.key}{also}; the project goes on without them and the deliverable will say what is missing.")
        return f"{t.key} stopped{also}."

    @staticmethod
    async def _pm_guidance(s: AsyncSession, t: TaskRow) -> str:
        """What the PM said when it passed the task to the Director (the escalation's recommendation)."""
        row = (await s.execute(select(EventRow.data).where(EventRow.task_id == t.id, EventRow.kind == "escalated_to_director")
                               .order_by(EventRow.id.desc()).limit(1))).scalar_one_or_none()
        return str((row or {}).get("reason") or t.blocked_reason or "")

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
