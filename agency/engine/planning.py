"""Approaches and the work plan: the PM proposes, the plan is validated before
anyone sees it, and the Director's gate (or autonomy) moves the project on.

Each step is one model call and one transaction: ``new -> awaiting_approach``
(or ``planning`` when autonomous), ``planning -> awaiting_plan | staffing``, or
``planning -> planning`` with the problems of a plan returned for fixes (the
attempt count, the problems and the rejected plan are stored in
``plan_problems``, so a restart neither repeats a notice nor forgets the
feedback).

The plan call sends a schema of its own (:func:`agency.guided.plan_schema`:
the catalogue's roles, the handles it may use, the people it may assign, the
size limits). A retry is an edit: the PM sees its previous plan and its
problems and is asked for the corrected plan, not a fresh attempt. The
validator checks the graph, the staffing, the size limits, the definitions (a
definition extends a catalogue role, or completes a new one) and that every
required output and success criterion is covered by some task
(:func:`agency.checks.uncovered`).
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from agency import dag
from agency.checks import uncovered
from agency.db import repos
from agency.db.repos import SYSTEM, overview, post
from agency.db.tables import ApproachRow, ApprovalRow, MemberRow, ProjectRow
from agency.engine.base import EST_COMPLETION_TOKENS, EST_PROMPT_TOKENS, LEARNING_HANDLE, PM_HANDLE, Core
from agency.engine.tasks import block
from agency.errors import AgencyError, LLMError, LLMOutputError, NotFoundError
from agency.guided import plan_schema
from agency.llm.client import extract_json
from agency.llm.usage import format_usd
from agency.roles import pm as pm_role
from agency.schemas import HANDLE_RE, ApproachSet, WorkPlan, merge_definition
from agency.states import PROJECT, ApprovalState, ProjectState, transition


class Planning:
    def __init__(self, core: Core) -> None:
        self.core = core

    # -- approaches ----------------------------------------------------------------------------
    async def propose(self, pid: int) -> None:
        core = self.core
        async with core.db.session() as s:
            p, pm = await core.project_and_pm(s, pid)
            notes = [n["text"] for n in p.director_notes if n.get("about") == "approach"]
            memories, retrieved = await core.recall_for(p.agency_id, PM_HANDLE, "pm", p.objective, p.id)
            ctx = core.ctx(p, "pm", "approaches", f"approaches:r{p.approach_round}", member_id=pm.id)
            ctx.retrieved = retrieved
            round_ = p.approach_round
        result = await core.llm.call(ApproachSet, pm_role.approaches_messages(p.objective, notes, memories), ctx)
        async with core.db.session() as s:
            fresh = await s.get(ProjectRow, pid)
            assert fresh is not None
            p = fresh
            text = "\n\n".join(
                f"**{i}. {a.title}**{' (recommended)' if i == result.recommended else ''}\n{a.summary}\n"
                f"Outputs: {', '.join(a.outputs)}\nRisks: {', '.join(a.risks) or 'none noted'}\nRough cost: {a.rough_cost or 'n/a'}"
                for i, a in enumerate(result.approaches, 1)
            )
            autonomous = p.oversight == "autonomous"
            to = ProjectState.PLANNING if autonomous else ProjectState.AWAITING_APPROACH
            if not await transition(s, PROJECT, pid, to, frm=(ProjectState.NEW,), where=[ProjectRow.approach_round == round_],
                                    project_id=pid, event="approaches", count=len(result.approaches), recommended=result.recommended):
                return  # applied already (a concurrent runner), or the Director moved the project meanwhile
            for i, a in enumerate(result.approaches, 1):
                s.add(ApproachRow(project_id=pid, round=round_, idx=i, title=a.title, summary=a.summary,
                                  outputs=a.outputs, risks=a.risks, rough_cost=a.rough_cost, chosen=int(autonomous and i == result.recommended)))
            if autonomous:
                repos.event(s, pid, "approach_chosen", idx=result.recommended)
                post(s, p.agency_id, pid, overview(pid), PM_HANDLE,
                     f"Approaches for project #{pid}:\n\n{text}\n\nAutonomous mode: going with {result.recommended}.")
            else:
                appr = ApprovalRow(project_id=pid, kind="approach", subject=f"round {round_}", status=ApprovalState.PENDING,
                                   options=[f"{i}. {a.title}" for i, a in enumerate(result.approaches, 1)], choice=result.recommended)
                s.add(appr)
                await s.flush()
                post(s, p.agency_id, pid, overview(pid), PM_HANDLE,
                     f"Approaches for project #{pid}:\n\n{text}\n\nPick one (`/approve N`), or `/reject <what to change>`.",
                     kind="approval", approval_id=appr.id, mentions=["director"])
            await core.commit(s, pid)

    async def choose_approach(self, s: AsyncSession, p: ProjectRow, idx: int) -> bool:
        """The Director's pick (inside the decision's transaction): awaiting_approach -> planning."""
        rows = list((await s.execute(select(ApproachRow).where(ApproachRow.project_id == p.id, ApproachRow.round == p.approach_round).order_by(ApproachRow.idx))).scalars())
        if not rows:
            raise NotFoundError(f"Project #{p.id} has no approaches yet.")
        if not 1 <= idx <= len(rows):
            raise AgencyError(f"Choose an approach between 1 and {len(rows)}.")
        if not await transition(s, PROJECT, p.id, ProjectState.PLANNING, frm=(ProjectState.AWAITING_APPROACH,), project_id=p.id,
                                event="approach_chosen", idx=idx):
            return False
        for r in rows:
            r.chosen = int(r.idx == idx)
        return True

    # -- plan ---------------------------------------------------------------------------------
    async def plan(self, pid: int) -> None:
        core = self.core
        cfg = core.settings.engine
        async with core.db.session() as s:
            p = await s.get(ProjectRow, pid)
            assert p is not None
            round_, attempt = p.plan_round, p.plan_attempt
            problems, previous = returned_plan(p.plan_problems)
            if attempt >= cfg.plan_rounds:
                await block(s, pid, "The PM could not produce a valid plan:\n" + "\n".join(f"- {x}" for x in problems[:10]))
                await core.commit(s, pid)
                return
            pm = await core.ensure_member(s, p.agency_id, PM_HANDLE, "pm", "pm")
            await s.commit()
            approach = (await s.execute(select(ApproachRow).where(ApproachRow.project_id == pid, ApproachRow.chosen == 1).order_by(ApproachRow.id.desc()).limit(1))).scalar_one_or_none()
            members = list((await s.execute(select(MemberRow).where(MemberRow.agency_id == p.agency_id).order_by(MemberRow.id))).scalars())
            specialists = [m for m in members if m.kind == "specialist" and m.active == 1]
            stored = [{"handle": m.handle, "role": m.role, "expertise": (m.definition or {}).get("expertise", [])[:4]} for m in specialists]
            humans = [m.handle for m in members if m.kind == "human"]
            roles = [*core.catalogue.roles, *(m.role for m in specialists)]
            handles = [m.handle for m in specialists] + new_handles(core.catalogue.roles, {m.handle.lower() for m in members},
                                                                    per_role=min(3, cfg.plan_max_specialists))
            schema = plan_schema(roles=roles, handles=handles, people=humans, max_tasks=cfg.plan_max_tasks,
                                 max_streams=cfg.plan_max_streams, max_specialists=cfg.plan_max_specialists)
            notes = [n["text"] for n in p.director_notes]
            budget = format_usd(p.budget_usd) if p.budget_usd else (f"{p.budget_tokens} tokens" if p.budget_tokens else "none set")
            memories, retrieved = await core.recall_for(p.agency_id, PM_HANDLE, "pm", p.objective, p.id)
            appr_dict = {"title": approach.title, "summary": approach.summary, "outputs": approach.outputs} if approach else None
            ctx = core.ctx(p, "pm", "plan", f"plan:r{round_}:a{attempt}", member_id=pm.id,
                           meta={"approach": approach.title if approach else None, "director_notes": notes, "problems": problems,
                                 "previous_plan": previous})
            ctx.retrieved = retrieved
            msgs = pm_role.plan_messages(p.objective, appr_dict, catalogue=core.catalogue.describe(), stored=stored, humans=humans,
                                         notes=notes, problems=problems, oversight=p.oversight, budget=budget, memories=memories,
                                         previous=previous, schema=schema,
                                         limits=(cfg.plan_max_tasks, cfg.plan_max_streams, cfg.plan_max_specialists))
        plan: WorkPlan | None = None
        try:
            plan = await core.llm.call(WorkPlan, msgs, ctx, json_schema=schema)
        except LLMError as e:
            problems = [f"your reply could not be used: {e.user_message}"]
            if isinstance(e, LLMOutputError):  # what it wrote is still the plan to edit, when it is one
                try:
                    raw = extract_json(e.raw)
                except ValueError:
                    raw = None
                if isinstance(raw, dict) and raw.get("tasks"):
                    previous = raw
        async with core.db.session() as s:
            p = await s.get(ProjectRow, pid)
            assert p is not None
            if plan is not None:
                problems = await self.validate_plan(s, p, plan)
                previous = plan.model_dump(exclude={"thinking": True, "oversight": True, "milestones": True,
                                                    "specialists": {"__all__": {"reuse"}}})
            guard = [ProjectRow.plan_round == round_, ProjectRow.plan_attempt == attempt]
            if problems:
                if await transition(s, PROJECT, pid, ProjectState.PLANNING, frm=(ProjectState.PLANNING,), where=guard, project_id=pid,
                                    event="plan_invalid", problems=problems, attempt=attempt,
                                    values={"plan_attempt": attempt + 1, "plan_problems": {"problems": problems, "plan": previous}}):
                    post(s, p.agency_id, pid, overview(pid), SYSTEM,
                         "The PM's plan was returned for fixes:\n" + "\n".join(f"- {x}" for x in problems[:10]), kind="notice")
                await core.commit(s, pid)
                return
            assert plan is not None
            est = self.estimate_cost(plan)
            summary = self.plan_text(plan, est)
            autonomous = p.oversight == "autonomous"
            to = ProjectState.STAFFING if autonomous else ProjectState.AWAITING_PLAN
            if not await transition(s, PROJECT, pid, to, frm=(ProjectState.PLANNING,), where=guard, project_id=pid, event="plan_valid",
                                    tasks=len(plan.tasks), streams=len(plan.streams), estimate_usd=est,
                                    values={"plan": plan.model_dump(), "plan_problems": None}):
                return
            if autonomous:
                post(s, p.agency_id, pid, overview(pid), PM_HANDLE, summary)
            else:
                appr = ApprovalRow(project_id=pid, kind="plan", subject=f"round {round_}", status=ApprovalState.PENDING)
                s.add(appr)
                await s.flush()
                post(s, p.agency_id, pid, overview(pid), PM_HANDLE,
                     summary + "\n\n`/approve` to start the work, or `/reject <what to change>`.",
                     kind="approval", approval_id=appr.id, mentions=["director"])
            await core.commit(s, pid)

    async def validate_plan(self, s: AsyncSession, p: ProjectRow, plan: WorkPlan) -> list[str]:
        """Every problem of ``plan``, each a sentence the PM can act on ([] = runnable). Marks reused specialists."""
        catalogue = self.core.catalogue
        cfg = self.core.settings.engine
        problems: list[str] = []
        for what, n, limit, key in (("tasks", len(plan.tasks), cfg.plan_max_tasks, "plan_max_tasks"),
                                    ("streams", len(plan.streams), cfg.plan_max_streams, "plan_max_streams"),
                                    ("specialists", len(plan.specialists), cfg.plan_max_specialists, "plan_max_specialists")):
            if n > limit:
                problems.append(f"the plan has {n} {what}; at most {limit} are allowed (engine.{key}): merge or drop some")
        handles: dict[str, str] = {}
        for st in plan.specialists:
            if st.handle.lower() in {PM_HANDLE.lower(), LEARNING_HANDLE.lower()} or st.handle.lower().startswith("collab-"):
                problems.append(f"handle {st.handle} is reserved; pick another")
                continue
            if st.handle in handles:
                problems.append(f"specialist handle {st.handle} is listed twice")
            handles[st.handle] = st.role
            existing = await repos.member_by_handle(s, p.agency_id, st.handle)
            st.reuse = existing is not None and existing.kind == "specialist"
            if existing is not None and existing.kind in ("specialist",) and existing.role != st.role:
                problems.append(f"@{st.handle} is a stored {existing.role}, not a {st.role}; use another handle")
            elif existing is not None and existing.kind not in ("specialist", "human"):
                problems.append(f"handle {st.handle} belongs to the {existing.kind}; pick another")
            elif existing is None and st.definition is None and catalogue.get(st.role) is None:
                problems.append(f"role {st.role!r} of @{st.handle} is not in the catalogue ({', '.join(catalogue.roles)}); give a `definition` or use a catalogue role")
            elif existing is None and st.definition is not None:
                try:
                    merge_definition(st.role, catalogue.get(st.role), st.definition)
                except ValueError as e:
                    problems.append(f"@{st.handle}: {e}; use a catalogue role ({', '.join(catalogue.roles)}) or complete the definition")
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
        for stream in plan.streams:
            if stream.key not in used:
                problems.append(f"stream {stream.key} has no tasks; remove it or give it tasks")
        problems += uncovered(plan.outputs, plan.success_criteria, plan.tasks, plan.streams)
        if p.budget_usd:
            est = self.estimate_cost(plan)
            if est > p.budget_usd:
                problems.append(f"the plan's estimated cost {format_usd(est)} exceeds the budget {format_usd(p.budget_usd)}; use fewer or simpler tasks")
        return problems

    def estimate_cost(self, plan: WorkPlan) -> float:
        """Rough USD for the work: a work turn and a review per task, plus delivery."""
        settings = self.core.settings
        total = 0.0
        default_model = settings.llm.tiers[settings.llm.default_tier].model
        for t in plan.tasks:
            model = settings.llm.tiers[self.core.tier_for(t.scores.model_dump())].model
            pr = settings.price(model)
            total += (EST_PROMPT_TOKENS * pr.input + EST_COMPLETION_TOKENS * pr.output) / 1e6
            pr2 = settings.price(default_model)
            total += (EST_PROMPT_TOKENS * pr2.input + 200 * pr2.output) / 1e6
        pr = settings.price(default_model)
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
                    lines.append(f"- {t.id} {t.title} -> @{t.assignee} [{self.core.tier_for(t.scores.model_dump())}]{deps}")
        lines.append("")
        lines.append(f"Specialists: {', '.join('@' + x.handle + ' (' + x.role + (', reused' if x.reuse else '') + ')' for x in plan.specialists)}")
        lines.append(f"Parallel layers: {len(layers)}; critical path: {' -> '.join(dag.critical_path({t.id: t.depends_on for t in plan.tasks})[0])}")
        lines.append(f"Estimated cost: {format_usd(estimate)} (about {len(plan.tasks) * 2 + 1} model calls)")
        return "\n".join(lines)


def returned_plan(stored: Any) -> tuple[list[str], dict[str, Any] | None]:
    """(problems, the rejected plan) from ``ProjectRow.plan_problems``: ``{"problems": [...], "plan": {...}}``,
    or a bare list of problems (rows written before the plan was kept)."""
    if isinstance(stored, dict):
        plan = stored.get("plan")
        return [str(x) for x in stored.get("problems") or []], plan if isinstance(plan, dict) else None
    return [str(x) for x in stored or []], None


def handle_base(role: str) -> str:
    return "-".join(part.capitalize() for part in role.split("-") if part) or "Specialist"


def new_handles(roles: list[str], taken: set[str], *, per_role: int) -> list[str]:
    """Free ``Role-Letter`` handles (``Researcher-B``) for new specialists of each role: ``taken`` holds the
    agency's handles, lower case."""
    out: list[str] = []
    for role in roles:
        n = 0
        for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
            h = f"{handle_base(role)}-{letter}"
            if n >= per_role:
                break
            if h.lower() in taken or not HANDLE_RE.match(h):
                continue
            out.append(h)
            n += 1
    return out

