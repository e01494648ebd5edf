"""Whole projects with a scripted model: objective -> approaches -> plan -> work -> review -> deliverable."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from agency.db.tables import ApprovalRow, FeedbackRow, LLMCallRow, MessageRow, TaskRow
from agency.llm.scripted import ScriptedModel
from tests.agency.plans import DIAMOND, plan
from tests.conftest import AGENCY, DIRECTOR, drive

OBJECTIVE = "Write a short guide to composting for city apartments"


async def _rows(service, row, *where):  # noqa: ANN001, ANN202
    async with service.db.session() as s:
        return list((await s.execute(select(row).where(*where).order_by(row.id))).scalars())


@pytest.mark.parametrize(
    ("oversight", "gates"),
    [
        ("autonomous", []),
        ("plan", ["approach", "plan"]),
        ("milestones", ["approach", "plan", "milestone", "milestone"]),
        ("every_task", ["approach", "plan"] + ["task"] * 5),
    ],
)
async def test_whole_project_at_every_oversight_level(make_service, oversight: str, gates: list[str]) -> None:
    service = await make_service()
    info = await service.new_project(AGENCY, OBJECTIVE, oversight=oversight, actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    approvals = await _rows(service, ApprovalRow, ApprovalRow.project_id == info.id)
    assert sorted(a.kind for a in approvals) == sorted(gates)
    assert all(a.status == "approved" and a.decided_by == "Director" for a in approvals)
    tasks = await _rows(service, TaskRow, TaskRow.project_id == info.id)
    assert len(tasks) == 5 and all(t.status == "done" and t.completions == 1 for t in tasks)
    md = await service.deliverable(info.id)
    assert md and "Appendix: accepted task outputs" in md and "no model was called" in md
    await service.settle()
    msgs = await _rows(service, MessageRow, MessageRow.project_id == info.id)
    assert all(m.status in ("delivered", "superseded") for m in msgs)
    deliverable = [m for m in msgs if m.kind == "deliverable"]
    assert len(deliverable) == 1 and deliverable[0].attachment_text == md


async def test_independent_tasks_overlap(make_service) -> None:
    model = ScriptedModel({"WorkPlan": [plan([(f"T{i}", "research", "Researcher-A", []) for i in range(1, 5)]
                                             + [("T5", "production", "Writer-A", ["T1", "T2", "T3", "T4"])])]}, delay=0.02)
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    assert service.engine.stats[info.id].max_in_flight >= 2  # counted, not timed
    assert model.max_in_flight >= 2
    assert service.engine.stats[info.id].max_in_flight <= service.settings.engine.project_concurrency


async def test_director_reject_leads_to_revised_plan(make_service) -> None:
    model = ScriptedModel()
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="plan", actor=DIRECTOR)
    rejected: list[int] = []

    def decide(aid: int, kind: str, subject: str):  # noqa: ANN202
        if kind == "plan" and not rejected:
            rejected.append(aid)
            return (False, "add a section on smell control", None)
        return (True, None, None)

    assert await drive(service, info.id, decide=decide) == "done"
    plan_calls = model.calls("WorkPlan")
    assert len(plan_calls) == 2
    assert "add a section on smell control" not in plan_calls[0].messages[-1]["content"]
    assert "add a section on smell control" in plan_calls[1].messages[-1]["content"]
    kinds = [(a.kind, a.status) for a in await _rows(service, ApprovalRow, ApprovalRow.project_id == info.id)]
    assert kinds == [("approach", "approved"), ("plan", "rejected"), ("plan", "approved")]


async def test_reject_without_reason_is_refused(make_service) -> None:
    from agency.errors import AgencyError

    service = await make_service()
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="plan", actor=DIRECTOR)
    from tests.conftest import wait_for

    appr = await wait_for(lambda: service.engine.pending_approval(info.id))
    with pytest.raises(AgencyError, match="needs a reason"):
        await service.decide(appr.id, False, DIRECTOR, reason="  ")
    assert (await service.engine.pending_approval(info.id)).id == appr.id  # nothing lost


async def test_invalid_plans_never_run_and_the_pm_gets_the_reasons(make_service) -> None:
    cyclic = plan([("T1", "research", "Researcher-A", ["T2"]), ("T2", "research", "Researcher-A", ["T1"])])
    unknown = plan([("T1", "research", "Researcher-A", ["T7"])])
    model = ScriptedModel({"WorkPlan": [cyclic, unknown, DIAMOND]})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    prompts = [r.messages[-1]["content"] for r in model.calls("WorkPlan")]
    assert "dependency cycle: T1 -> T2 -> T1" in prompts[1]
    assert "task T1 depends on unknown task T7" in prompts[2]
    tasks = await _rows(service, TaskRow, TaskRow.project_id == info.id)
    assert sorted(t.key for t in tasks) == ["T1", "T2", "T3"]


async def test_a_plan_that_stays_invalid_blocks_for_the_director(make_service) -> None:
    cyclic = plan([("T1", "research", "Researcher-A", ["T1"])])
    model = ScriptedModel({"WorkPlan": [cyclic]})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "blocked"
    assert await _rows(service, TaskRow, TaskRow.project_id == info.id) == []
    assert "could not produce a valid plan" in (await service.project(info.id)).error
    assert len(model.calls("WorkPlan")) == service.settings.engine.plan_rounds


async def test_invalid_llm_json_is_repaired_in_the_flow(make_service) -> None:
    model = ScriptedModel({"Review": ["```json\n{\"decision\": \"accept\"", {"decision": "accept", "message": "ok"}]})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    calls = await _rows(service, LLMCallRow, LLMCallRow.project_id == info.id, LLMCallRow.purpose == "review")
    invalid = [c for c in calls if c.outcome == "invalid"]
    assert len(invalid) == 1  # the first review's reply; other tasks' reviews may come in between
    after = [c for c in calls if c.task_id == invalid[0].task_id and c.id > invalid[0].id]
    assert after[0].outcome == "repaired"


async def test_commands_outside_the_role_are_refused_with_a_reason(make_service) -> None:
    def work(req):  # noqa: ANN001, ANN202
        task = req.meta["task"]["key"]
        if task == "T1" and req.meta["step"] == 0:
            return {"message": "Approving myself. /approve", "commands": ["/approve", "/assign T2 @Writer-A", "/project cancel"]}
        return None  # fall back to the simulator

    model = ScriptedModel({"purpose:work": work})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    second = [r for r in model.calls("AgentTurn", "work") if r.meta["task"]["key"] == "T1"][1]
    prompt = second.messages[-1]["content"]
    assert "Director command" in prompt and "/assign" in prompt and "refused" in prompt
    assert await _rows(service, ApprovalRow, ApprovalRow.project_id == info.id) == []


async def test_revision_then_accept(make_service) -> None:
    reviews = iter([{"decision": "revise", "notes": "cite two sources"}])

    def review(req):  # noqa: ANN001, ANN202
        if req.meta["task"]["key"] == "T1":
            return next(reviews, None)
        return None

    model = ScriptedModel({"purpose:review": review})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    t1 = [t for t in await _rows(service, TaskRow, TaskRow.project_id == info.id) if t.key == "T1"][0]
    assert t1.revision == 1 and t1.completions == 1
    work = [r for r in model.calls("AgentTurn", "work") if r.meta["task"]["key"] == "T1"]
    assert "cite two sources" in work[-1].messages[-1]["content"]
    fb = await _rows(service, FeedbackRow, FeedbackRow.task_id == t1.id)
    assert {f.source for f in fb} >= {"review", "revision"}


async def test_endless_revisions_escalate_to_the_director(make_service) -> None:
    def review(req):  # noqa: ANN001, ANN202
        if req.meta["task"]["key"] == "T1":
            return {"decision": "revise", "notes": f"still not right (round {req.meta['revision']})"}
        return None

    model = ScriptedModel({"purpose:review": review, "EscalationDecision": [{"action": "escalate", "message": "reviewer and writer disagree"}]})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    seen: list[str] = []

    def decide(aid: int, kind: str, subject: str):  # noqa: ANN202
        seen.append(kind)
        return (True, None, 3)  # option 3: accept T1's output as it is (a plain approval retries or stops, never accepts)

    assert await drive(service, info.id, decide=decide) == "done"
    assert seen == ["escalation"]
    t1 = [t for t in await _rows(service, TaskRow, TaskRow.project_id == info.id) if t.key == "T1"][0]
    assert t1.revision == service.settings.engine.max_revisions + 1 and t1.completions == 1
    assert len([r for r in model.calls("Review") if r.meta["task"]["key"] == "T1"]) == service.settings.engine.max_revisions + 1


async def test_ask_is_routed_and_answered(make_service) -> None:
    def work(req):  # noqa: ANN001, ANN202
        if req.meta["task"]["key"] == "T3" and req.meta["step"] == 0:
            return {"message": "Checking a fact first.", "commands": ["/ask @Researcher-A which bins work indoors?"]}
        return None

    def answer(req):  # noqa: ANN001, ANN202
        return {"message": "Bokashi bins work indoors.", "commands": []}

    model = ScriptedModel({"purpose:work": work, "purpose:answer": answer, "WorkPlan": [DIAMOND]})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    t3 = [r for r in model.calls("AgentTurn", "work") if r.meta["task"]["key"] == "T3"]
    assert "Researcher-A: Bokashi bins work indoors." in t3[1].messages[-1]["content"]
    msgs = await _rows(service, MessageRow, MessageRow.project_id == info.id)
    asked = [m for m in msgs if m.content.startswith("@Researcher-A which bins")]
    assert len(asked) == 1 and asked[0].address.startswith("thread:") and asked[0].persona == "Writer-A"
    assert any(m.persona == "Researcher-A" and "Bokashi" in m.content for m in msgs)


async def test_ask_to_unknown_handle_is_feedback_not_a_crash(make_service) -> None:
    def work(req):  # noqa: ANN001, ANN202
        if req.meta["task"]["key"] == "T1" and req.meta["step"] == 0:
            return {"message": "?", "commands": ["/ask @Nobody-X hello there"]}
        return None

    model = ScriptedModel({"purpose:work": work, "WorkPlan": [DIAMOND]})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    t1 = [r for r in model.calls("AgentTurn", "work") if r.meta["task"]["key"] == "T1"]
    assert "there is no member @Nobody-X" in t1[1].messages[-1]["content"]


async def test_director_guidance_reaches_the_member(make_service) -> None:
    service = await make_service()
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="plan", actor=DIRECTOR)
    from tests.conftest import wait_for

    await wait_for(lambda: service.engine.pending_approval(info.id))
    await service.handle_message(AGENCY, f"overview:{info.id}", DIRECTOR, "Keep it under 500 words please.")
    msgs = await _rows(service, MessageRow, MessageRow.project_id == info.id)
    assert any(m.direction == "in" and "500 words" in m.content for m in msgs)
    assert any(m.direction == "out" and m.persona == "PM" and "500 words" in m.content for m in msgs)
    assert await drive(service, info.id) == "done"


async def test_pause_resume_cancel(make_service) -> None:
    service = await make_service()
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="plan", actor=DIRECTOR)
    from tests.conftest import wait_for

    await wait_for(lambda: service.engine.pending_approval(info.id))
    assert "paused" in await service.pause(info.id, DIRECTOR)
    assert (await service.project(info.id)).status == "paused"
    assert "resumed" in await service.resume(info.id, DIRECTOR)
    assert (await service.project(info.id)).status == "awaiting_approach"
    assert "cancelled" in await service.cancel(info.id, DIRECTOR)
    assert (await service.project(info.id)).status == "cancelled"
    from agency.errors import PermissionDeniedError
    from agency.models import Actor

    with pytest.raises(PermissionDeniedError):
        await service.pause(info.id, Actor(name="someone"))


async def test_empty_objective_is_refused_clearly(make_service) -> None:
    from agency.errors import AgencyError

    service = await make_service()
    for bad in ("", "   ", "hi"):
        with pytest.raises(AgencyError, match="objective"):
            await service.new_project(AGENCY, bad, actor=DIRECTOR)


async def test_unchanged_resubmission_is_refused_as_repetition(make_service) -> None:
    """A specialist that resubmits the same text after a revise request is told so; it never counts as new work."""
    reviews = iter([{"decision": "revise", "notes": "add prices"}])

    def review(req):  # noqa: ANN001, ANN202
        return next(reviews, None) if req.meta["task"]["key"] == "T1" else None

    def work(req):  # noqa: ANN001, ANN202
        if req.meta["task"]["key"] != "T1":
            return None
        if req.meta["step"] == 0:  # the same text on every first turn of an attempt
            return {"message": "Compost bins: a long enough identical answer.", "commands": ["/submit T1"]}
        return {"message": "Compost bins, now with prices: 20-40 USD.", "commands": ["/submit T1"]}

    model = ScriptedModel({"purpose:review": review, "purpose:work": work})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    t1_work = [r for r in model.calls("AgentTurn", "work") if r.meta["task"]["key"] == "T1"]
    assert "repeats your previous submission unchanged" in t1_work[-1].messages[-1]["content"]
    t1 = [t for t in await _rows(service, TaskRow, TaskRow.project_id == info.id) if t.key == "T1"][0]
    assert "prices" in t1.output
