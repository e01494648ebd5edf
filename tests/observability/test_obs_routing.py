"""Dynamic model selection: the tier from the PM's scores, escalation to a stronger tier, and the routing report."""
from __future__ import annotations

import pytest

from agency.db.tables import EventRow, LLMCallRow, MessageRow, TaskRow
from agency.llm.router import choose_tier, next_tier, weighted_score
from agency.llm.scripted import ScriptedModel
from agency.reports import model_report, work_verdicts
from agency.settings import RoutingSettings
from tests.conftest import AGENCY, DIRECTOR, drive
from tests.observability.obs_helpers import HIGH, LOW, OBJECTIVE, rows, scored_plan

TIERS = ["fast", "strong"]


@pytest.mark.parametrize(
    ("scores", "tier", "score"),
    [
        ({"reasoning": 5, "domain": 5, "language": 5, "quality": 5}, "strong", 5.0),
        ({"reasoning": 1, "domain": 1, "language": 1, "quality": 1}, "fast", 1.0),
        ({"reasoning": 4, "domain": 3, "language": 3, "quality": 4}, "strong", 3.6),  # 0.35*4 + 0.25*3 + 0.15*3 + 0.25*4
        ({"reasoning": 3, "domain": 3, "language": 5, "quality": 3}, "fast", 3.3),  # language weighs little
        (None, "fast", 0.0),  # no scores: the default tier
    ],
)
def test_tier_from_weighted_score_and_threshold(scores, tier: str, score: float) -> None:  # noqa: ANN001
    assert choose_tier(scores, RoutingSettings(), TIERS, "fast") == (tier, score)


def test_thresholds_pick_the_highest_tier_reached_and_escalation_follows_the_order() -> None:
    routing = RoutingSettings(thresholds={"mid": 2.5, "strong": 4.0})
    tiers = ["fast", "mid", "strong"]
    assert choose_tier({"reasoning": 3, "domain": 3, "language": 3, "quality": 3}, routing, tiers, "fast") == ("mid", 3.0)
    assert choose_tier({"reasoning": 5, "domain": 4, "language": 3, "quality": 4}, routing, tiers, "fast")[0] == "strong"
    assert choose_tier({"reasoning": 2, "domain": 2, "language": 2, "quality": 2}, routing, tiers, "fast") == ("fast", 2.0)
    assert choose_tier({"reasoning": 5, "domain": 5, "language": 5, "quality": 5}, routing, ["fast", "mid"], "fast")[0] == "mid"  # unknown tiers are skipped
    assert weighted_score({"reasoning": 5}, {"reasoning": 1.0, "quality": 1.0}) == 4.0  # a missing criterion counts as 3
    assert next_tier("fast", tiers) == "mid" and next_tier("mid", tiers) == "strong" and next_tier("strong", tiers) is None


async def test_the_plan_scores_pick_each_tasks_tier_and_are_stored(make_service) -> None:
    model = ScriptedModel({"WorkPlan": [scored_plan({"T1": LOW, "T2": LOW, "T3": HIGH})]})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="plan", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    tasks = {t.key: t for t in await rows(service, TaskRow, TaskRow.project_id == info.id)}
    assert {k: t.tier for k, t in tasks.items()} == {"T1": "fast", "T2": "fast", "T3": "strong"}
    assert tasks["T3"].scores == {**HIGH, "weighted": 5.0}
    assert tasks["T1"].scores["weighted"] == weighted_score(LOW, service.settings.routing.weights)
    calls = await rows(service, LLMCallRow, LLMCallRow.project_id == info.id, LLMCallRow.purpose == "work")
    key_of = {t.id: t.key for t in tasks.values()}
    assert {key_of[c.task_id]: (c.tier, c.model) for c in calls} == {
        "T1": ("fast", "gpt-4o-mini"), "T2": ("fast", "gpt-4o-mini"), "T3": ("strong", "gpt-4o")}
    plan_msg = [m for m in await rows(service, MessageRow, MessageRow.project_id == info.id) if m.kind == "approval" and "**Plan**" in m.content]
    assert plan_msg and "-> @Writer-A [strong]" in plan_msg[0].content and "Estimated cost: $" in plan_msg[0].content


async def test_two_revisions_move_the_task_to_the_strong_tier(make_service) -> None:
    def review(req):  # noqa: ANN001, ANN202
        if req.meta["task"]["key"] == "T1" and req.meta["revision"] < 2:
            return {"decision": "revise", "notes": f"add sources (round {req.meta['revision']})"}
        return None

    model = ScriptedModel({"WorkPlan": [scored_plan({"T1": LOW, "T2": LOW, "T3": LOW})], "purpose:review": review})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    t1 = [t for t in await rows(service, TaskRow, TaskRow.project_id == info.id) if t.key == "T1"][0]
    assert t1.tier == "strong" and t1.revision == 2 and t1.status == "done" and t1.completions == 1
    work = await rows(service, LLMCallRow, LLMCallRow.task_id == t1.id, LLMCallRow.purpose == "work")
    by_revision = {c.call_key.split(":")[2]: (c.tier, c.model) for c in work}
    assert by_revision == {"r0": ("fast", "gpt-4o-mini"), "r1": ("fast", "gpt-4o-mini"), "r2": ("strong", "gpt-4o")}
    esc = await rows(service, EventRow, EventRow.task_id == t1.id, EventRow.kind == "tier_escalated")
    assert [(e.data["frm"], e.data["to"]) for e in esc] == [("fast", "strong")]

    async with service.db.session() as s:
        verdicts = await work_verdicts(s, info.id)
        report = await model_report(s, project_id=info.id)
    assert [verdicts[c.id] for c in work] == ["revised", "revised", "accepted"]
    researcher = {r.tier: r for r in report if r.kind == "researcher"}
    assert (researcher["fast"].reviewed, researcher["fast"].accepted, researcher["fast"].acceptance) == (2, 0, 0.0)
    assert (researcher["strong"].reviewed, researcher["strong"].accepted, researcher["strong"].acceptance) == (1, 1, 1.0)
    assert researcher["strong"].model == "gpt-4o" and researcher["strong"].tokens > 0 and researcher["strong"].cost_usd > 0
    assert researcher["strong"].mean_score == weighted_score(LOW, service.settings.routing.weights)
    kinds = {r.kind for r in report}
    assert {"pm/approaches", "pm/plan", "pm/deliver", "collaborator/review", "analyst", "writer"} <= kinds


async def test_output_that_fails_validation_escalates_the_tier(make_service) -> None:
    def work(req):  # noqa: ANN001, ANN202
        if req.meta["task"]["key"] == "T1" and req.model == "gpt-4o-mini":
            return "this is not JSON"
        return None

    model = ScriptedModel({"WorkPlan": [scored_plan({"T1": LOW, "T2": LOW, "T3": LOW})], "purpose:work": work})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    t1 = [t for t in await rows(service, TaskRow, TaskRow.project_id == info.id) if t.key == "T1"][0]
    assert t1.tier == "strong"
    work_calls = await rows(service, LLMCallRow, LLMCallRow.task_id == t1.id, LLMCallRow.purpose == "work")
    assert [(c.model, c.outcome) for c in work_calls] == [("gpt-4o-mini", "invalid"), ("gpt-4o-mini", "invalid"), ("gpt-4o", "ok")]
    async with service.db.session() as s:
        report = await model_report(s, project_id=info.id)
    fast = [r for r in report if r.kind == "researcher" and r.tier == "fast"][0]
    assert fast.invalid == 2 and fast.reviewed == 0
