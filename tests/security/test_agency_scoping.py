"""Every id a person names is resolved inside the caller's agency: another agency's project or approval
answers exactly like an unknown one, and nothing of the other agency changes (service API, typed text)."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from agency.db.tables import ApprovalRow, EventRow, ProjectRow
from agency.errors import AgencyError, NotFoundError
from agency.llm.scripted import ScriptedModel
from agency.models import Actor
from tests.agency.plans import DIAMOND
from tests.conftest import AGENCY, wait_for

OTHER = "other-guild"
OWNER = Actor(name="Owner", external_user_id="owner-1", is_director=True, agency=AGENCY)
INTRUDER = Actor(name="Intruder", external_user_id="intruder-9", is_director=True, agency=OTHER)


async def _snapshot(service, pid: int) -> tuple:  # noqa: ANN001
    async with service.db.session() as s:
        p = await s.get(ProjectRow, pid)
        events = (await s.execute(select(func.count(EventRow.id)).where(EventRow.project_id == pid))).scalar()
        approvals = [(a.id, a.status) for a in (await s.execute(select(ApprovalRow).where(ApprovalRow.project_id == pid))).scalars()]
        return (p.status, p.budget_usd, p.error, events, approvals)


async def _answer(call) -> str:  # noqa: ANN001
    try:
        result = await call
    except AgencyError as e:
        return f"{type(e).__name__}: {e.user_message}"
    return f"ok: {result}"


async def test_another_agencys_ids_answer_like_unknown_ones(make_service) -> None:
    service = await make_service(ScriptedModel({"WorkPlan": [DIAMOND]}))
    await service.ensure_agency(OTHER, "Other guild")
    info = await service.new_project(AGENCY, "Write a guide to composting for city apartments", oversight="plan", budget_usd=5.0, actor=OWNER)
    approval = await wait_for(lambda: service.engine.pending_approval(info.id))
    before = await _snapshot(service, info.id)
    unknown = info.id + 1000
    calls = {
        "pause": lambda pid: service.pause(pid, INTRUDER),
        "resume": lambda pid: service.resume(pid, INTRUDER),
        "cancel": lambda pid: service.cancel(pid, INTRUDER),
        "budget show": lambda pid: service.set_budget(pid, None, INTRUDER),
        "budget set": lambda pid: service.set_budget(pid, 1000.0, INTRUDER),
        "approve": lambda pid: service.approve(pid, INTRUDER),
        "reject": lambda pid: service.approve(pid, INTRUDER, approved=False, reason="no"),
        "resolve": lambda pid: service.resolve_project(OTHER, pid),
    }
    for name, call in calls.items():
        theirs = await _answer(call(info.id))
        nothing = await _answer(call(unknown))
        assert theirs.startswith("NotFoundError"), (name, theirs)
        assert theirs.replace(str(info.id), "N") == nothing.replace(str(unknown), "N"), name  # indistinguishable
    # an approval id from the other agency, by button or /approve N
    theirs = await _answer(service.decide(approval.id, True, INTRUDER))
    nothing = await _answer(service.decide(approval.id + 1000, True, INTRUDER))
    assert theirs.startswith("NotFoundError") and theirs.replace(str(approval.id), "N") == nothing.replace(str(approval.id + 1000), "N")
    # typed text in the other guild's channels: the command finds no project of theirs, and never this one
    for text in ("/project cancel", "/project pause", "/approve", "/budget 1000", "/project status"):
        res = await _answer(service.run_command(OTHER, f"overview:{info.id}", INTRUDER, text))
        assert "NotFoundError" in res or "no project" in res.lower(), (text, res)
    assert await _snapshot(service, info.id) == before
    # the owner still decides: the scoping does not get in the way of the right agency
    assert "chosen" in await service.approve(info.id, OWNER)  # the approach gate comes first


async def test_an_actor_acts_only_in_its_own_agency_even_with_the_right_id(make_service) -> None:
    service = await make_service()
    await service.ensure_agency(OTHER, "Other guild")
    theirs = await service.new_project(OTHER, "Plan a small garden", oversight="plan", actor=INTRUDER)
    with pytest.raises(NotFoundError):
        await service.cancel(theirs.id, OWNER)
    assert (await service.project(theirs.id)).status != "cancelled"


async def test_approve_zero_is_refused_not_read_as_the_recommended_approach(make_service) -> None:
    service = await make_service(ScriptedModel({"WorkPlan": [DIAMOND]}))
    info = await service.new_project(AGENCY, "Write a guide to composting for city apartments", oversight="plan", actor=OWNER)
    approval = await wait_for(lambda: service.engine.pending_approval(info.id))
    with pytest.raises(AgencyError, match="from 1"):
        await service.approve(info.id, OWNER, choice=0)
    res = await _answer(service.run_command(AGENCY, f"overview:{info.id}", OWNER, "/approve 0"))
    assert "from 1" in res or "between 1" in res, res
    async with service.db.session() as s:
        assert (await s.get(ApprovalRow, approval.id)).status == "pending"  # nothing was decided
