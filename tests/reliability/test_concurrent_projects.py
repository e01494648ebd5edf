"""Projects started at the same moment in one agency share its members (the PM, the Collaborators,
stored specialists): creating them concurrently must not crash a project."""
from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from agency.db.tables import MemberRow, TaskRow
from agency.llm.scripted import ScriptedModel
from tests.agency.plans import DIAMOND
from tests.conftest import AGENCY, DIRECTOR, drive


async def test_simultaneous_projects_create_shared_members_once(make_service) -> None:
    model = ScriptedModel({"WorkPlan": [DIAMOND]})
    service = await make_service(model)
    infos = await asyncio.gather(*[service.new_project(AGENCY, f"Write a short guide to composting, part {i}", oversight="autonomous",
                                                       actor=DIRECTOR) for i in range(3)])
    states = await asyncio.gather(*[drive(service, i.id) for i in infos])
    assert states == ["done"] * 3, [(await service.project(i.id)).error for i in infos]
    async with service.db.session() as s:
        handles = list((await s.execute(select(MemberRow.handle, func.count()).group_by(MemberRow.handle))).all())
        tasks = list((await s.execute(select(TaskRow))).scalars())
    assert all(n == 1 for _, n in handles) and {"PM", "Collab-research", "Writer-A"} <= {h for h, _ in handles}
    assert len(tasks) == 9 and all(t.completions == 1 for t in tasks)
