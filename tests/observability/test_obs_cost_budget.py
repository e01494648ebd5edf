"""Cost from the price table (orchestration included, never zero when tokens were spent) and budgets."""
from __future__ import annotations

import asyncio

import pytest

from agency.console import ConsoleChat
from agency.db.tables import ApprovalRow, EventRow, LLMCallRow, MessageRow
from agency.llm.client import ModelSet
from agency.llm.scripted import ScriptedModel
from agency.llm.usage import format_usd
from agency.reports import project_costs, render_costs
from agency.service import AgencyService
from agency.settings import Price
from tests.conftest import AGENCY, DIRECTOR, drive, wait_for
from tests.observability.obs_helpers import HIGH, LOW, OBJECTIVE, FixedTokens, rows, scored_plan

PRICES = {"gpt-4o-mini": Price(input=1.0, output=3.0), "gpt-4o": Price(input=7.0, output=21.0)}


async def test_cost_from_the_price_table_counts_every_call(make_service, settings) -> None:
    cfg = settings.model_copy(update={"llm": settings.llm.model_copy(update={"prices": PRICES})})
    model = ScriptedModel({"WorkPlan": [scored_plan({"T1": LOW, "T2": LOW, "T3": HIGH})]})
    service = await make_service(model, cfg=cfg)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    calls = await rows(service, LLMCallRow, LLMCallRow.project_id == info.id)
    expected = sum((c.prompt_tokens * PRICES[c.model].input + c.completion_tokens * PRICES[c.model].output) / 1e6 for c in calls)
    assert expected > 0 and {c.model for c in calls} == {"gpt-4o-mini", "gpt-4o"}
    async with service.db.session() as s:
        b = await project_costs(s, info.id)
    assert b.total.cost_usd == pytest.approx(expected)
    assert b.total.calls == len(calls) and b.total.tokens == sum(c.prompt_tokens + c.completion_tokens for c in calls)
    for breakdown in (b.by_stream, b.by_member, b.by_model, b.by_role):  # every view adds up to the total
        assert sum(x.cost_usd for x in breakdown) == pytest.approx(expected)
        assert sum(x.tokens for x in breakdown) == b.total.tokens
    roles = {x.label: x for x in b.by_role}
    for orchestration in ("pm/approaches", "pm/plan", "pm/deliver", "collaborator/review"):
        assert roles[orchestration].calls >= 1 and roles[orchestration].cost_usd > 0, orchestration
    assert b.orchestration.cost_usd == pytest.approx(expected - roles["specialist/work"].cost_usd)
    streams = {x.label: x for x in b.by_stream}
    assert set(streams) == {"(project)", "#research", "#production"} and all(x.cost_usd > 0 for x in streams.values())
    members = {x.label for x in b.by_member}
    assert {"@PM", "@Researcher-A", "@Analyst-A", "@Writer-A", "@Collab-research", "@Collab-production"} <= members
    models = {x.label: x for x in b.by_model}
    assert models["gpt-4o"].cost_usd == pytest.approx(sum(
        (c.prompt_tokens * 7.0 + c.completion_tokens * 21.0) / 1e6 for c in calls if c.model == "gpt-4o"))
    assert b.unpriced_models == []
    # the same figures in /budget, the status and the deliverable
    text = await service.set_budget(info.id, None, DIRECTOR)
    assert format_usd(expected) in text and "By stream:" in text and "Orchestration" in text
    assert (await service.status(info.id)).cost_usd == pytest.approx(expected)
    assert f"{len(calls)} model calls, {b.total.tokens} tokens, {format_usd(expected)}" in (await service.deliverable(info.id))


async def test_tokens_of_an_unpriced_model_are_never_reported_as_free(settings) -> None:
    model = ScriptedModel()
    service = await AgencyService.create(settings, ConsoleChat(quiet=True), models=ModelSet(
        {"fast": (model, "local-llama"), "strong": (model, "gpt-4o")}, "fast", simulated=True))
    try:
        await service.ensure_agency(AGENCY, "Test agency")
        await service.start()
        info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
        assert await drive(service, info.id) == "done"
        async with service.db.session() as s:
            b = await project_costs(s, info.id)
    finally:
        await service.close()
    llama = {x.label: x for x in b.by_model}["local-llama"]
    assert llama.tokens > 0 and llama.cost_usd == 0 and llama.unpriced and llama.cost_text == "no price"
    assert b.unpriced_models == ["local-llama"]
    assert "No price configured for local-llama" in render_costs(b)


def _budget_cfg(settings):  # noqa: ANN001, ANN202
    return settings.model_copy(update={"engine": settings.engine.model_copy(update={"project_concurrency": 1})})


async def test_warning_at_80_percent_and_pause_at_100_with_no_call_after(make_service, settings) -> None:
    model = FixedTokens(prompt=100, completion=50)  # 150 tokens a call
    service = await make_service(model, cfg=_budget_cfg(settings))
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", budget_tokens=1000, actor=DIRECTOR)
    await wait_for(lambda: service.engine.pending_approval(info.id))
    assert (await service.project(info.id)).status == "paused"
    # call 7 sees 900 of 1000 tokens spent (90%): warned; call 8 sees 1050: the project pauses before it
    assert len(model.requests) == 7
    await asyncio.sleep(0.5)
    assert len(model.requests) == 7  # nothing ran after the pause
    calls = await rows(service, LLMCallRow, LLMCallRow.project_id == info.id)
    events = await rows(service, EventRow, EventRow.project_id == info.id, EventRow.kind.in_(("budget_warning", "budget_exceeded")))
    assert [e.kind for e in events] == ["budget_warning", "budget_exceeded"]
    exceeded = events[1]
    assert len(calls) == 7 and all(c.created_at <= exceeded.created_at for c in calls)
    appr = await service.engine.pending_approval(info.id)
    assert appr.kind == "budget"
    notices = [m.content for m in await rows(service, MessageRow, MessageRow.project_id == info.id)]
    assert any("Budget warning" in m and "90%" in m for m in notices)
    assert any("1050 of 1000 tokens" in m and "raise the budget" in m for m in notices)
    # the Director stops the project: still no call
    await service.decide(appr.id, False, DIRECTOR, reason="too expensive")
    await wait_for(lambda: _status_is(service, info.id, "cancelled"))
    await asyncio.sleep(0.2)
    assert len(model.requests) == 7


async def _status_is(service, pid: int, status: str) -> bool:  # noqa: ANN001
    return (await service.project(pid)).status == status


async def test_approving_the_budget_raises_it_and_the_project_goes_on(make_service, settings) -> None:
    model = FixedTokens(prompt=100, completion=50)
    service = await make_service(model, cfg=_budget_cfg(settings))
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", budget_tokens=1000, actor=DIRECTOR)
    appr = await wait_for(lambda: service.engine.pending_approval(info.id))
    await service.decide(appr.id, True, DIRECTOR)
    await wait_for(lambda: len(model.requests) > 7)
    async with service.db.session() as s:
        from agency.db.tables import ProjectRow

        assert (await s.get(ProjectRow, info.id)).budget_tokens == 1500
    budget = [a for a in await rows(service, ApprovalRow, ApprovalRow.project_id == info.id) if a.kind == "budget"]
    assert budget[0].status == "approved"
