"""The watchdog un-sticks work; tool intents are validated and run by the core."""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from agency.db.tables import ApprovalRow, EventRow, TaskRow
from agency.llm.scripted import ScriptedModel
from agency.watchdog import Watchdog
from tests.agency.plans import DIAMOND
from tests.conftest import AGENCY, DIRECTOR, drive, wait_for

OBJECTIVE = "Write a short guide to composting for city apartments"


async def test_watchdog_resumes_then_escalates_a_stuck_task(make_service) -> None:
    never = asyncio.Event()

    async def hang(req):  # noqa: ANN001, ANN202
        if req.meta["task"]["key"] == "T1":
            await never.wait()
        return None

    model = ScriptedModel({"purpose:work": hang, "WorkPlan": [DIAMOND], "EscalationDecision": [{"action": "escalate", "message": "T1 hangs"}]})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)

    async def t1_running() -> bool:  # ... and T2, which runs beside it, finished
        async with service.db.session() as s:
            ts = {t.key: t.status for t in (await s.execute(select(TaskRow).where(TaskRow.project_id == info.id))).scalars()}
            return ts.get("T1") == "running" and ts.get("T2") == "done"

    await wait_for(t1_running)
    dog = Watchdog(service.engine)
    now = datetime.now(UTC)
    assert await dog.check_once(now) == []  # nothing is late yet
    later = now + timedelta(seconds=service.settings.engine.task_deadline_seconds + 1)
    assert await dog.check_once(later) == ["resumed T1 of project 1"]
    much_later = later + timedelta(seconds=2 * service.settings.engine.task_deadline_seconds + 1)
    assert await dog.check_once(much_later) == ["escalated T1 of project 1"]

    async def approval_asked() -> bool:  # the PM's decision on the escalation is a step of its own
        async with service.db.session() as s:
            return bool((await s.execute(select(ApprovalRow).where(ApprovalRow.project_id == info.id))).first())

    await wait_for(approval_asked)
    async with service.db.session() as s:
        appr = (await s.execute(select(ApprovalRow).where(ApprovalRow.project_id == info.id))).scalars().all()
        kinds = [e.kind for e in (await s.execute(select(EventRow).where(EventRow.project_id == info.id))).scalars()]
    assert [(a.kind, a.subject) for a in appr] == [("escalation", "T1")]
    assert "watchdog_resumed" in kinds and "escalated_to_director" in kinds
    never.set()


async def test_watchdog_restarts_a_project_whose_runner_died(make_service) -> None:
    service = await make_service(start=False)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    await service.engine.stop()  # the runner is gone, the project is not finished
    service.engine._stopping = False
    actions = await Watchdog(service.engine).check_once()
    assert actions == [f"restarted project {info.id}"]
    service.dispatcher.start()
    assert await drive(service, info.id) == "done"


async def test_tool_intents_run_in_the_sandbox_and_results_come_back(make_service) -> None:
    def work(req):  # noqa: ANN001, ANN202
        if req.meta["task"]["key"] == "T1" and req.meta["step"] == 0:
            return {"message": "Let me compute.", "commands": [],
                    "tools": [{"tool": "python", "args": {"code": "print(6 * 7)"}}, {"tool": "rm_rf", "args": {}},
                              {"tool": "python", "args": {"source": "oops"}}]}
        return None

    model = ScriptedModel({"purpose:work": work, "WorkPlan": [DIAMOND]})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    second = [r for r in model.calls("AgentTurn", "work") if r.meta["task"]["key"] == "T1"][1]
    prompt = second.messages[-1]["content"]
    assert "42" in prompt
    assert "rm_rf" in prompt and "unknown" in prompt.lower()
    assert "code" in prompt  # the bad argument is named
    async with service.db.session() as s:
        calls = [e.data for e in (await s.execute(select(EventRow).where(EventRow.kind == "tool_call"))).scalars()]
    assert [c["ok"] for c in calls] == [True, False, False]
