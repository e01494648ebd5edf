"""Delivery: the PM assembles the deliverable from the accepted outputs (one
model call), and one transaction moves the project ``delivering -> done`` with
the deliverable message. What is missing is said, in the PM's prompt and in a
section of the deliverable the engine writes itself: tasks not done (stopped
by the Director) and outputs accepted without passing review. The
after-delivery hooks (memory, learning) run afterwards, recorded so that a
restart finishes what a crash cut short.
"""
from __future__ import annotations

from sqlalchemy import select

from agency.db import repos
from agency.db.repos import overview, post
from agency.db.tables import ProjectRow, TaskRow
from agency.engine.base import PM_HANDLE, Core, ProjectHook, log, now
from agency.engine.tasks import unreviewed
from agency.llm.client import CallContext
from agency.llm.simulated import NOTICE
from agency.llm.usage import format_usd
from agency.logs import redact
from agency.roles import pm as pm_role
from agency.schemas import Deliverable, WorkPlan
from agency.states import PROJECT, ProjectState, TaskState, transition


class Delivery:
    def __init__(self, core: Core, on_project_done: list[ProjectHook]) -> None:
        self.core = core
        self.on_project_done = on_project_done  # shared with the engine: hooks added later count

    async def deliver(self, pid: int) -> None:
        core = self.core
        async with core.db.session() as s:
            p, pm = await core.project_and_pm(s, pid)
            every = list((await s.execute(select(TaskRow).where(TaskRow.project_id == pid).order_by(TaskRow.key))).scalars())
            tasks = [t for t in every if t.status == TaskState.DONE]
            no_review = await unreviewed(s, pid)
            outputs = {t.key: {"title": t.title + (" (accepted without review)" if t.id in no_review else ""), "output": t.output or ""}
                       for t in tasks}
            missing = [f"{t.key} '{t.title}' was not done ({t.blocked_reason or t.status})" for t in every if t.status != TaskState.DONE]
            missing += [f"{t.key} '{t.title}' was accepted as it is by the Director; it did not pass review" for t in tasks if t.id in no_review]
            plan = WorkPlan.model_validate(p.plan) if p.plan else None
            notes = [n["text"] for n in p.director_notes]
            ctx = CallContext(role="pm", purpose="deliver", agency_id=p.agency_id, project_id=pid, member_id=pm.id,
                              call_key=f"p{pid}:deliver", meta={"purpose": "deliver", "objective": p.objective, "outputs": outputs,
                                                                "missing": missing})
        msgs = pm_role.deliver_messages(p.objective, plan.summary if plan else "", outputs, notes, missing)
        result = await core.llm.call(Deliverable, msgs, ctx)
        async with core.db.session() as s:
            fresh = await s.get(ProjectRow, pid)
            assert fresh is not None
            p = fresh
            tokens, cost, calls = await repos.project_usage(s, pid)
            md = redact(self.render(p, result, outputs, tokens, cost, calls, missing))
            if not await transition(s, PROJECT, pid, ProjectState.DONE, frm=(ProjectState.DELIVERING,), project_id=pid, event="delivered",
                                    title=result.title, tokens=tokens, cost_usd=cost,
                                    values={"deliverable": md, "deliverable_title": result.title, "finished_at": now()}):
                return
            simulated = core.llm.simulated
            dry = "\n" + NOTICE if simulated else ""
            post(s, p.agency_id, pid, overview(pid), PM_HANDLE,
                 f"/deliver Project #{pid} is complete: **{result.title}**\n{result.summary}\n"
                 f"{len(tasks)} tasks, {calls} model calls, {tokens} tokens, {format_usd(cost)}{' (estimated)' if simulated else ''}.{dry}"
                 + (f"\nMissing: {'; '.join(missing)}." if missing else ""),
                 kind="deliverable", attachment=(f"project-{pid}-deliverable.md", md), mentions=["director"])
            post(s, p.agency_id, pid, "hq", PM_HANDLE, f"Project #{pid} delivered: {result.title}")
            await core.commit(s, pid)
        await self.after_delivery(pid)

    async def after_delivery(self, pid: int) -> None:
        """Run the after-delivery hooks (memory, learning); recorded so a restart finishes what a crash cut short."""
        for hook in self.on_project_done:
            try:
                await hook(pid)
            except Exception:
                log.exception("project-done hook failed (project=%s)", pid)
        async with self.core.db.session() as s:
            repos.event(s, pid, "after_delivery_done")
            await s.commit()

    def render(self, p: ProjectRow, d: Deliverable, outputs: dict[str, dict[str, str]], tokens: int, cost: float, calls: int,
               missing: list[str] | None = None) -> str:
        simulated = self.core.llm.simulated
        banner = f"> {NOTICE} This is a dry run: every text below was simulated to exercise the orchestration.\n\n" if simulated else ""
        gaps = ("## What is missing\n\n" + "".join(f"- {x}\n" for x in missing) + "\n---\n\n") if missing else ""
        appendix = "\n\n".join(f"### {k}: {v['title']}\n\n{v['output']}" for k, v in outputs.items())
        return (
            f"{banner}{d.body_markdown.strip()}\n\n---\n\n{gaps}## Appendix: accepted task outputs\n\n{appendix}\n\n---\n\n"
            f"_Project #{p.id} - objective: {p.objective}_  \n"
            f"_{calls} model calls, {tokens} tokens, {format_usd(cost)}{' estimated at the configured prices' if simulated else ''}._\n"
        )
