"""Staffing: the approved plan becomes streams, members, tasks and their
channels and threads, with each member's introduction, in one transaction
(``staffing -> running``). A new specialist's definition is the catalogue's,
extended by the PM's (:func:`agency.schemas.merge_definition`)."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from agency.db import repos
from agency.db.repos import SYSTEM, post, stream_addr, thread_addr
from agency.db.tables import MemberRow, ProjectRow, StreamMemberRow, StreamRow, TaskDepRow, TaskRow
from agency.engine.base import Core
from agency.llm.router import weighted_score
from agency.schemas import WorkPlan, merge_definition
from agency.states import PROJECT, ProjectState, StreamState, TaskState, transition


class Staffing:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def staff(self, pid: int) -> None:
        core = self.core
        async with core.db.session() as s:
            p = await s.get(ProjectRow, pid)
            assert p is not None
            if not p.plan or not await transition(s, PROJECT, pid, ProjectState.RUNNING, frm=(ProjectState.STAFFING,),
                                                  project_id=pid, event="staffed"):
                return
            existing = (await s.execute(select(TaskRow.id).where(TaskRow.project_id == pid).limit(1))).first()
            if existing is None:
                await self._materialise(s, p, WorkPlan.model_validate(p.plan))
            await core.commit(s, pid)

    async def _materialise(self, s: AsyncSession, p: ProjectRow, plan: WorkPlan) -> None:
        core = self.core
        aid, pid = p.agency_id, p.id
        members: dict[str, MemberRow] = {}
        for sp in plan.specialists:
            m = await repos.member_by_handle(s, aid, sp.handle)
            if m is None:  # the PM's definition extends the catalogue's (validated with the plan), never replaces it
                definition = merge_definition(sp.role, core.catalogue.get(sp.role), sp.definition)
                m = await core.ensure_member(s, aid, sp.handle, "specialist", sp.role, definition)
            members[sp.handle] = m
        for m in (await s.execute(select(MemberRow).where(MemberRow.agency_id == aid, MemberRow.kind == "human"))).scalars():
            members.setdefault(m.handle, m)
        streams: dict[str, StreamRow] = {}
        for st in plan.streams:
            collab = await core.ensure_member(s, aid, f"Collab-{st.key}"[:32], "collaborator", "collaborator")
            row = StreamRow(project_id=pid, key=st.key, goal=st.goal, success_criteria=st.success_criteria, collaborator_id=collab.id,
                            status=StreamState.OPEN)
            s.add(row)
            await s.flush()
            streams[st.key] = row
            await repos.declare_space(s, aid, stream_addr(row.id), "stream", st.key, parent=repos.project_addr(pid), topic=st.goal)
            post(s, aid, pid, stream_addr(row.id), collab.handle,
                 f"Hi, I'm {collab.handle}, Collaborator of #{st.key}. Goal: {st.goal}. I review every submission against its criteria.")
        tasks: dict[str, TaskRow] = {}
        weights = core.settings.routing.weights
        for t in plan.tasks:
            m = members[t.assignee]
            scores = t.scores.model_dump()
            task_row = TaskRow(project_id=pid, key=t.id, title=t.title, description=t.description, stream_id=streams[t.stream].id,
                               assignee_id=m.id, success_criteria=t.success_criteria, status=TaskState.PENDING,
                               scores={**scores, "weighted": weighted_score(scores, weights)}, tier=core.tier_for(scores), context=[], asks=[])
            s.add(task_row)
            tasks[t.id] = task_row
        await s.flush()
        for t in plan.tasks:
            for dep in t.depends_on:
                s.add(TaskDepRow(task_id=tasks[t.id].id, depends_on_id=tasks[dep].id))
        introduced: set[tuple[int, int]] = set()
        for t in plan.tasks:
            m, sr = members[t.assignee], streams[t.stream]
            if (sr.id, m.id) in introduced:
                continue
            introduced.add((sr.id, m.id))
            s.add(StreamMemberRow(stream_id=sr.id, member_id=m.id))
            if m.kind == "human":
                post(s, aid, pid, stream_addr(sr.id), SYSTEM, f"{m.display_name or m.handle} joins #{sr.key} as a human specialist.",
                     mentions=[m.external_user_id] if m.external_user_id else [])
                continue
            await repos.declare_space(s, aid, thread_addr(sr.id, m.id), "thread", f"{m.handle} - work", parent=stream_addr(sr.id))
            d = m.definition or {}
            post(s, aid, pid, thread_addr(sr.id, m.id), m.handle,
                 f"Hi, I'm {m.handle} ({d.get('title') or m.role}). Expertise: {', '.join(d.get('expertise', [])[:3]) or m.role}. "
                 f"I'll post my work on {', '.join(x.id for x in plan.tasks if x.assignee == m.handle and x.stream == t.stream)} here.")
