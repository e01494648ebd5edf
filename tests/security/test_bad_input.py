"""Bad input: never an unhandled exception, always a message that says what to fix.

The command parser and the task graph have their property tests in tests/agency; here: the plan
validator (the whole path a PM's plan takes: schema, then Engine.validate_plan) over random
WorkPlan-like dicts, over-long messages from people and models, unknown handles, empty objectives.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import select

from agency.console import ConsoleChat
from agency.db.tables import MemberRow, MessageRow, ProjectRow
from agency.errors import AgencyError, CommandError, NotFoundError
from agency.llm.client import validate_reply
from agency.llm.scripted import ScriptedModel
from agency.schemas import WorkPlan
from agency.service import AgencyService
from tests.agency.plans import DIAMOND
from tests.conftest import AGENCY, DIRECTOR, drive, model_set, wait_for

OBJECTIVE = "Write a short guide to composting for city apartments"

# -- the plan validator -------------------------------------------------------------------------------
# mostly well-formed plans (so the graph and staffing checks run), then one corruption half of the time
ids = st.sampled_from(["T1", "T2", "T3", "T4", "T5"])
handles = st.sampled_from(["Researcher-A", "Writer-A", "Analyst-A", "PM", "Collab-research", "Learning-Manager", "Nobody-Z", "Dana"])
roles = st.sampled_from(["researcher", "writer", "analyst", "reviewer", "astronaut"])
stream_keys = st.sampled_from(["research", "production", "ops"])
criteria = st.lists(st.sampled_from(["complete", "cites sources", "under 500 words"]), min_size=1, max_size=3)
task = st.fixed_dictionaries({
    "id": ids, "title": st.sampled_from(["Gather background", "Write the guide"]), "description": st.just("Do the part well."),
    "stream": st.one_of(stream_keys, st.just("ghost-stream")), "assignee": handles,
    "depends_on": st.lists(ids, max_size=3), "success_criteria": criteria,
})
stream = st.fixed_dictionaries({"key": stream_keys, "goal": st.just("the work of this stream"), "success_criteria": criteria})
staff = st.fixed_dictionaries({"handle": handles, "role": roles, "reuse": st.booleans()})
corruptions = st.sampled_from([
    ("tasks", 0, "id", "bad id"), ("tasks", 0, "title", ""), ("tasks", 0, "success_criteria", []), ("tasks", 0, "depends_on", "T1"),
    ("tasks", 0, "scores", {"reasoning": 9}), ("streams", 0, "key", "Bad Key"), ("specialists", 0, "handle", "x"),
    ("specialists", 0, "role", ""), ("summary", None, None, "short"), ("tasks", None, None, []), ("outputs", None, None, "one"),
])


@st.composite
def plans(draw: Any) -> dict[str, Any]:
    data = {
        "summary": "A plan for the objective, in two streams.", "outputs": ["a guide"], "success_criteria": draw(criteria),
        "streams": draw(st.lists(stream, min_size=1, max_size=3)), "specialists": draw(st.lists(staff, min_size=1, max_size=4)),
        "tasks": draw(st.lists(task, min_size=1, max_size=6)),
    }
    bad = draw(st.one_of(st.none(), corruptions))
    if bad is not None:
        field, i, key, value = bad
        if i is None:
            data[field] = value
        else:
            data[field][i][key] = value
    return data


def _sentence(text: str) -> bool:
    return isinstance(text, str) and len(text.strip()) >= 10 and " " in text.strip()


def test_plan_validator_never_raises_and_always_says_what_to_fix(settings) -> None:
    loop = asyncio.new_event_loop()
    service: AgencyService = loop.run_until_complete(AgencyService.create(settings, None, models=model_set(ScriptedModel())))

    async def setup() -> tuple[int, int]:
        await service.ensure_agency(AGENCY, "Test agency")
        async with service.db.session() as s:
            agency_id = (await service._agency(s, AGENCY)).id
            s.add(MemberRow(agency_id=agency_id, handle="Writer-A", kind="specialist", role="writer"))  # a stored writer
            s.add(MemberRow(agency_id=agency_id, handle="Dana", kind="human", role="human", external_user_id="u-dana"))
            free = ProjectRow(agency_id=agency_id, objective=OBJECTIVE, oversight="plan", status="planning", director_notes=[])
            tight = ProjectRow(agency_id=agency_id, objective=OBJECTIVE, oversight="plan", status="planning", director_notes=[], budget_usd=0.0001)
            s.add_all([free, tight])
            await s.commit()
            return free.id, tight.id

    pids = loop.run_until_complete(setup())
    seen = {"schema": 0, "problems": 0, "valid": 0}

    async def check(data: dict[str, Any], budget: bool) -> None:
        try:
            plan = validate_reply(WorkPlan, json.dumps(data))
        except ValueError as e:  # what the PM is told in the repair round
            assert _sentence(str(e)), str(e)
            seen["schema"] += 1
            return
        async with service.db.session() as s:
            p = await s.get(ProjectRow, pids[budget])
            problems = await service.engine.validate_plan(s, p, plan)
        assert isinstance(problems, list)
        for x in problems:
            assert _sentence(x), x
        if problems:
            seen["problems"] += 1
            return
        seen["valid"] += 1  # a plan without problems is runnable: every reference resolves
        keys = {st.key for st in plan.streams}
        tids = {t.id for t in plan.tasks}
        assert all(t.stream in keys and set(t.depends_on) <= tids for t in plan.tasks)

    @given(plans(), st.booleans())
    @hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    def prop(data: dict[str, Any], budget: bool) -> None:
        loop.run_until_complete(check(data, budget))

    try:
        prop()
        # and the hand-made edge cases: the good plan passes, a cycle and dangling references are named
        good = validate_reply(WorkPlan, json.dumps(DIAMOND))

        async def named() -> list[str]:
            async with service.db.session() as s:
                p = await s.get(ProjectRow, pids[0])
                assert await service.engine.validate_plan(s, p, good) == []
                bad = good.model_copy(deep=True)
                bad.tasks[0].depends_on = ["T3"]
                bad.tasks[1].assignee = "Ghost-A"
                return await service.engine.validate_plan(s, p, bad)

        problems = loop.run_until_complete(named())
        assert any("cycle" in x for x in problems) and any("Ghost-A" in x for x in problems), problems
    finally:
        loop.run_until_complete(service.close())
        loop.close()
    assert seen["schema"] and seen["problems"], seen


# -- people's input ---------------------------------------------------------------------------------------
async def test_an_over_long_director_message_is_stored_and_answered(make_service) -> None:
    service = await make_service()
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="plan", actor=DIRECTOR)
    await wait_for(lambda: service.engine.pending_approval(info.id))
    long = ("Please consider this carefully. " * 400)[:10_000]
    assert await service.handle_message(AGENCY, f"overview:{info.id}", DIRECTOR, long) is None
    async with service.db.session() as s:
        rows = list((await s.execute(select(MessageRow).where(MessageRow.project_id == info.id))).scalars())
    inbound = [m for m in rows if m.direction == "in"]
    assert len(inbound) == 1 and inbound[0].content == long[:8000]  # stored, bounded
    assert any(m.direction == "out" and m.persona == "PM" and "Please consider this carefully" in m.content for m in rows)
    # an over-long command is refused with the limit, not a crash
    with pytest.raises(CommandError, match="the limit is 4000"):
        await service.handle_message(AGENCY, f"overview:{info.id}", DIRECTOR, "/reject " + "x" * 5000)
    assert await drive(service, info.id) == "done"


async def test_unknown_handles_and_empty_objectives_get_clear_messages(make_service) -> None:
    service = await make_service()
    with pytest.raises(NotFoundError, match=r"There is no member @Nobody-Z\. Try `/specialist list`"):
        await service.handle_message(AGENCY, "hq", DIRECTOR, "/feedback @Nobody-Z 4 good work")
    with pytest.raises(NotFoundError, match="There is no member @Ghost"):
        await service.handle_message(AGENCY, "hq", DIRECTOR, "/specialist show @Ghost")
    with pytest.raises(CommandError, match="must be a handle like @Researcher-A"):
        await service.handle_message(AGENCY, "hq", DIRECTOR, "/feedback @!!! 4 good")
    with pytest.raises(CommandError, match="missing <objective>"):
        await service.handle_message(AGENCY, "hq", DIRECTOR, "/project new")
    for bad in ("", "   ", "hi"):
        with pytest.raises(AgencyError, match="objective"):
            await service.handle_message(AGENCY, "hq", DIRECTOR, f"/project new {bad}".rstrip() + (" " if not bad.strip() else ""))
    with pytest.raises(AgencyError, match="no agency yet"):
        await service.handle_message("no-such-agency", "hq", DIRECTOR, "/project status")


async def test_an_over_long_model_reply_is_feedback_not_a_crash(make_service) -> None:
    """A model message beyond the schema's limit fails validation twice (reply and repair): the turn
    is spent, the member is told why, and the task goes on."""
    def work(req: Any) -> Any:
        if req.meta["task"]["key"] == "T1" and req.meta["step"] == 0:
            return {"message": "x" * 70_000, "commands": ["/submit T1"]}
        return None

    model = ScriptedModel({"WorkPlan": [DIAMOND], "purpose:work": work})
    service = await make_service(model, chat=ConsoleChat(quiet=True))
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    t1 = [r for r in model.calls("AgentTurn", "work") if r.meta["task"]["key"] == "T1"]
    assert "Your last reply could not be used" in t1[-1].messages[-1]["content"] and "60000" in t1[-1].messages[-1]["content"]
