"""Human specialists: added to a stream, assigned by the PM, mentioned, /todo, /submit like an LLM specialist."""
from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from agency.db.tables import MessageRow, StreamRow, TaskRow
from agency.errors import AgencyError, PermissionDeniedError
from agency.llm.scripted import ScriptedModel
from agency.models import Actor
from tests.agency.plans import plan
from tests.conftest import AGENCY, DIRECTOR, drive, wait_for

DANA = Actor(name="Dana", external_user_id="u-dana")
OBJECTIVE = "Write a short guide to composting for city apartments"


async def test_human_specialist_takes_part(make_service) -> None:
    with_human = plan([("T1", "research", "Researcher-A", []), ("T2", "research", "Dana", []), ("T3", "production", "Writer-A", ["T1", "T2"])])
    model = ScriptedModel({"WorkPlan": [plan([("T1", "research", "Researcher-A", [])]), with_human]})
    service = await make_service(model)
    first = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, first.id) == "done"
    async with service.db.session() as s:
        stream = (await s.execute(select(StreamRow).where(StreamRow.project_id == first.id))).scalars().first()
    with pytest.raises(PermissionDeniedError):
        await service.add_human(AGENCY, f"stream:{stream.id}", "u-dana", "Dana", DANA)  # only the Director adds people
    assert "handle @Dana" in await service.add_human(AGENCY, f"stream:{stream.id}", "u-dana", "Dana", DIRECTOR)
    with pytest.raises(PermissionDeniedError):  # a person who is not a member cannot use commands
        await service.run_command(AGENCY, "hq", Actor(name="Eve", external_user_id="u-eve"), "/todo")

    second = await service.new_project(AGENCY, OBJECTIVE + " (part two)", oversight="autonomous", actor=DIRECTOR)

    async def t2_running() -> bool:
        async with service.db.session() as s:
            t = (await s.execute(select(TaskRow).where(TaskRow.project_id == second.id, TaskRow.key == "T2"))).scalar_one_or_none()
            return t is not None and t.status == "running"

    await wait_for(t2_running)
    async with service.db.session() as s:
        mentioned = [m for m in (await s.execute(select(MessageRow).where(MessageRow.project_id == second.id))).scalars() if "u-dana" in (m.mentions or [])]
    assert [m.content for m in mentioned][0] == "Dana joins #research as a human specialist."
    mentioned = [m for m in mentioned if "/submit T2" in m.content]
    assert mentioned
    todo = await service.run_command(AGENCY, "hq", DANA, "/todo")
    assert "T2" in todo.text and "running" in todo.text
    with pytest.raises(AgencyError, match="Put your output"):
        await service.run_command(AGENCY, mentioned[0].address, DANA, "/submit T2")
    with pytest.raises(AgencyError, match="not assigned to you"):
        await service.run_command(AGENCY, mentioned[0].address, DANA, "/submit T1 I did T1 too")
    with pytest.raises(PermissionDeniedError):
        await service.run_command(AGENCY, mentioned[0].address, DANA, "/approve")
    await asyncio.sleep(0.3)  # Dana works for a while; the engine must wait, not spin
    done = await service.run_command(AGENCY, mentioned[0].address, DANA, "/submit T2 Worm bins need a 2:1 ratio of browns to greens.")
    assert "submitted" in done.text
    assert await drive(service, second.id) == "done"
    async with service.db.session() as s:
        t2 = (await s.execute(select(TaskRow).where(TaskRow.project_id == second.id, TaskRow.key == "T2"))).scalar_one()
    assert t2.status == "done" and t2.completions == 1 and "browns to greens" in t2.output
    # the human's output reached the dependent task's prompt
    t3 = [r for r in model.calls("AgentTurn", "work") if r.meta["task"]["key"] == "T3" and "browns to greens" in r.messages[-1]["content"]]
    assert t3
    # while Dana worked, the engine did not keep restarting a worker for her task
    assert service.engine.stats[second.id].started <= 10  # without the guard: one per loop turn, thousands
