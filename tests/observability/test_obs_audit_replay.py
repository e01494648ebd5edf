"""Audit export as JSON Lines, and replay of a recorded project (identical, and tampered)."""
from __future__ import annotations

import io
import json

import pytest
from sqlalchemy import select

from agency.audit import export_audit, write_audit
from agency.db.tables import LLMCallRow, TaskRow
from agency.errors import NotFoundError
from agency.llm.replay import normalise_key, replay_project
from agency.llm.scripted import ScriptedModel
from tests.conftest import AGENCY, DIRECTOR, drive
from tests.observability.obs_helpers import HIGH, LOW, OBJECTIVE, rows, scored_plan

SECRET = "sk-test" + "Z9y8X7w6V5u4T3s2R1q0P9o8"


def _review(req):  # noqa: ANN001, ANN202
    if req.meta["task"]["key"] == "T2" and req.meta["revision"] == 0:
        return {"decision": "revise", "notes": "compare two bin types"}
    return None


async def _recorded_project(make_service, *, objective: str = OBJECTIVE):  # noqa: ANN001, ANN202
    """A plan-oversight project: the Director rejects the first plan, T2 is revised once, T3 runs on the strong tier."""
    model = ScriptedModel({"WorkPlan": [scored_plan({"T1": LOW, "T2": LOW, "T3": HIGH})], "purpose:review": _review})
    service = await make_service(model)
    info = await service.new_project(AGENCY, objective, oversight="plan", actor=DIRECTOR)
    rejected: list[int] = []

    def decide(aid: int, kind: str, subject: str):  # noqa: ANN202
        if kind == "plan" and not rejected:
            rejected.append(aid)
            return (False, "add a section on smell control", None)
        return (True, None, None)

    assert await drive(service, info.id, decide=decide) == "done"
    return service, info.id


async def test_audit_exports_events_messages_and_calls_without_secrets(make_service, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    service, pid = await _recorded_project(make_service, objective=f"{OBJECTIVE} (our key is {SECRET})")
    await service.settle()
    out = io.StringIO()
    n = await write_audit(service.db, pid, out)
    text = out.getvalue()
    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) == n and records[0]["type"] == "project" and records[0]["status"] == "done"
    assert SECRET not in text and "[REDACTED]" in text
    types = {r["type"] for r in records}
    assert types == {"project", "task", "approval", "event", "message", "llm_call"}
    calls = [r for r in records if r["type"] == "llm_call"]
    async with service.db.session() as s:
        recorded = list((await s.execute(select(LLMCallRow).where(LLMCallRow.project_id == pid))).scalars())
    assert len(calls) == len(recorded)
    assert all(c["request"]["messages"] and c["response"] and c["prompt_tokens"] > 0 and c["cost_usd"] > 0 for c in calls)
    t2_work = [c for c in calls if c["task"] == "T2" and c["purpose"] == "work"]
    assert [c["verdict"] for c in t2_work] == ["revised", "accepted"]
    assert {c["tier"] for c in calls if c["task"] == "T3" and c["purpose"] == "work"} == {"strong"}
    kinds = [r["kind"] for r in records if r["type"] == "event"]
    for kind in ("created", "plan_valid", "decision", "task_started", "submitted", "revise", "accepted", "delivered"):
        assert kind in kinds, kind
    approvals = [(r["kind"], r["status"], r["reason"]) for r in records if r["type"] == "approval"]
    assert ("plan", "rejected", "add a section on smell control") in approvals
    messages = [r for r in records if r["type"] == "message"]
    assert any(m["kind"] == "deliverable" and m["attachment_text"] for m in messages)
    stamps = [r["at"] for r in records if "at" in r]
    assert stamps == sorted(stamps)  # one timeline, oldest first
    with pytest.raises(NotFoundError):
        async for _ in export_audit(service.db, 999):
            pass


def test_call_keys_are_normalised_to_task_keys() -> None:
    keys = {42: "T2"}
    assert normalise_key("p7:plan:r0:a1", keys) == "project:plan:r0:a1"
    assert normalise_key("t42:a0:r1:s0#invalid", keys) == "task:T2:a0:r1:s0"
    assert normalise_key("t42:a0:r0:s1:ask:Writer-A:remind", keys) == "task:T2:a0:r0:s1:ask:Writer-A:remind"
    assert normalise_key(None, keys) is None


async def test_a_recorded_project_replays_to_the_same_result(make_service, settings) -> None:
    service, pid = await _recorded_project(make_service)
    result = await replay_project(settings, service.settings.db_url, pid, timeout=60)
    assert result.ok, result.divergences
    assert result.recorded_status == result.replay_status == "done"
    assert result.calls_replayed == result.calls_recorded == len(await rows(service, LLMCallRow, LLMCallRow.project_id == pid))
    assert result.tasks == 3 and "same tasks, states and deliverable" in result.render()


async def _tamper(service, pid: int, purpose: str, edit) -> None:  # noqa: ANN001
    async with service.db.session() as s, s.begin():
        row = (await s.execute(select(LLMCallRow).where(LLMCallRow.project_id == pid, LLMCallRow.purpose == purpose,
                                                        LLMCallRow.outcome == "ok").order_by(LLMCallRow.id.desc()).limit(1))).scalar_one()
        row.response = json.dumps(edit(json.loads(row.response)))


async def test_a_tampered_plan_is_reported_as_a_divergence(make_service, settings) -> None:
    service, pid = await _recorded_project(make_service)

    def retitle(plan: dict) -> dict:
        plan["tasks"][1]["title"] = "Something else entirely"
        return plan

    await _tamper(service, pid, "plan", retitle)
    result = await replay_project(settings, service.settings.db_url, pid, timeout=60)
    assert not result.ok
    assert result.first_divergence == "task T2: recorded title 'Task T2', replay 'Something else entirely'"
    assert "First divergence: task T2" in result.render()


async def test_a_tampered_work_answer_is_reported_as_a_divergence(make_service, settings) -> None:
    service, pid = await _recorded_project(make_service)
    async with service.db.session() as s:
        t3 = (await s.execute(select(TaskRow).where(TaskRow.project_id == pid, TaskRow.key == "T3"))).scalar_one()

    def rewrite(turn: dict) -> dict:
        turn["message"] = "A different text altogether."
        return turn

    async with service.db.session() as s, s.begin():
        row = (await s.execute(select(LLMCallRow).where(LLMCallRow.task_id == t3.id, LLMCallRow.purpose == "work"))).scalars().first()
        row.response = json.dumps(rewrite(json.loads(row.response)))
    result = await replay_project(settings, service.settings.db_url, pid, timeout=60)
    assert not result.ok
    assert result.first_divergence.startswith("deliverable: differs at line"), result.divergences


async def test_a_missing_record_is_the_first_divergence(make_service, settings) -> None:
    service, pid = await _recorded_project(make_service)
    async with service.db.session() as s, s.begin():
        t1 = (await s.execute(select(TaskRow).where(TaskRow.project_id == pid, TaskRow.key == "T1"))).scalar_one()
        review = (await s.execute(select(LLMCallRow).where(LLMCallRow.task_id == t1.id, LLMCallRow.purpose == "review"))).scalar_one()
        await s.delete(review)
    result = await replay_project(settings, service.settings.db_url, pid, timeout=60)
    assert not result.ok
    assert result.first_divergence.endswith("(collaborator review task:T1:a0:r0:review): no recorded answer"), result.divergences
    assert result.replay_status in ("running", "blocked")  # it stops at the first missing answer, never done
