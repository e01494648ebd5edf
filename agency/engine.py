"""Runs projects durably.

State lives in the database, not in coroutines: every step reads the project
and its tasks, makes at most one model call, and writes the result together
with its outbound messages in one transaction. After a crash or restart,
:meth:`Engine.start` reloads every unfinished project and carries on from the
last committed step; model answers already recorded are reused (see
:class:`agency.llm.client.LLMClient`), and conditional updates make sure no
task is completed twice.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import structlog
from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from agency import commands as cmdlib
from agency import dag
from agency.db import repos
from agency.db.repos import SYSTEM, overview, post, stream_addr, thread_addr
from agency.db.session import Database
from agency.db.tables import (
    ApprovalRow,
    EventRow,
    ApproachRow,
    FeedbackRow,
    MemberRow,
    ProjectRow,
    StreamMemberRow,
    StreamRow,
    SystemMessageRow,
    TaskDepRow,
    TaskRow,
)
from agency.errors import AgencyError, BudgetExceededError, LLMError, LLMOutputError, NotFoundError
from agency.llm.client import CallContext, LLMClient
from agency.llm.router import choose_tier, next_tier, weighted_score
from agency.llm.simulated import NOTICE
from agency.llm.usage import format_usd
from agency.logs import redact
from agency.models import TERMINAL
from agency.roles import collaborator as collab_role
from agency.roles import pm as pm_role
from agency.roles import specialist as spec_role
from agency.roles.common import specialist_system_message
from agency.schemas import (
    AgentTurn,
    ApproachSet,
    Deliverable,
    EscalationDecision,
    Review,
    SpecialistDefinition,
    WorkPlan,
)
from agency.settings import Settings
from specialists.loader import Catalogue

log = logging.getLogger(__name__)
PM_HANDLE = "PM"
LEARNING_HANDLE = "Learning-Manager"
EST_PROMPT_TOKENS = 1500
EST_COMPLETION_TOKENS = 600
HISTORY_ITEMS = 12  # a task's kept conversation: the member's drafts, answers, feedback (newest last)

Recall = Callable[[int, str, str | None, str, int | None], Awaitable[tuple[str, list[Any]]]]
ProjectHook = Callable[[int], Awaitable[None]]


class ProjectPaused(Exception):
    """Raised before a model call when the project is no longer running."""


@dataclass
class FlightStats:
    in_flight: int = 0
    max_in_flight: int = 0
    started: int = 0  # task workers started (a resumed task counts again)


LOCK_RETRIES = 5

# Built once: constructing a SQLAlchemy statement costs more than SQLite running it, and these run
# for every model call or task step.
_PROJECT_GATE = select(ProjectRow.status, ProjectRow.budget_usd, ProjectRow.budget_tokens).where(ProjectRow.id == bindparam("pid"))
_TASK_STEP = (select(TaskRow.status, MemberRow.kind).join(MemberRow, MemberRow.id == TaskRow.assignee_id)
              .where(TaskRow.id == bindparam("tid")))
_DEP_OUTPUTS = (select(TaskRow.key, TaskRow.output).join(TaskDepRow, TaskDepRow.depends_on_id == TaskRow.id)
                .where(TaskDepRow.task_id == bindparam("tid")).order_by(TaskRow.key))
_OTHER_OUTPUTS = select(TaskRow.key, TaskRow.output).where(
    TaskRow.project_id == bindparam("pid"), TaskRow.id != bindparam("tid"), TaskRow.output.is_not(None))
_COMPLETE = (update(TaskRow).where(TaskRow.id == bindparam("tid"), TaskRow.status.in_(("review", "approval", "blocked")))
             .values(status="done", finished_at=bindparam("now"), completions=TaskRow.completions + 1)
             .execution_options(synchronize_session=False))  # _complete sets what it wrote on the loaded row
_PROJECT_STREAMS = select(StreamRow).where(StreamRow.project_id == bindparam("pid"))
_AGENCY_HUMANS = select(MemberRow.id).where(MemberRow.agency_id == bindparam("aid"), MemberRow.kind == "human")
_DEPENDENT_KEYS = (select(TaskRow.key).join(TaskDepRow, TaskDepRow.task_id == TaskRow.id)
                   .where(TaskDepRow.depends_on_id == bindparam("tid")).order_by(TaskRow.key))


def is_lock_timeout(e: BaseException) -> bool:
    return "database is locked" in str(getattr(e, "orig", e))


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Engine:
    def __init__(
        self,
        db: Database,
        llm: LLMClient,
        settings: Settings,
        catalogue: Catalogue,
        *,
        recall: Recall | None = None,
        tools: Any = None,
    ) -> None:
        self.db = db
        self.llm = llm
        self.settings = settings
        self.catalogue = catalogue
        self.recall = recall  # memory: (agency_id, handle, role, query, project_id) -> (text, retrieved)
        self.tools = tools  # agency.tools.registry.ToolRegistry, or None: no tools
        self.on_project_done: list[ProjectHook] = []
        # more approval kinds (e.g. "revision" from the Learning Manager): kind -> async (s, project, approval, approved, reason, choice) -> str
        self.extra_decisions: dict[str, Callable[..., Awaitable[str]]] = {}
        self.on_change: list[Callable[[int], None]] = []  # live status, metrics
        self.outbox_ready = asyncio.Event()
        self.stats: dict[int, FlightStats] = {}
        self._runners: dict[int, asyncio.Task[None]] = {}
        self._wake: dict[int, asyncio.Event] = {}
        self._stopping = False
        self._halting: set[int] = set()  # projects whose task workers must stop at their next step
        llm.budget_check = self._before_call

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> list[int]:
        """Resume every unfinished project (after a restart)."""
        async with self.db.session() as s:
            ids = list(
                (await s.execute(select(ProjectRow.id).where(ProjectRow.status.not_in(TERMINAL)))).scalars()
            )
        for pid in ids:
            self.spawn(pid)
        if ids:
            log.info("resumed %d project(s): %s", len(ids), ids)
        if self.on_project_done:
            async with self.db.session() as s:
                finished = select(EventRow.project_id).where(EventRow.kind == "after_delivery_done")
                cut = list((await s.execute(select(ProjectRow.id).where(ProjectRow.status == "done", ProjectRow.id.not_in(finished)))).scalars())
            for pid in cut:  # delivered, but the process stopped before memory and learning ran
                self._runners[pid] = asyncio.create_task(self._after_delivery(pid), name=f"after-delivery-{pid}")
        return ids

    def spawn(self, project_id: int) -> None:
        t = self._runners.get(project_id)
        if t is not None and not t.done():
            self.wake(project_id)
            return
        self._runners[project_id] = asyncio.create_task(self._run_project(project_id), name=f"project-{project_id}")

    def wake(self, project_id: int) -> None:
        self._wake.setdefault(project_id, asyncio.Event()).set()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop scheduling: every runner and worker ends at its next step (committed state stands)."""
        self._stopping = True
        for ev in self._wake.values():
            ev.set()
        await self._stop_tasks([t for t in self._runners.values() if not t.done()], timeout)

    async def _stop_tasks(self, tasks: list[asyncio.Task[Any]], timeout: float) -> None:
        """End tasks without interrupting a database write: a task waiting on a model is cancelled at
        once; any other finishes its step and stops at the next check. Past ``timeout``, cancel."""
        pending = {t for t in tasks if not t.done()}
        end = asyncio.get_running_loop().time() + timeout
        while pending:
            for t in pending:
                if t in self.llm.in_model:
                    t.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.05)
            if pending and asyncio.get_running_loop().time() > end:
                log.warning("%d task(s) did not stop within %.0f s; cancelling them", len(pending), timeout)
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                break
        for t in tasks:  # retrieved here: how they ended is already recorded in the database
            if t.done() and not t.cancelled():
                t.exception()

    async def wait_project(self, project_id: int) -> None:
        t = self._runners.get(project_id)
        if t is not None:
            await asyncio.shield(t)

    def _changed(self, s_or_pid: int) -> None:
        self.outbox_ready.set()
        for cb in self.on_change:
            try:
                cb(s_or_pid)
            except Exception:
                log.exception("on_change callback failed")

    async def _wait_wake(self, pid: int, timeout: float | None = None) -> None:
        ev = self._wake.setdefault(pid, asyncio.Event())
        try:
            async with asyncio.timeout(timeout):
                await ev.wait()
        except TimeoutError:
            pass
        ev.clear()

    async def _commit(self, s: AsyncSession, pid: int | None) -> None:
        await s.commit()
        if pid is not None:
            self._changed(pid)
        else:
            self.outbox_ready.set()

    # -- the project loop ----------------------------------------------------------------------
    async def _run_project(self, pid: int) -> None:
        structlog.contextvars.clear_contextvars()  # this task's own context: every log line in it carries the project id
        structlog.contextvars.bind_contextvars(project_id=pid)
        lock_retries = 0
        try:
            while not self._stopping:
                async with self.db.session() as s:
                    p = await s.get(ProjectRow, pid)
                    if p is None:
                        return
                    status = p.status
                if status in TERMINAL:
                    return
                try:
                    if status == "new":
                        await self._propose(pid)
                    elif status == "planning":
                        await self._plan(pid)
                    elif status == "staffing":
                        await self._staff(pid)
                    elif status == "running":
                        await self._run_tasks(pid)
                    elif status == "delivering":
                        await self._deliver(pid)
                    else:  # awaiting_approach, awaiting_plan, paused, blocked: the Director decides
                        await self._wait_wake(pid)
                except ProjectPaused:
                    continue
                except BudgetExceededError as e:
                    await self._pause_for_budget(pid, e.user_message)
                except LLMError as e:
                    await self._block(pid, f"A model call failed: {e.user_message}")
                except OperationalError as e:
                    # SQLite breaks a lock wait with "database is locked" once its busy timeout passes; the
                    # step's transaction was rolled back, and every step is safe to redo (as after a restart)
                    if not is_lock_timeout(e) or lock_retries >= LOCK_RETRIES:
                        raise
                    lock_retries += 1
                    log.warning("project %s: the database was locked; retrying the step (%d/%d)", pid, lock_retries, LOCK_RETRIES)
                    await asyncio.sleep(min(0.5 * 2 ** lock_retries, 5.0))
                else:
                    lock_retries = 0
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never die silently: record and tell the Director
            log.exception("project %s crashed", pid)
            await self._block(pid, f"Internal error: {type(e).__name__}: {e}")

    async def _block(self, pid: int, reason: str) -> None:
        async with self.db.session() as s:
            p = await s.get(ProjectRow, pid)
            if p is None or p.status in TERMINAL:
                return
            p.paused_from = p.status if p.status not in ("blocked", "paused") else p.paused_from
            p.status = "blocked"
            p.error = reason
            post(s, p.agency_id, pid, overview(pid), SYSTEM,
                 f"Project #{pid} is blocked: {reason}\nFix the cause, then `/project resume` to retry, or `/project cancel`.",
                 kind="notice", mentions=["director"])
            repos.event(s, pid, "blocked", reason=reason)
            await self._commit(s, pid)

    # -- budget -------------------------------------------------------------------------------
    async def _before_call(self, ctx: CallContext) -> None:
        if ctx.project_id is None:
            return
        if self._stopping or ctx.project_id in self._halting:
            raise ProjectPaused()
        async with self.db.engine.connect() as conn:  # the common case in one prebuilt read, no ORM session
            gate = (await conn.execute(_PROJECT_GATE, {"pid": ctx.project_id})).one_or_none()
        if gate is None:
            return
        status, budget_usd, budget_tokens = gate
        if status in ("paused", "cancelled", "blocked") and ctx.purpose not in ("evaluate", "revise"):
            raise ProjectPaused()
        if budget_usd is None and budget_tokens is None:
            return
        async with self.db.session() as s:  # a budget: load the project, whose warning flag this may set
            p = await s.get(ProjectRow, ctx.project_id)
            if p is None:
                return
            tokens, cost, _ = await repos.project_usage(s, p.id)
            spent = cost / p.budget_usd if p.budget_usd else tokens / p.budget_tokens  # type: ignore[operator]
            if spent >= 1.0:
                raise BudgetExceededError(
                    f"Project #{p.id} has spent {self._spend_text(p, tokens, cost)}; raise the budget with `/budget <usd>` or stop."
                )
            if spent >= self.settings.engine.budget_warn_ratio and not p.budget_warned:
                p.budget_warned = 1
                post(s, p.agency_id, p.id, overview(p.id), SYSTEM,
                     f"Budget warning: project #{p.id} has used {spent:.0%} ({self._spend_text(p, tokens, cost)}).",
                     kind="notice", mentions=["director"])
                repos.event(s, p.id, "budget_warning", ratio=spent)
                await self._commit(s, p.id)

    @staticmethod
    def _spend_text(p: ProjectRow, tokens: int, cost: float) -> str:
        if p.budget_usd:
            return f"{format_usd(cost)} of {format_usd(p.budget_usd)}"
        return f"{tokens} of {p.budget_tokens} tokens"

    async def _pause_for_budget(self, pid: int, message: str) -> None:
        async with self.db.session() as s:
            p = await s.get(ProjectRow, pid)
            if p is None or p.status in TERMINAL or p.status == "paused":
                return
            p.paused_from = p.status
            p.status = "paused"
            appr = ApprovalRow(project_id=pid, kind="budget", subject="budget", status="pending",
                               options=["Raise the budget by 50%", "Stop the project"])
            s.add(appr)
            await s.flush()
            post(s, p.agency_id, pid, overview(pid), SYSTEM, message + "\nApprove to raise the budget by 50%, reject to stop.",
                 kind="approval", approval_id=appr.id, mentions=["director"])
            repos.event(s, pid, "budget_exceeded")
            await self._commit(s, pid)

    # -- approaches ----------------------------------------------------------------------------
    async def _ctx(self, s: AsyncSession, p: ProjectRow, role: str, purpose: str, key: str, **kw: Any) -> CallContext:
        return CallContext(role=role, purpose=purpose, agency_id=p.agency_id, project_id=p.id,
                           call_key=f"p{p.id}:{key}", meta={"objective": p.objective, "purpose": purpose, **kw.pop("meta", {})}, **kw)

    async def _propose(self, pid: int) -> None:
        async with self.db.session() as s:
            p = await s.get(ProjectRow, pid)
            assert p is not None
            pm = await self._ensure_member(s, p.agency_id, PM_HANDLE, "pm", "pm")
            await s.commit()
            notes = [n["text"] for n in p.director_notes if n.get("about") == "approach"]
            memories, retrieved = await self._recall(p.agency_id, PM_HANDLE, "pm", p.objective, p.id)
            ctx = await self._ctx(s, p, "pm", "approaches", f"approaches:r{p.approach_round}", member_id=pm.id)
            ctx.retrieved = retrieved
        result = await self.llm.call(ApproachSet, pm_role.approaches_messages(p.objective, notes, memories), ctx)
        async with self.db.session() as s:
            p = await s.get(ProjectRow, pid)
            assert p is not None
            if p.status != "new":
                return
            for i, a in enumerate(result.approaches, 1):
                s.add(ApproachRow(project_id=pid, round=p.approach_round, idx=i, title=a.title, summary=a.summary,
                                  outputs=a.outputs, risks=a.risks, rough_cost=a.rough_cost))
            text = "\n\n".join(
                f"**{i}. {a.title}**{' (recommended)' if i == result.recommended else ''}\n{a.summary}\n"
                f"Outputs: {', '.join(a.outputs)}\nRisks: {', '.join(a.risks) or 'none noted'}\nRough cost: {a.rough_cost or 'n/a'}"
                for i, a in enumerate(result.approaches, 1)
            )
            if p.oversight == "autonomous":
                await self._choose_approach(s, p, result.recommended)
                post(s, p.agency_id, pid, overview(pid), PM_HANDLE,
                     f"Approaches for project #{pid}:\n\n{text}\n\nAutonomous mode: going with {result.recommended}.")
            else:
                appr = ApprovalRow(project_id=pid, kind="approach", subject=f"round {p.approach_round}", status="pending",
                                   options=[f"{i}. {a.title}" for i, a in enumerate(result.approaches, 1)], choice=result.recommended)
                s.add(appr)
                await s.flush()
                p.status = "awaiting_approach"
                post(s, p.agency_id, pid, overview(pid), PM_HANDLE,
                     f"Approaches for project #{pid}:\n\n{text}\n\nPick one (`/approve N`), or `/reject <what to change>`.",
                     kind="approval", approval_id=appr.id, mentions=["director"])
            repos.event(s, pid, "approaches", count=len(result.approaches), recommended=result.recommended)
            await self._commit(s, pid)

    async def _choose_approach(self, s: AsyncSession, p: ProjectRow, idx: int) -> None:
        rows = list((await s.execute(select(ApproachRow).where(ApproachRow.project_id == p.id, ApproachRow.round == p.approach_round).order_by(ApproachRow.idx))).scalars())
        if not rows:
            raise NotFoundError(f"Project #{p.id} has no approaches yet.")
        if not 1 <= idx <= len(rows):
            raise AgencyError(f"Choose an approach between 1 and {len(rows)}.")
        for r in rows:
            r.chosen = int(r.idx == idx)
        p.status = "planning"
        repos.event(s, p.id, "approach_chosen", idx=idx)

    # -- plan ---------------------------------------------------------------------------------
    async def _plan(self, pid: int) -> None:
        problems: list[str] = []
        for attempt in range(self.settings.engine.plan_rounds):
            async with self.db.session() as s:
                p = await s.get(ProjectRow, pid)
                assert p is not None
                pm = await self._ensure_member(s, p.agency_id, PM_HANDLE, "pm", "pm")
                await s.commit()
                approach = (await s.execute(select(ApproachRow).where(ApproachRow.project_id == pid, ApproachRow.chosen == 1).order_by(ApproachRow.id.desc()).limit(1))).scalar_one_or_none()
                stored = [
                    {"handle": m.handle, "role": m.role, "expertise": (m.definition or {}).get("expertise", [])[:4]}
                    for m in (await s.execute(select(MemberRow).where(MemberRow.agency_id == p.agency_id, MemberRow.kind == "specialist", MemberRow.active == 1))).scalars()
                ]
                humans = [m.handle for m in (await s.execute(select(MemberRow).where(MemberRow.agency_id == p.agency_id, MemberRow.kind == "human"))).scalars()]
                notes = [n["text"] for n in p.director_notes]
                budget = format_usd(p.budget_usd) if p.budget_usd else (f"{p.budget_tokens} tokens" if p.budget_tokens else "none set")
                memories, retrieved = await self._recall(p.agency_id, PM_HANDLE, "pm", p.objective, p.id)
                appr_dict = {"title": approach.title, "summary": approach.summary, "outputs": approach.outputs} if approach else None
                ctx = await self._ctx(s, p, "pm", "plan", f"plan:r{p.plan_round}:a{attempt}", member_id=pm.id,
                                      meta={"approach": approach.title if approach else None, "director_notes": notes, "problems": problems})
                ctx.retrieved = retrieved
                msgs = pm_role.plan_messages(p.objective, appr_dict, catalogue=self.catalogue.describe(), stored=stored, humans=humans,
                                             notes=notes, problems=problems, oversight=p.oversight, budget=budget, memories=memories)
            try:
                plan = await self.llm.call(WorkPlan, msgs, ctx)
            except LLMError as e:
                problems = [f"your reply could not be used: {e.user_message}"]
                continue
            async with self.db.session() as s:
                p = await s.get(ProjectRow, pid)
                assert p is not None
                problems = await self.validate_plan(s, p, plan)
                if problems:
                    repos.event(s, pid, "plan_invalid", problems=problems, attempt=attempt)
                    post(s, p.agency_id, pid, overview(pid), SYSTEM,
                         "The PM's plan was returned for fixes:\n" + "\n".join(f"- {x}" for x in problems[:10]), kind="notice")
                    await self._commit(s, pid)
                    continue
                if p.status != "planning":
                    return
                p.plan = plan.model_dump()
                est = self.estimate_cost(plan)
                summary = self.plan_text(plan, est)
                repos.event(s, pid, "plan_valid", tasks=len(plan.tasks), streams=len(plan.streams), estimate_usd=est)
                if p.oversight == "autonomous":
                    p.status = "staffing"
                    post(s, p.agency_id, pid, overview(pid), PM_HANDLE, summary)
                else:
                    appr = ApprovalRow(project_id=pid, kind="plan", subject=f"round {p.plan_round}", status="pending")
                    s.add(appr)
                    await s.flush()
                    p.status = "awaiting_plan"
                    post(s, p.agency_id, pid, overview(pid), PM_HANDLE,
                         summary + "\n\n`/approve` to start the work, or `/reject <what to change>`.",
                         kind="approval", approval_id=appr.id, mentions=["director"])
                await self._commit(s, pid)
                return
        await self._block(pid, "The PM could not produce a valid plan:\n" + "\n".join(f"- {x}" for x in problems[:10]))

    async def validate_plan(self, s: AsyncSession, p: ProjectRow, plan: WorkPlan) -> list[str]:
        problems: list[str] = []
        handles: dict[str, str] = {}
        for st in plan.specialists:
            if st.handle.lower() in {PM_HANDLE.lower(), LEARNING_HANDLE.lower()} or st.handle.lower().startswith("collab-"):
                problems.append(f"handle {st.handle} is reserved; pick another")
                continue
            if st.handle in handles:
                problems.append(f"specialist handle {st.handle} is listed twice")
            handles[st.handle] = st.role
            existing = await repos.member_by_handle(s, p.agency_id, st.handle)
            if existing is not None and existing.kind in ("specialist",) and existing.role != st.role:
                problems.append(f"@{st.handle} is a stored {existing.role}, not a {st.role}; use another handle")
            elif existing is not None and existing.kind not in ("specialist", "human"):
                problems.append(f"handle {st.handle} belongs to the {existing.kind}; pick another")
            elif existing is None and st.definition is None and self.catalogue.get(st.role) is None:
                problems.append(f"role {st.role!r} of @{st.handle} is not in the catalogue ({', '.join(self.catalogue.roles)}); give a `definition` or use a catalogue role")
        humans = [m.handle for m in (await s.execute(select(MemberRow).where(MemberRow.agency_id == p.agency_id, MemberRow.kind == "human"))).scalars()]
        streams = [st.key for st in plan.streams]
        if len(set(streams)) != len(streams):
            problems.append("stream keys must be unique")
        ids = [t.id for t in plan.tasks]
        problems += dag.validate(
            ids,
            {t.id: t.depends_on for t in plan.tasks},
            streams={t.id: t.stream for t in plan.tasks},
            assignees={t.id: t.assignee for t in plan.tasks},
            known_streams=streams,
            known_assignees=list(handles) + humans,
        )
        used = {t.stream for t in plan.tasks}
        for st in plan.streams:
            if st.key not in used:
                problems.append(f"stream {st.key} has no tasks; remove it or give it tasks")
        if p.budget_usd:
            est = self.estimate_cost(plan)
            if est > p.budget_usd:
                problems.append(f"the plan's estimated cost {format_usd(est)} exceeds the budget {format_usd(p.budget_usd)}; use fewer or simpler tasks")
        return problems

    def _tier_for(self, scores: dict[str, int] | None) -> str:
        tiers = list(self.settings.llm.tiers)
        tier, _ = choose_tier(scores, self.settings.routing, tiers, self.settings.llm.default_tier)
        return tier

    def estimate_cost(self, plan: WorkPlan) -> float:
        """Rough USD for the work: a work turn and a review per task, plus delivery."""
        total = 0.0
        default_model = self.settings.llm.tiers[self.settings.llm.default_tier].model
        for t in plan.tasks:
            model = self.settings.llm.tiers[self._tier_for(t.scores.model_dump())].model
            pr = self.settings.price(model)
            total += (EST_PROMPT_TOKENS * pr.input + EST_COMPLETION_TOKENS * pr.output) / 1e6
            pr2 = self.settings.price(default_model)
            total += (EST_PROMPT_TOKENS * pr2.input + 200 * pr2.output) / 1e6
        pr = self.settings.price(default_model)
        total += (EST_PROMPT_TOKENS * 3 * pr.input + 2000 * pr.output) / 1e6
        return total

    def plan_text(self, plan: WorkPlan, estimate: float) -> str:
        layers = dag.layers({t.id: t.depends_on for t in plan.tasks})
        lines = [f"**Plan**: {plan.summary}", f"Outputs: {', '.join(plan.outputs)}",
                 f"Success criteria: {'; '.join(plan.success_criteria)}", ""]
        for st in plan.streams:
            lines.append(f"**#{st.key}**: {st.goal}")
            for t in plan.tasks:
                if t.stream == st.key:
                    deps = f" (after {', '.join(t.depends_on)})" if t.depends_on else ""
                    lines.append(f"- {t.id} {t.title} -> @{t.assignee} [{self._tier_for(t.scores.model_dump())}]{deps}")
        lines.append("")
        lines.append(f"Specialists: {', '.join('@' + x.handle + ' (' + x.role + (', reused' if x.reuse else '') + ')' for x in plan.specialists)}")
        lines.append(f"Parallel layers: {len(layers)}; critical path: {' -> '.join(dag.critical_path({t.id: t.depends_on for t in plan.tasks})[0])}")
        lines.append(f"Estimated cost: {format_usd(estimate)} (about {len(plan.tasks) * 2 + 1} model calls)")
        return "\n".join(lines)

    # -- staffing -------------------------------------------------------------------------------
    async def _ensure_member(self, s: AsyncSession, agency_id: int, handle: str, kind: str, role: str,
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

    async def _staff(self, pid: int) -> None:
        async with self.db.session() as s:
            p = await s.get(ProjectRow, pid)
            assert p is not None
            if p.status != "staffing" or not p.plan:
                return
            plan = WorkPlan.model_validate(p.plan)
            existing = (await s.execute(select(TaskRow.id).where(TaskRow.project_id == pid).limit(1))).first()
            if existing is None:
                await self._materialise(s, p, plan)
            p.status = "running"
            repos.event(s, pid, "staffed")
            await self._commit(s, pid)

    async def _materialise(self, s: AsyncSession, p: ProjectRow, plan: WorkPlan) -> None:
        aid, pid = p.agency_id, p.id
        members: dict[str, MemberRow] = {}
        for st in plan.specialists:
            m = await repos.member_by_handle(s, aid, st.handle)
            if m is None:
                definition = st.definition or self.catalogue.get(st.role)
                m = await self._ensure_member(s, aid, st.handle, "specialist", st.role, definition)
            members[st.handle] = m
        for m in (await s.execute(select(MemberRow).where(MemberRow.agency_id == aid, MemberRow.kind == "human"))).scalars():
            members.setdefault(m.handle, m)
        streams: dict[str, StreamRow] = {}
        for st in plan.streams:
            collab = await self._ensure_member(s, aid, f"Collab-{st.key}"[:32], "collaborator", "collaborator")
            row = StreamRow(project_id=pid, key=st.key, goal=st.goal, success_criteria=st.success_criteria, collaborator_id=collab.id)
            s.add(row)
            await s.flush()
            streams[st.key] = row
            await repos.declare_space(s, aid, stream_addr(row.id), "stream", st.key, parent=repos.project_addr(pid), topic=st.goal)
            post(s, aid, pid, stream_addr(row.id), collab.handle,
                 f"Hi, I'm {collab.handle}, Collaborator of #{st.key}. Goal: {st.goal}. I review every submission against its criteria.")
        tasks: dict[str, TaskRow] = {}
        for t in plan.tasks:
            m = members[t.assignee]
            row = TaskRow(project_id=pid, key=t.id, title=t.title, description=t.description, stream_id=streams[t.stream].id,
                          assignee_id=m.id, success_criteria=t.success_criteria, status="pending",
                          scores={**t.scores.model_dump(), "weighted": weighted_score(t.scores.model_dump(), self.settings.routing.weights)},
                          tier=self._tier_for(t.scores.model_dump()), context=[])
            s.add(row)
            tasks[t.id] = row
        await s.flush()
        for t in plan.tasks:
            for d in t.depends_on:
                s.add(TaskDepRow(task_id=tasks[t.id].id, depends_on_id=tasks[d].id))
        introduced: set[tuple[int, int]] = set()
        for t in plan.tasks:
            m, st = members[t.assignee], streams[t.stream]
            if (st.id, m.id) in introduced:
                continue
            introduced.add((st.id, m.id))
            s.add(StreamMemberRow(stream_id=st.id, member_id=m.id))
            if m.kind == "human":
                post(s, aid, pid, stream_addr(st.id), SYSTEM, f"{m.display_name or m.handle} joins #{st.key} as a human specialist.",
                     mentions=[m.external_user_id] if m.external_user_id else [])
                continue
            await repos.declare_space(s, aid, thread_addr(st.id, m.id), "thread", f"{m.handle} - work", parent=stream_addr(st.id))
            d = m.definition or {}
            post(s, aid, pid, thread_addr(st.id, m.id), m.handle,
                 f"Hi, I'm {m.handle} ({d.get('title') or m.role}). Expertise: {', '.join(d.get('expertise', [])[:3]) or m.role}. "
                 f"I'll post my work on {', '.join(x.id for x in plan.tasks if x.assignee == m.handle and x.stream == t.stream)} here.")

    # -- running tasks --------------------------------------------------------------------------
    async def _run_tasks(self, pid: int) -> None:
        stats = self.stats.setdefault(pid, FlightStats())
        workers: dict[int, asyncio.Task[None]] = {}
        limit = self.settings.engine.project_concurrency
        try:
            while not self._stopping:
                async with self.db.session() as s:
                    p = await s.get(ProjectRow, pid)
                    assert p is not None
                    if p.status != "running":
                        return
                    tasks = await repos.project_tasks(s, pid)
                    deps = await repos.task_deps(s, pid)
                    streams = {r.id: r for r in (await s.execute(_PROJECT_STREAMS, {"pid": pid})).scalars()}
                    by_id = {t.id: t for t in tasks}
                    # close streams whose tasks are all done (milestones: ask the Director first)
                    changed = await self._close_streams(s, p, tasks, streams)
                    if all(t.status in ("done", "cancelled") for t in tasks) and all(st.status == "done" for st in streams.values()):
                        p.status = "delivering"
                        repos.event(s, pid, "all_tasks_done")
                        await self._commit(s, pid)
                        return
                    # resume tasks that were mid-flight (after a restart)
                    humans = set((await s.execute(_AGENCY_HUMANS, {"aid": p.agency_id})).scalars())
                    for t in tasks:
                        if t.status == "running" and t.assignee_id in humans:
                            continue  # a person is working on it; their /submit wakes the project
                        if t.status in ("running", "review") and t.id not in workers and len(workers) < limit:
                            workers[t.id] = self._start_worker(pid, t.id, stats)
                    # start newly ready tasks
                    for t in sorted(tasks, key=lambda x: x.key):
                        if len(workers) >= limit:
                            break
                        if t.status != "pending":
                            continue
                        if not all(self._dep_satisfied(by_id[d], streams, p.oversight, t.stream_id) for d in deps.get(t.id, [])):
                            continue
                        n = (await s.execute(update(TaskRow).where(TaskRow.id == t.id, TaskRow.status == "pending")
                                             .values(status="running", started_at=_now(), step=0,
                                                     deadline_at=_now() + timedelta(seconds=self.settings.engine.task_deadline_seconds)))).rowcount
                        if n:
                            await self._announce_start(s, p, t, by_id, deps)
                            changed = True
                            if t.assignee_id not in humans:
                                workers[t.id] = self._start_worker(pid, t.id, stats)
                    if changed:
                        await self._commit(s, pid)
                    else:
                        await s.commit()
                if not workers:
                    await self._wait_wake(pid)  # blocked or awaiting the Director
                    continue
                wake = asyncio.create_task(self._wait_wake(pid))
                try:
                    done, _ = await asyncio.wait([*workers.values(), wake], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    wake.cancel()
                for tid, w in list(workers.items()):
                    if w.done():
                        del workers[tid]
                        exc = w.exception()
                        if isinstance(exc, (BudgetExceededError, LLMError)):
                            raise exc
                        if exc is not None and not isinstance(exc, ProjectPaused):
                            raise exc
        finally:
            if workers:  # siblings of a failed worker, or a stop: each ends at its next step
                self._halting.add(pid)
                try:
                    await self._stop_tasks(list(workers.values()), 30.0)
                finally:
                    self._halting.discard(pid)

    @staticmethod
    def _dep_satisfied(dep: TaskRow, streams: dict[int, StreamRow], oversight: str, stream_id: int) -> bool:
        if dep.status != "done":
            return False
        if oversight == "milestones" and dep.stream_id != stream_id:
            return streams[dep.stream_id].status == "done"
        return True

    async def _close_streams(self, s: AsyncSession, p: ProjectRow, tasks: list[TaskRow], streams: dict[int, StreamRow]) -> bool:
        changed = False
        for st in streams.values():
            mine = [t for t in tasks if t.stream_id == st.id]
            if st.status != "open" or not mine or not all(t.status in ("done", "cancelled") for t in mine):
                continue
            if p.oversight == "milestones":
                st.status = "gated"
                appr = ApprovalRow(project_id=p.id, kind="milestone", subject=st.key, status="pending")
                s.add(appr)
                await s.flush()
                post(s, p.agency_id, p.id, overview(p.id), PM_HANDLE,
                     f"Milestone: stream #{st.key} is complete ({len(mine)} tasks). Criteria: {'; '.join(st.success_criteria)}.\n"
                     "`/approve` to accept it, or `/reject <what to change>`.", kind="approval", approval_id=appr.id, mentions=["director"])
            else:
                st.status = "done"
                post(s, p.agency_id, p.id, stream_addr(st.id), SYSTEM, f"Stream #{st.key} has met its criteria: {'; '.join(st.success_criteria)}.")
            repos.event(s, p.id, "stream_complete", stream=st.key, gated=p.oversight == "milestones")
            changed = True
        return changed

    async def _announce_start(self, s: AsyncSession, p: ProjectRow, t: TaskRow, by_id: dict[int, TaskRow], deps: dict[int, list[int]]) -> None:
        m = await s.get(MemberRow, t.assignee_id)
        assert m is not None
        after = ", ".join(by_id[d].key for d in deps.get(t.id, []))
        text = f"{t.key} '{t.title}' is ready for @{m.handle}" + (f" (inputs: {after})" if after else "") + "."
        if m.kind == "human":
            text += f" Reply here with `/submit {t.key} <your output>` when done."
        st = await s.get(StreamRow, t.stream_id)
        assert st is not None
        collab = await s.get(MemberRow, st.collaborator_id) if st.collaborator_id else None
        post(s, p.agency_id, p.id, stream_addr(st.id), collab.handle if collab else SYSTEM, text,
             mentions=[m.external_user_id] if m.external_user_id else [])
        repos.event(s, p.id, "task_started", task_id=t.id, key=t.key, assignee=m.handle)

    def _start_worker(self, pid: int, tid: int, stats: FlightStats) -> asyncio.Task[None]:
        stats.started += 1

        async def run() -> None:
            structlog.contextvars.bind_contextvars(task_id=tid)  # log lines of this worker carry the task id
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            try:
                await self._work_task(pid, tid)
            finally:
                stats.in_flight -= 1
        return asyncio.create_task(run(), name=f"task-{tid}")

    async def _task_view(self, s: AsyncSession, t: TaskRow) -> dict[str, Any]:
        return {"key": t.key, "title": t.title, "description": t.description, "success_criteria": t.success_criteria}

    async def _dep_outputs(self, s: AsyncSession, t: TaskRow) -> dict[str, str]:
        return {key: output or "" for key, output in (await s.execute(_DEP_OUTPUTS, {"tid": t.id})).all()}

    async def _work_task(self, pid: int, tid: int) -> None:
        """Drive one task until it is done, blocked or awaiting the Director."""
        while not self._stopping and pid not in self._halting:
            async with self.db.engine.connect() as conn:  # one prebuilt read: this runs before every turn and review
                status, kind = (await conn.execute(_TASK_STEP, {"tid": tid})).one()
            human = kind == "human"
            if status == "running":
                if human:
                    return  # a person works on it; their /submit wakes the project
                await self._specialist_turn(pid, tid)
            elif status == "review":
                await self._review(pid, tid)
            else:
                return

    async def _specialist_turn(self, pid: int, tid: int) -> None:
        cfg = self.settings.engine
        async with self.db.session() as s:
            f = await repos.task_frame(s, tid)
            t, p, m = f.task, f.project, f.assignee
            if t.step >= cfg.turn_steps:
                await s.commit()
                await self._escalate(pid, tid, f"no submission after {cfg.turn_steps} turns")
                return
            sysmsg = await repos.active_system_message(s, m.id)
            definition = SpecialistDefinition.model_validate(m.definition) if m.definition else None
            custom = [(c.name, c.description) for c in definition.custom_commands] if definition else []
            task_view = await self._task_view(s, t)
            dep_outputs = await self._dep_outputs(s, t)
            memories, retrieved = await self._recall(p.agency_id, m.handle, m.role, f"{t.title}. {t.description}", pid)
            msgs = spec_role.work_messages(
                sysmsg.text if sysmsg else f"You are {m.handle}, a {m.role}.",
                objective=p.objective, task=task_view, dep_outputs=dep_outputs, context=t.context or [],
                review_notes=t.review_notes, memories=memories, custom=custom,
                tools=self.tools.describe_for("specialist") if self.tools is not None else "",
            )
            ctx = CallContext(role="specialist", purpose="work", agency_id=p.agency_id, project_id=pid, task_id=tid,
                              member_id=m.id, stream_id=t.stream_id, tier=t.tier, retrieved=retrieved,
                              call_key=f"t{tid}:a{t.attempt}:r{t.revision}:s{t.step}",
                              meta={"objective": p.objective, "purpose": "work", "task": task_view, "dep_outputs": dep_outputs,
                                    "review_notes": t.review_notes, "handle": m.handle, "role": m.role, "step": t.step})
            handle, stream_id, member_id, step = m.handle, t.stream_id, m.id, t.step
        try:
            turn = await self.llm.call(AgentTurn, msgs, ctx)
        except LLMOutputError as e:
            await self._invalid_output(pid, tid, step, e)
            return
        custom_names = {c[0] for c in custom}
        # answer /ask questions first (each a model call of the addressee), then commit everything at once
        answers: list[dict[str, Any]] = []
        feedback: list[str] = []
        parsed: list[cmdlib.Command] = []
        for raw in turn.commands:
            try:
                c = cmdlib.parse(raw, custom_names)
                cmdlib.authorize(c, "specialist", is_model=True, custom=custom_names)
                parsed.append(c)
            except AgencyError as e:
                feedback.append(f"command {raw[:80]!r} refused: {e.user_message}")
        asks = [c for c in parsed if c.name == "ask"][: max(cfg.ask_hops, 0)]
        if len([c for c in parsed if c.name == "ask"]) > len(asks):
            feedback.append(f"only {cfg.ask_hops} questions per turn are routed")
        for c in asks:
            answers.append(await self._route_question(pid, tid, handle, c.args["handle"], c.args["question"], step))
        if turn.tools:
            answers += await self._run_tools(pid, tid, handle, turn)
        async with self.db.session() as s:
            f = await repos.task_frame(s, tid)
            t, p = f.task, f.project
            if t.status != "running" or t.step != step:
                return  # already applied (a concurrent resume)
            aid = p.agency_id
            if turn.message:
                post(s, aid, pid, thread_addr(stream_id, member_id), handle, turn.message)
            ctx_items: list[dict[str, Any]] = []
            submitted = False
            blocked: str | None = None
            for c in parsed:
                if c.name == "submit":
                    if c.args["task"] != t.key:
                        feedback.append(f"/submit {c.args['task']} refused: your task is {t.key}")
                        continue
                    out = c.args.get("output") or turn.message
                    if not out.strip():
                        feedback.append("/submit refused: the output is empty; put your work in `message`")
                        continue
                    repeated = await self._repeats(s, t, out)
                    if repeated:
                        feedback.append(f"/submit refused: {repeated}")
                        repos.event(s, pid, "repetition", task_id=tid, detail=repeated)
                        continue
                    submitted = True
                    t.output = redact(out)
                elif c.name == "blocked":
                    blocked = c.args["reason"]
                elif c.name == "accept":
                    if c.args["task"] != t.key:
                        feedback.append(f"/accept {c.args['task']} refused: your task is {t.key}")
                elif c.name == "commands":
                    ctx_items.append({"from": SYSTEM, "text": "Your commands:\n" + cmdlib.help_text("specialist", custom)})
                elif c.custom:
                    post(s, aid, pid, thread_addr(stream_id, member_id), handle, f"/{c.name} {c.args.get('text', '')}".strip(), kind="action")
                elif c.name != "ask":
                    feedback.append(f"/{c.name} is not available while working on a task")
            ctx_items += answers
            own = "" if submitted else turn.message.strip()[:4000]
            if own and any(c.get("from") == f"{handle} (you)" and self._norm(c.get("text", "")) == self._norm(own) for c in t.context or []):
                feedback.append("you repeated an earlier turn word for word; change your approach, or `/submit` your work")
                repos.event(s, pid, "repetition", task_id=tid, detail="repeated turn")
            if feedback:
                ctx_items.append({"from": SYSTEM, "text": "; ".join(feedback)})
                repos.event(s, pid, "command_refused", task_id=tid, feedback=feedback)
            # the task's conversation (own drafts, answers, feedback) is kept and re-injected each turn, bounded
            t.context = [*(t.context or []), *([{"from": f"{handle} (you)", "text": own}] if own else []), *ctx_items][-HISTORY_ITEMS:]
            t.step = step + 1
            if submitted:
                t.status = "review"
                repos.event(s, pid, "submitted", task_id=tid, key=t.key, revision=t.revision)
            elif not blocked and not asks and not turn.tools:
                t.context = [*t.context, {"from": SYSTEM, "text": f"No submission yet: when your work meets the criteria, add `/submit {t.key}`."}][-HISTORY_ITEMS:]
            await self._commit(s, pid)
        if blocked:
            await self._escalate(pid, tid, f"@{handle} is blocked: {blocked}")

    async def _route_question(self, pid: int, tid: int, asker: str, to: str, question: str, step: int) -> dict[str, Any]:
        """Route ``/ask`` to the addressee and bring the answer back (one hop; answers cannot ask further)."""
        async with self.db.session() as s:
            p = await s.get(ProjectRow, pid)
            t = await s.get(TaskRow, tid)
            assert p is not None and t is not None
            target = await repos.member_by_handle(s, p.agency_id, to) if not to.startswith("<@") else await repos.member_by_user(s, p.agency_id, to.strip("<@!>"))
            if target is None:
                return {"from": SYSTEM, "text": f"/ask refused: there is no member @{to}; members: {', '.join(await self._project_handles(s, pid))}"}
            where = await self._member_address(s, pid, target, t.stream_id)
            post(s, p.agency_id, pid, where, asker, f"@{target.handle} {question}",
                 mentions=[target.external_user_id] if target.external_user_id else [])
            repos.event(s, pid, "ask", task_id=tid, asker=asker, to=target.handle)
            await self._commit(s, pid)
            if target.kind == "human":
                return {"from": SYSTEM, "text": f"Your question went to {target.display_name or target.handle} (a person); their reply will reach you when they answer. Continue meanwhile."}
            sysmsg = await repos.active_system_message(s, target.id)
            identity = sysmsg.text if sysmsg else f"You are {target.handle}, the {target.kind} of this project."
            ctx = CallContext(role=target.kind if target.kind != "human" else "specialist", purpose="answer", agency_id=p.agency_id,
                              project_id=pid, task_id=tid, member_id=target.id, call_key=f"t{tid}:a{t.attempt}:r{t.revision}:s{step}:ask:{target.handle}",
                              meta={"purpose": "answer", "question": question, "objective": p.objective})
            target_handle, target_id = target.handle, target.id
        msgs = spec_role.answer_messages(identity, asker=asker, question=question, context=p.objective)
        reply = await self.llm.call(AgentTurn, msgs, ctx)
        if not reply.message.strip():  # ignored: remind once, then escalate
            ctx.call_key = (ctx.call_key or "") + ":remind"
            reminder = [*msgs, {"role": "user", "content": f"Reminder: @{asker} is waiting for your answer. Answer in `message` now."}]
            reply = await self.llm.call(AgentTurn, reminder, ctx)
        async with self.db.session() as s:
            if not reply.message.strip():
                s.add(FeedbackRow(agency_id=p.agency_id, project_id=pid, member_id=target_id, task_id=tid, source="escalation",
                                  text=f"ignored a question from @{asker}"))
                post(s, p.agency_id, pid, overview(pid), SYSTEM, f"@{target_handle} did not answer @{asker}'s question after a reminder; "
                     f"@{PM_HANDLE} is told and @{asker} continues without it.", kind="notice")
                repos.event(s, pid, "question_ignored", task_id=tid, asker=asker, to=target_handle)
                await self._commit(s, pid)
                return {"from": SYSTEM, "text": f"@{target_handle} did not answer; continue with what you have or ask someone else."}
            post(s, p.agency_id, pid, where, target_handle, f"@{asker} {reply.message}")
            await self._commit(s, pid)
        return {"from": target_handle, "text": reply.message}

    async def _member_address(self, s: AsyncSession, pid: int, m: MemberRow, fallback_stream: int) -> str:
        if m.kind == "pm":
            return overview(pid)
        if m.kind == "collaborator":
            st = (await s.execute(select(StreamRow).where(StreamRow.project_id == pid, StreamRow.collaborator_id == m.id))).scalars().first()
            return stream_addr(st.id if st else fallback_stream)
        sm = (await s.execute(select(StreamMemberRow).join(StreamRow, StreamRow.id == StreamMemberRow.stream_id)
                              .where(StreamRow.project_id == pid, StreamMemberRow.member_id == m.id))).scalars().first()
        if sm is None:
            return stream_addr(fallback_stream)
        return stream_addr(sm.stream_id) if m.kind == "human" else thread_addr(sm.stream_id, m.id)

    async def _project_handles(self, s: AsyncSession, pid: int) -> list[str]:
        rows = (await s.execute(select(MemberRow.handle).join(TaskRow, TaskRow.assignee_id == MemberRow.id).where(TaskRow.project_id == pid).distinct())).scalars()
        return sorted({*rows, PM_HANDLE})

    async def _review(self, pid: int, tid: int) -> None:
        cfg = self.settings.engine
        async with self.db.session() as s:
            f = await repos.task_frame(s, tid)
            t, p, st, collab = f.task, f.project, f.stream, f.collaborator
            chandle = collab.handle if collab else "Collaborator"
            task_view = await self._task_view(s, t)
            msgs = collab_role.review_messages(chandle, st.key, st.goal, task_view, t.output or "", t.revision, cfg.max_revisions)
            ctx = CallContext(role="collaborator", purpose="review", agency_id=p.agency_id, project_id=pid, task_id=tid,
                              member_id=collab.id if collab else None, stream_id=st.id,
                              call_key=f"t{tid}:a{t.attempt}:r{t.revision}:review",
                              meta={"purpose": "review", "task": task_view, "output": t.output, "revision": t.revision})
            revision = t.revision
        review = await self.llm.call(Review, msgs, ctx)
        escalate_reason: str | None = None
        async with self.db.session() as s:
            f = await repos.task_frame(s, tid)  # also puts the stream and its Collaborator in the session for _complete
            t, p, assignee = f.task, f.project, f.assignee
            if t.status != "review" or t.revision != revision:
                return
            # one mark per criterion, in order; a criterion the review did not mark is not verified
            marks = [*review.criteria_met, *[False] * max(len(t.success_criteria) - len(review.criteria_met), 0)]
            met = sum(1 for x in marks[: len(t.success_criteria)] if x)
            unmet = [c for c, ok in zip(t.success_criteria, marks) if not ok]
            if review.decision == "accept" and unmet:  # an accept that contradicts its own check is no verification
                review = review.model_copy(update={"decision": "revise", "notes": "Not met: " + "; ".join(unmet) + (f". {review.notes}" if review.notes else "")})
                repos.event(s, pid, "verification_inconsistent", task_id=tid, unmet=unmet)
            s.add(FeedbackRow(agency_id=p.agency_id, project_id=pid, member_id=assignee.id, task_id=tid, source="review",
                              rating=5 if review.decision == "accept" else 2, text=review.notes or review.message, author=chandle))
            if review.decision == "accept":
                note = review.message or f"Accepted {t.key}."
                post(s, p.agency_id, pid, stream_addr(t.stream_id), chandle, f"{note} ({met}/{len(t.success_criteria)} criteria met)")
                repos.event(s, pid, "accepted", task_id=tid, key=t.key, revision=t.revision)
                if p.oversight == "every_task":
                    t.status = "approval"
                    appr = ApprovalRow(project_id=pid, kind="task", subject=t.key, status="pending")
                    s.add(appr)
                    await s.flush()
                    post(s, p.agency_id, pid, overview(pid), chandle,
                         f"{t.key} '{t.title}' passed review. Output:\n\n{(t.output or '')[:1500]}\n\n`/approve` or `/reject <what to change>`.",
                         kind="approval", approval_id=appr.id, mentions=["director"])
                else:
                    await self._complete(s, p, t)
            else:
                t.revision += 1
                s.add(FeedbackRow(agency_id=p.agency_id, project_id=pid, member_id=assignee.id, task_id=tid, source="revision",
                                  rating=None, text=review.notes, author=chandle))
                post(s, p.agency_id, pid, thread_addr(t.stream_id, assignee.id) if assignee.kind != "human" else stream_addr(t.stream_id),
                     chandle, f"@{assignee.handle} please revise {t.key}: {review.notes}",
                     mentions=[assignee.external_user_id] if assignee.external_user_id else [])
                repos.event(s, pid, "revise", task_id=tid, key=t.key, revision=t.revision)
                if t.revision > cfg.max_revisions:
                    t.status = "running"
                    escalate_reason = f"{t.key} still fails review after {cfg.max_revisions} revisions: {review.notes}"
                else:
                    t.status = "running"
                    t.step = 0
                    t.review_notes = review.notes
                    t.context = []
                    if t.revision >= self.settings.routing.escalate_after_revisions:
                        up = next_tier(t.tier, list(self.settings.llm.tiers))
                        if up and up != t.tier:
                            repos.event(s, pid, "tier_escalated", task_id=tid, frm=t.tier, to=up)
                            t.tier = up
            await self._commit(s, pid)
        if escalate_reason:
            await self._escalate(pid, tid, escalate_reason)

    async def _complete(self, s: AsyncSession, p: ProjectRow, t: TaskRow) -> None:
        now = _now()
        n = (await s.execute(_COMPLETE, {"tid": t.id, "now": now})).rowcount
        if not n:
            return
        for name, value in (("status", "done"), ("finished_at", now), ("completions", (t.completions or 0) + 1)):
            set_committed_value(t, name, value)  # what the UPDATE wrote, without a re-read
        dependents = list((await s.execute(_DEPENDENT_KEYS, {"tid": t.id})).scalars())
        if dependents:
            st = await s.get(StreamRow, t.stream_id)
            collab = await s.get(MemberRow, st.collaborator_id) if st and st.collaborator_id else None
            post(s, p.agency_id, p.id, stream_addr(t.stream_id), collab.handle if collab else SYSTEM,
                 f"/handoff {t.key} -> {', '.join(dependents)}: output passed on.", kind="action")
        repos.event(s, p.id, "task_done", task_id=t.id, key=t.key)

    # -- escalation ------------------------------------------------------------------------------
    async def _escalate(self, pid: int, tid: int, reason: str) -> None:
        """Specialist -> Collaborator -> PM (feedback, reassign, hire) -> Director."""
        async with self.db.session() as s:
            t = await s.get(TaskRow, tid)
            p = await s.get(ProjectRow, pid)
            assert t is not None and p is not None
            st = await s.get(StreamRow, t.stream_id)
            collab = await s.get(MemberRow, st.collaborator_id) if st and st.collaborator_id else None
            pm = await self._ensure_member(s, p.agency_id, PM_HANDLE, "pm", "pm")
            assignee = await s.get(MemberRow, t.assignee_id)
            assert assignee is not None
            s.add(FeedbackRow(agency_id=p.agency_id, project_id=pid, member_id=assignee.id, task_id=tid, source="escalation", text=reason))
            post(s, p.agency_id, pid, stream_addr(t.stream_id), collab.handle if collab else SYSTEM, f"/blocker {t.key}: {reason} (to @{PM_HANDLE})", kind="action")
            repos.event(s, pid, "escalated", task_id=tid, key=t.key, reason=reason, attempt=t.attempt)
            members = await self._project_handles(s, pid)
            await self._commit(s, pid)
            task_view = {**(await self._task_view(s, t)), "assignee": assignee.handle, "attempt": t.attempt, "output": (t.output or "")[:2000]}
            attempt = t.attempt
            ctx = CallContext(role="pm", purpose="escalation", agency_id=p.agency_id, project_id=pid, task_id=tid, member_id=pm.id,
                              call_key=f"t{tid}:a{attempt}:escalation", meta={"purpose": "escalation", "reason": reason, "task": task_view})
        decision: EscalationDecision | None = None
        if attempt < self.settings.engine.handoff_chain - 1:  # bounded handoff chain, then the Director
            decision = await self.llm.call(EscalationDecision, pm_role.escalation_messages(task_view, reason, members), ctx)
        async with self.db.session() as s:
            t = await s.get(TaskRow, tid)
            p = await s.get(ProjectRow, pid)
            assert t is not None and p is not None
            if t.attempt != attempt or t.status in ("done", "cancelled", "blocked"):
                return
            action = decision.action if decision else "escalate"
            target: MemberRow | None = None
            if action == "reassign":
                target = await repos.member_by_handle(s, p.agency_id, decision.assignee) if decision and decision.assignee else None
                if target is None or target.kind not in ("specialist", "human") or target.id == t.assignee_id:
                    action = "escalate"
            elif action == "hire":
                role = (decision.hire_role if decision else "") or ""
                definition = self.catalogue.get(role)
                if definition is None:
                    action = "escalate"
                else:
                    handle = await self._free_handle(s, p.agency_id, role)
                    target = await self._ensure_member(s, p.agency_id, handle, "specialist", definition.role, definition)
            elif action == "replan":
                action = "escalate"  # a replan mid-run is the Director's call
            if action in ("reassign", "hire") and target is not None:
                old = t.assignee_id
                t.assignee_id = target.id
                if (await s.execute(select(StreamMemberRow).where(StreamMemberRow.stream_id == t.stream_id, StreamMemberRow.member_id == target.id))).first() is None:
                    s.add(StreamMemberRow(stream_id=t.stream_id, member_id=target.id))
                    if target.kind != "human":
                        await repos.declare_space(s, p.agency_id, thread_addr(t.stream_id, target.id), "thread", f"{target.handle} - work", parent=stream_addr(t.stream_id))
                t.attempt += 1
                t.revision = 0
                t.step = 0
                t.status = "running"
                t.review_notes = None
                t.context = [{"from": PM_HANDLE, "text": decision.message if decision else reason}]
                post(s, p.agency_id, pid, overview(pid), PM_HANDLE, f"/assign {t.key} @{target.handle} (was {old}): {reason}", kind="action")
                repos.event(s, pid, action, task_id=tid, to=target.handle)
            elif action == "feedback" and decision is not None:
                t.attempt += 1
                t.step = 0
                t.revision = 0
                t.status = "running"
                t.context = [{"from": PM_HANDLE, "text": decision.message}]
                post(s, p.agency_id, pid, stream_addr(t.stream_id), PM_HANDLE, f"Guidance for {t.key}: {decision.message}")
                repos.event(s, pid, "pm_feedback", task_id=tid)
            else:
                t.status = "blocked"
                t.blocked_reason = reason
                appr = ApprovalRow(project_id=pid, kind="escalation", subject=t.key, status="pending")
                s.add(appr)
                await s.flush()
                why = decision.message if decision and decision.message else reason
                post(s, p.agency_id, pid, overview(pid), PM_HANDLE,
                     f"/escalate {t.key} '{t.title}' needs you: {why}\n`/approve` to "
                     + ("accept its current output" if t.output else "retry it")
                     + ", or `/reject <guidance>` to retry with your guidance.",
                     kind="approval", approval_id=appr.id, mentions=["director"])
                repos.event(s, pid, "escalated_to_director", task_id=tid, reason=why)
            await self._commit(s, pid)

    async def _free_handle(self, s: AsyncSession, agency_id: int, role: str) -> str:
        base = role.capitalize()
        for suffix in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
            h = f"{base}-{suffix}"
            if await repos.member_by_handle(s, agency_id, h) is None:
                return h
        raise AgencyError(f"No free handle for role {role}.")

    # -- delivery -----------------------------------------------------------------------------
    async def _deliver(self, pid: int) -> None:
        async with self.db.session() as s:
            p = await s.get(ProjectRow, pid)
            assert p is not None
            pm = await self._ensure_member(s, p.agency_id, PM_HANDLE, "pm", "pm")
            await s.commit()
            tasks = list((await s.execute(select(TaskRow).where(TaskRow.project_id == pid, TaskRow.status == "done").order_by(TaskRow.key))).scalars())
            outputs = {t.key: {"title": t.title, "output": t.output or ""} for t in tasks}
            plan = WorkPlan.model_validate(p.plan) if p.plan else None
            notes = [n["text"] for n in p.director_notes]
            ctx = CallContext(role="pm", purpose="deliver", agency_id=p.agency_id, project_id=pid, member_id=pm.id,
                              call_key=f"p{pid}:deliver", meta={"purpose": "deliver", "objective": p.objective, "outputs": outputs})
        result = await self.llm.call(Deliverable, pm_role.deliver_messages(p.objective, plan.summary if plan else "", outputs, notes), ctx)
        async with self.db.session() as s:
            p = await s.get(ProjectRow, pid)
            assert p is not None
            if p.status != "delivering":
                return
            tokens, cost, calls = await repos.project_usage(s, pid)
            md = self.render_deliverable(p, result, outputs, tokens, cost, calls)
            p.deliverable = md = redact(md)
            p.deliverable_title = result.title
            p.status = "done"
            p.finished_at = _now()
            dry = "\n" + NOTICE if self.llm.simulated else ""
            post(s, p.agency_id, pid, overview(pid), PM_HANDLE,
                 f"/deliver Project #{pid} is complete: **{result.title}**\n{result.summary}\n"
                 f"{len(tasks)} tasks, {calls} model calls, {tokens} tokens, {format_usd(cost)}{' (estimated)' if self.llm.simulated else ''}.{dry}",
                 kind="deliverable", attachment=(f"project-{pid}-deliverable.md", md), mentions=["director"])
            post(s, p.agency_id, pid, "hq", PM_HANDLE, f"Project #{pid} delivered: {result.title}")
            repos.event(s, pid, "delivered", title=result.title, tokens=tokens, cost_usd=cost)
            await self._commit(s, pid)
        await self._after_delivery(pid)

    async def _after_delivery(self, pid: int) -> None:
        """Run the after-delivery hooks (memory, learning); recorded so a restart finishes what a crash cut short."""
        for hook in self.on_project_done:
            try:
                await hook(pid)
            except Exception:
                log.exception("project-done hook failed (project=%s)", pid)
        async with self.db.session() as s:
            repos.event(s, pid, "after_delivery_done")
            await s.commit()

    def render_deliverable(self, p: ProjectRow, d: Deliverable, outputs: dict[str, dict[str, str]], tokens: int, cost: float, calls: int) -> str:
        banner = f"> {NOTICE} This is a dry run: every text below was simulated to exercise the orchestration.\n\n" if self.llm.simulated else ""
        appendix = "\n\n".join(f"### {k}: {v['title']}\n\n{v['output']}" for k, v in outputs.items())
        return (
            f"{banner}{d.body_markdown.strip()}\n\n---\n\n## Appendix: accepted task outputs\n\n{appendix}\n\n---\n\n"
            f"_Project #{p.id} - objective: {p.objective}_  \n"
            f"_{calls} model calls, {tokens} tokens, {format_usd(cost)}{' estimated at the configured prices' if self.llm.simulated else ''}._\n"
        )

    async def _invalid_output(self, pid: int, tid: int, step: int, e: LLMOutputError) -> None:
        """A work turn that did not validate even after the repair round: next tier, feedback, one step used."""
        async with self.db.session() as s:
            t = await s.get(TaskRow, tid)
            if t is None or t.status != "running" or t.step != step:
                return
            t.step = step + 1
            t.context = [*(t.context or []), {"from": SYSTEM, "text": f"Your last reply could not be used: {e.errors[:500]}. Reply with valid JSON."}]
            up = next_tier(t.tier, list(self.settings.llm.tiers))
            if up and up != t.tier:
                repos.event(s, pid, "tier_escalated", task_id=tid, frm=t.tier, to=up, reason="invalid output")
                t.tier = up
            repos.event(s, pid, "invalid_output", task_id=tid, errors=e.errors[:500])
            await self._commit(s, pid)

    async def _run_tools(self, pid: int, tid: int, handle: str, turn: AgentTurn) -> list[dict[str, Any]]:
        """Validate and run the turn's tool intents; their results reach the agent next turn."""
        if self.tools is None:
            return [{"from": SYSTEM, "text": "No tools are available in this agency; do the work directly."}]
        from agency.tools.base import ToolCall, ToolContext

        async with self.db.session() as s:
            p = await s.get(ProjectRow, pid)
            t = await s.get(TaskRow, tid)
            assert p is not None and t is not None
            tctx = ToolContext(agency_id=p.agency_id, member=handle, role="specialist", project_id=pid, task_key=t.key)
        calls = []
        out: list[dict[str, Any]] = []
        for req in turn.tools:
            try:
                calls.append(ToolCall(tool=req.tool, args=req.args))
            except Exception as ex:  # malformed intent: feedback, never a crash
                out.append({"from": SYSTEM, "text": f"tool call {req.tool!r} refused: {ex}"})
        results = await self.tools.execute_many(calls, tctx)
        async with self.db.session() as s:
            for call, r in zip(calls, results):
                repos.event(s, pid, "tool_call", task_id=tid, tool=call.tool, ok=r.ok, error=r.error, duration_ms=r.duration_ms)
            await s.commit()
        out += [{"from": f"tool {r.tool}", "text": redact(r.for_agent())} for r in results]  # tool output is data from outside: no secrets
        return out

    @staticmethod
    def _norm(text: str) -> str:
        return " ".join((text or "").lower().split())

    async def _repeats(self, s: AsyncSession, t: TaskRow, out: str) -> str | None:
        """A member repeating an earlier output: an unchanged resubmission, or another task's output."""
        n = self._norm(out)
        if len(n) < 20:
            return None
        if t.revision > 0 and t.output and self._norm(t.output) == n:
            return "it repeats your previous submission unchanged; address the review notes"
        others = (await s.execute(_OTHER_OUTPUTS, {"pid": t.project_id, "tid": t.id})).all()
        for key, other in others:
            if self._norm(other) == n:
                return f"it repeats the output of {key}; do this task's own work"
        return None

    # -- memory ---------------------------------------------------------------------------------
    async def _recall(self, agency_id: int, handle: str, role: str | None, query: str, project_id: int | None) -> tuple[str, list[Any]]:
        if self.recall is None:
            return "", []
        try:
            return await self.recall(agency_id, handle, role, query, project_id)
        except Exception:
            log.exception("memory recall failed (project=%s); continuing without memories", project_id)
            return "", []

    # -- Director decisions -----------------------------------------------------------------------
    async def decide(self, approval_id: int, approved: bool, *, actor: str, reason: str | None = None, choice: int | None = None) -> str:
        """Apply the Director's approve/reject. Idempotent: a decided approval is not applied twice."""
        async with self.db.session() as s:
            a = await s.get(ApprovalRow, approval_id)
            if a is None:
                raise NotFoundError(f"There is no approval #{approval_id}.")
            if a.status != "pending":
                return f"Approval #{approval_id} was already {a.status}."
            p = await s.get(ProjectRow, a.project_id)
            assert p is not None
            if p.status in TERMINAL and a.kind not in self.extra_decisions:  # e.g. a revision proposed after delivery
                raise AgencyError(f"Project #{p.id} is {p.status}.")
            if not approved and not (reason or "").strip():
                raise AgencyError("A reject needs a reason: say what to change, e.g. `/reject use more recent sources`.")
            a.status = "approved" if approved else "rejected"
            a.reason = reason
            a.decided_by = actor
            a.decided_at = _now()
            if approved and choice is not None:
                a.choice = choice
            result = await self._apply_decision(s, p, a, approved, reason, choice)
            repos.event(s, p.id, "decision", approval=a.id, kind=a.kind, approved=approved, reason=reason, actor=actor)
            await self._commit(s, p.id)
        self.spawn(p.id)
        return result

    async def _apply_decision(self, s: AsyncSession, p: ProjectRow, a: ApprovalRow, approved: bool, reason: str | None, choice: int | None) -> str:
        pid, aid = p.id, p.agency_id
        if a.kind == "approach":
            if approved:
                idx = choice or a.choice or 1
                await self._choose_approach(s, p, idx)
                post(s, aid, pid, overview(pid), SYSTEM, f"Approach {idx} chosen; the PM is writing the plan.")
                return f"Approach {idx} chosen."
            p.director_notes = [*p.director_notes, {"about": "approach", "text": reason}]
            p.approach_round += 1
            p.status = "new"
            post(s, aid, pid, overview(pid), SYSTEM, f"Approaches rejected: {reason}. The PM will propose again.")
            return "The PM will propose new approaches."
        if a.kind == "plan":
            if approved:
                p.status = "staffing"
                post(s, aid, pid, overview(pid), SYSTEM, "Plan approved; setting up streams and starting work.")
                return "Plan approved."
            p.director_notes = [*p.director_notes, {"about": "plan", "text": reason}]
            p.plan_round += 1
            p.status = "planning"
            post(s, aid, pid, overview(pid), SYSTEM, f"Plan rejected: {reason}. The PM will revise it.")
            return "The PM will revise the plan."
        if a.kind == "milestone":
            st = (await s.execute(select(StreamRow).where(StreamRow.project_id == pid, StreamRow.key == a.subject))).scalar_one()
            if approved:
                st.status = "done"
                post(s, aid, pid, stream_addr(st.id), SYSTEM, f"Milestone #{st.key} approved by the Director.")
                return f"Milestone {st.key} approved."
            last = (await s.execute(select(TaskRow).where(TaskRow.stream_id == st.id).order_by(TaskRow.finished_at.desc(), TaskRow.key.desc()).limit(1))).scalar_one()
            await self._reopen(s, p, last, f"Director: {reason}")
            st.status = "open"
            return f"{last.key} reopened with your notes."
        if a.kind == "task":
            t = (await s.execute(select(TaskRow).where(TaskRow.project_id == pid, TaskRow.key == a.subject))).scalar_one()
            if approved:
                await self._complete(s, p, t)
                return f"{t.key} approved."
            await self._reopen(s, p, t, f"Director: {reason}")
            return f"{t.key} sent back with your notes."
        if a.kind == "escalation":
            t = (await s.execute(select(TaskRow).where(TaskRow.project_id == pid, TaskRow.key == a.subject))).scalar_one()
            if approved and t.output:
                await self._complete(s, p, t)
                post(s, aid, pid, stream_addr(t.stream_id), SYSTEM, f"The Director accepted {t.key} as it is.")
                return f"{t.key} accepted as it is."
            t.status = "running"
            t.attempt += 1
            t.step = 0
            t.revision = 0
            t.blocked_reason = None
            t.context = [{"from": "Director", "text": reason or "Please try again."}]
            post(s, aid, pid, stream_addr(t.stream_id), SYSTEM, f"The Director sent {t.key} back to work" + (f": {reason}" if reason else "."))
            return f"{t.key} is running again."
        if a.kind == "budget":
            if approved:
                if p.budget_usd:
                    p.budget_usd = round(p.budget_usd * 1.5, 6) if not choice else float(choice)
                if p.budget_tokens:
                    p.budget_tokens = int(p.budget_tokens * 1.5) if not choice else int(choice)
                p.budget_warned = 0
                p.status = p.paused_from or "running"
                p.paused_from = None
                post(s, aid, pid, overview(pid), SYSTEM, "Budget raised; the project continues.")
                return "Budget raised."
            await self.cancel_in(s, p, f"stopped at the budget: {reason}")
            return "Project stopped."
        if a.kind in self.extra_decisions:
            return await self.extra_decisions[a.kind](s, p, a, approved, reason, choice)
        raise AgencyError(f"Unknown approval kind {a.kind}.")

    async def _reopen(self, s: AsyncSession, p: ProjectRow, t: TaskRow, notes: str) -> None:
        if t.status == "done":
            t.completions -= 1  # it will complete again; completions counts the standing completion
        t.status = "running"
        t.revision += 1
        t.step = 0
        t.review_notes = notes
        t.context = []
        assignee = await s.get(MemberRow, t.assignee_id)
        if assignee is not None:
            s.add(FeedbackRow(agency_id=p.agency_id, project_id=p.id, member_id=assignee.id, task_id=t.id, source="director", text=notes, author="Director"))
        post(s, p.agency_id, p.id, stream_addr(t.stream_id), SYSTEM, f"{t.key} reopened. {notes}")

    async def cancel_in(self, s: AsyncSession, p: ProjectRow, why: str) -> None:
        p.status = "cancelled"
        p.finished_at = _now()
        p.error = why
        await s.execute(update(TaskRow).where(TaskRow.project_id == p.id, TaskRow.status.not_in(("done",))).values(status="cancelled"))
        await s.execute(update(ApprovalRow).where(ApprovalRow.project_id == p.id, ApprovalRow.status == "pending").values(status="superseded"))
        post(s, p.agency_id, p.id, overview(p.id), SYSTEM, f"Project #{p.id} cancelled: {why}", kind="notice")
        repos.event(s, p.id, "cancelled", why=why)

    async def pending_approval(self, project_id: int) -> ApprovalRow | None:
        async with self.db.session() as s:
            return (await s.execute(select(ApprovalRow).where(ApprovalRow.project_id == project_id, ApprovalRow.status == "pending").order_by(ApprovalRow.id).limit(1))).scalar_one_or_none()
