"""Every step applies exactly once (issue 11): concurrent decisions, two runners of one turn or
review, ``/ask`` and the PM's escalation decision as steps of their own across a restart, an
unusable review that escalates one task instead of blocking the project, and the PM's
``reassign``/``hire`` paths and a rejected milestone run end to end.

Waiting is on events and stored state (``wait_for``, ``drive``, gates inside scripted models),
never on sleeps. The "complete once" hand mutant (dropping the guard in
``agency.engine.tasks.complete``) is caught by ``completions == 1`` for every task of a whole
project in ``tests/agency/test_project_flow.py::test_whole_project_at_every_oversight_level``;
here the two-runner review and the reopened milestone assert it again where it matters.
"""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from agency.db.tables import (
    ApprovalRow,
    EventRow,
    MemberRow,
    MessageRow,
    SpaceRow,
    TaskRow,
)
from agency.errors import AgencyError
from agency.llm.scripted import ScriptedModel
from agency.models import Actor
from agency.states import ApprovalState, TaskState
from tests.agency.plans import DIAMOND
from tests.conftest import AGENCY, DIRECTOR, drive, wait_for

OBJECTIVE = "Write a short guide to composting for city apartments"


# -- reading the record ------------------------------------------------------------------------
async def _rows(svc, row, *where) -> list[Any]:
    async with svc.db.session() as s:
        return list((await s.execute(select(row).where(*where).order_by(row.id))).scalars())


async def _task(svc, pid: int, key: str) -> TaskRow:
    return (await _rows(svc, TaskRow, TaskRow.project_id == pid, TaskRow.key == key))[0]


async def _events(svc, pid: int, kind: str | None = None, task_id: int | None = None) -> list[EventRow]:
    where = [EventRow.project_id == pid]
    if kind is not None:
        where.append(EventRow.kind == kind)
    if task_id is not None:
        where.append(EventRow.task_id == task_id)
    return await _rows(svc, EventRow, *where)


async def _messages(svc, pid: int, text: str) -> list[MessageRow]:
    return [m for m in await _rows(svc, MessageRow, MessageRow.project_id == pid, MessageRow.direction == "out") if text in m.content]


async def _pending(svc, pid: int, kind: str) -> ApprovalRow | None:
    a = await svc.engine.pending_approval(pid)
    return a if a is not None and a.kind == kind else None


def directors(n: int) -> list[Actor]:
    return [Actor(name=f"Director-{i:02d}", external_user_id=f"director-{i}", is_director=True) for i in range(n)]


# -- 1. concurrent decisions -----------------------------------------------------------------------
async def _at_plan_gate(make_service) -> tuple[Any, int, ApprovalRow]:
    svc = await make_service(ScriptedModel({"WorkPlan": [DIAMOND]}))
    info = await svc.new_project(AGENCY, OBJECTIVE, oversight="plan", actor=DIRECTOR)
    approach = await wait_for(lambda: _pending(svc, info.id, "approach"))
    await svc.decide(approach.id, True, DIRECTOR)
    plan = await wait_for(lambda: _pending(svc, info.id, "plan"))
    return svc, info.id, plan


async def test_twenty_concurrent_approvals_apply_once(make_service) -> None:
    svc, pid, plan = await _at_plan_gate(make_service)
    actors = directors(20)
    by_id, by_project = actors[:15], actors[15:]  # a button's approval id, and `/approve` in the project
    results = await asyncio.gather(*[svc.decide(plan.id, True, a) for a in by_id], *[svc.approve(pid, a) for a in by_project],
                                   return_exceptions=True)
    row = (await _rows(svc, ApprovalRow, ApprovalRow.id == plan.id))[0]
    assert row.status == ApprovalState.APPROVED
    winner = row.decided_by
    assert winner in {a.name for a in actors}
    outcome = dict(zip([a.name for a in actors], results))
    assert outcome[winner] == "Plan approved."
    for a in by_id:
        if a.name != winner:
            assert outcome[a.name] == f"Approval #{plan.id} was already approved by {winner}.", (a.name, outcome[a.name])
    for a in by_project:  # `/approve` reads the pending approval first: if the winner committed before, there is none left
        r = outcome[a.name]
        if a.name != winner:
            assert r == f"Approval #{plan.id} was already approved by {winner}." or (
                isinstance(r, AgencyError) and "not waiting for an approval" in str(r)), (a.name, r)
    decisions = [e for e in await _events(svc, pid, "decision") if e.data["approval"] == plan.id]
    assert len(decisions) == 1 and decisions[0].data["actor"] == winner
    assert len(await _events(svc, pid, "plan_approved")) == 1
    assert len(await _messages(svc, pid, "Plan approved")) == 1
    assert await drive(svc, pid) == "done"  # and the project runs on as after one click
    assert len(await _rows(svc, TaskRow, TaskRow.project_id == pid)) == 3


async def test_an_approve_and_reject_race_applies_one_decision(make_service) -> None:
    svc, pid, plan = await _at_plan_gate(make_service)
    actors = directors(20)
    calls = [svc.decide(plan.id, i % 2 == 0, a, reason=None if i % 2 == 0 else "add a section on smell control")
             for i, a in enumerate(actors)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    row = (await _rows(svc, ApprovalRow, ApprovalRow.id == plan.id))[0]
    assert row.status in (ApprovalState.APPROVED, ApprovalState.REJECTED)
    winner = row.decided_by
    outcome = dict(zip([a.name for a in actors], results))
    approved = row.status == ApprovalState.APPROVED
    assert outcome[winner] == ("Plan approved." if approved else "The PM will revise the plan.")
    assert {r for n, r in outcome.items() if n != winner} == {f"Approval #{plan.id} was already {row.status} by {winner}."}
    assert len([e for e in await _events(svc, pid, "decision") if e.data["approval"] == plan.id]) == 1
    assert len(await _events(svc, pid, "plan_approved")) == int(approved)
    assert len(await _events(svc, pid, "plan_rejected")) == int(not approved)
    assert len(await _messages(svc, pid, "Plan approved")) == int(approved)
    assert len(await _messages(svc, pid, "Plan rejected")) == int(not approved)
    assert await drive(svc, pid) == "done"


# -- 2. a stale turn or review is not applied twice ------------------------------------------------
class Meeting:
    """Holds each of the first ``n`` callers until all ``n`` have arrived, then lets them all go."""

    def __init__(self, n: int = 2) -> None:
        self.n = n
        self.arrived = 0
        self.all_in = asyncio.Event()

    async def meet(self) -> None:
        self.arrived += 1
        if self.arrived >= self.n:
            self.all_in.set()
        await self.all_in.wait()


def meet_after_reading(monkeypatch: pytest.MonkeyPatch, in_model: Meeting, tid: int) -> Meeting:
    """The worst interleaving of two runners: after their model calls, both have read the task again
    before either applies its result (a read-then-write guard lets both through; the seq guard of
    the conditional update lets one)."""
    from agency.db import repos

    read = Meeting(in_model.n)
    task_frame = repos.task_frame

    async def frame(s, task_id):
        f = await task_frame(s, task_id)
        if task_id == tid and in_model.all_in.is_set() and read.arrived < read.n:
            await read.meet()
        return f

    monkeypatch.setattr(repos, "task_frame", frame)
    return read


@pytest.mark.parametrize("kind", ["draft", "submit"])
async def test_two_runners_of_one_turn_apply_it_once(make_service, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """The project's own worker and a second runner (``work.turn``) are in the model for the same
    turn of T1 at once. A draft (running -> running) is kept apart only by the seq guard; a
    submission (running -> review) also by the source state."""
    meeting, step1, release = Meeting(2), asyncio.Event(), asyncio.Event()
    text = "Draft of T1: the three bins compared, unique words 7d1f." if kind == "draft" else "T1 done: the three bins compared, unique words 7d1f."

    async def work(req):
        if req.meta["task"]["key"] != "T1":
            return None
        if req.meta["step"] == 0:
            await meeting.meet()
            return {"message": text, "commands": [] if kind == "draft" else ["/submit T1"]}
        step1.set()
        await release.wait()
        return None  # the simulator submits

    svc = await make_service(ScriptedModel({"WorkPlan": [DIAMOND], "purpose:work": work}))
    pid = (await svc.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)).id
    await wait_for(lambda: meeting.arrived == 1)  # the project's worker is in T1's first turn
    t1 = await _task(svc, pid, "T1")
    read = meet_after_reading(monkeypatch, meeting, t1.id)
    await svc.engine.work.turn(pid, t1.id)  # a second runner of the same turn
    assert read.all_in.is_set()
    if kind == "draft":
        await wait_for(step1.is_set)  # the worker's step 0 is over, applied or dropped; step 1 waits
    else:
        await wait_for(lambda: _events(svc, pid, "accepted", t1.id))
    t1 = await _task(svc, pid, "T1")
    assert t1.step == 1
    assert t1.status == (TaskState.RUNNING if kind == "draft" else TaskState.DONE)
    assert len(await _messages(svc, pid, "unique words 7d1f")) == 1
    assert len(await _events(svc, pid, "submitted", t1.id)) == int(kind == "submit")
    release.set()
    assert await drive(svc, pid) == "done"
    t1 = await _task(svc, pid, "T1")
    assert len(await _events(svc, pid, "submitted", t1.id)) == 1
    assert t1.completions == 1 and t1.step == (2 if kind == "draft" else 1)


async def test_two_runners_of_one_review_apply_it_once(make_service, monkeypatch: pytest.MonkeyPatch) -> None:
    meeting = Meeting(2)

    async def review(req):
        if req.meta["task"]["key"] != "T1":
            return None
        await meeting.meet()
        return {"decision": "accept", "criteria_met": [True], "message": "T1 reads well, review 5c2e."}

    svc = await make_service(ScriptedModel({"WorkPlan": [DIAMOND], "purpose:review": review}))
    pid = (await svc.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)).id
    await wait_for(lambda: meeting.arrived == 1)  # the project's worker is in T1's review
    t1 = await _task(svc, pid, "T1")
    read = meet_after_reading(monkeypatch, meeting, t1.id)
    await svc.engine.reviews.review(pid, t1.id)  # a second runner of the same review
    assert read.all_in.is_set()
    assert await drive(svc, pid) == "done"
    t1 = await _task(svc, pid, "T1")
    assert t1.completions == 1
    assert len(await _events(svc, pid, "accepted", t1.id)) == 1
    assert len(await _events(svc, pid, "task_done", t1.id)) == 1
    assert len(await _messages(svc, pid, "review 5c2e")) == 1
    assert len(await _messages(svc, pid, "/handoff T1")) == 1
    assert all(t.completions == 1 for t in await _rows(svc, TaskRow, TaskRow.project_id == pid))


# -- 3. /ask is a step of its own, across a restart ------------------------------------------------
QUESTION = "@Researcher-A which bins work indoors?"


def _asking(req) -> Any:
    if req.meta["task"]["key"] == "T3" and req.meta["step"] == 0:
        return {"message": "Checking a fact first.", "commands": [QUESTION.replace("@Researcher-A", "/ask @Researcher-A")]}
    return None


async def test_ask_is_one_step_and_a_restart_mid_answer_posts_nothing_twice(make_service) -> None:
    answering, never = asyncio.Event(), asyncio.Event()
    seen: dict[str, Any] = {}
    first: Any = None

    async def blocked_answer(req):
        # the addressee's model is called in a later step: the turn with the question is committed already
        t3 = await _task(first, pid, "T3")
        seen.update(step=t3.step, asks=list(t3.asks), questions=len(await _messages(first, pid, QUESTION)),
                    answer_calls=len(model1.calls(purpose="answer")))
        answering.set()
        await never.wait()  # the answer is in flight when the process stops

    model1 = ScriptedModel({"WorkPlan": [DIAMOND], "purpose:work": _asking, "purpose:answer": blocked_answer})
    first = await make_service(model1)
    pid = (await first.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)).id
    await wait_for(answering.is_set)
    assert seen["step"] == 1 and seen["questions"] == 1 and seen["answer_calls"] == 1
    assert [(a["to"], a["asker"], a["question"]) for a in seen["asks"]] == [("Researcher-A", "Writer-A", "which bins work indoors?")]
    assert len(await _events(first, pid, "ask")) == 1 and await _events(first, pid, "answered") == []
    await first.close()  # stops while the answer is in flight

    model2 = ScriptedModel({"WorkPlan": [DIAMOND], "purpose:work": _asking,
                            "purpose:answer": [{"message": "Bokashi bins work indoors.", "commands": []}]})
    second = await make_service(model2, cfg=first.settings)  # the same database file
    assert await drive(second, pid) == "done"
    await second.settle()
    assert len(await _messages(second, pid, QUESTION)) == 1
    assert len(await _messages(second, pid, "@Writer-A Bokashi bins work indoors.")) == 1
    assert len(await _events(second, pid, "ask")) == 1 and len(await _events(second, pid, "answered")) == 1
    assert model2.calls(purpose="answer") and not [r for r in model2.calls("AgentTurn", "work") if r.meta["task"]["key"] == "T3" and r.meta["step"] == 0]
    t3_turns = [r for r in model2.calls("AgentTurn", "work") if r.meta["task"]["key"] == "T3"]
    assert "Bokashi bins work indoors." in t3_turns[0].messages[-1]["content"]
    assert (await _task(second, pid, "T3")).asks == []


# -- 4. an unusable review escalates its task; the project goes on ----------------------------------
async def test_an_invalid_review_and_a_failed_repair_escalate_the_task_not_the_project(make_service) -> None:
    bad = iter(["this is not JSON {", '{"decision": "maybe"}'])  # the review, then its repair round

    def review(req):
        return next(bad, None) if req.meta["task"]["key"] == "T1" else None

    model = ScriptedModel({"WorkPlan": [DIAMOND], "purpose:review": review,
                           "EscalationDecision": [{"action": "feedback", "message": "Write it again, plainly, with sources."}]})
    svc = await make_service(model)
    pid = (await svc.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)).id
    assert await drive(svc, pid) == "done"
    t1 = await _task(svc, pid, "T1")
    kinds = [e.kind for e in await _events(svc, pid, task_id=t1.id)]
    assert kinds.count("escalated") == 1 and kinds.count("pm_feedback") == 1
    assert kinds.index("escalated") < kinds.index("pm_feedback") < kinds.index("task_done")
    escalated = (await _events(svc, pid, "escalated", t1.id))[0]
    assert "could not be used" in escalated.data["reason"]
    assert await _events(svc, pid, "blocked") == []  # the project never stopped
    assert t1.attempt == 1 and t1.completions == 1
    assert len(model.calls("EscalationDecision")) == 1
    later = [r for r in model.calls("AgentTurn", "work") if r.meta["task"]["key"] == "T1"][-1]
    assert "Write it again, plainly, with sources." in later.messages[-1]["content"]


# -- 5. the PM's reassign and hire paths, and a rejected milestone --------------------------------
def _researcher_blocks(req) -> Any:
    if req.meta["task"]["key"] == "T1" and req.meta["handle"] == "Researcher-A":
        return {"message": "I cannot reach the archive.", "commands": ["/blocked the archive is offline"]}
    return None


async def test_pm_reassigns_and_a_restart_during_its_decision_loses_and_repeats_nothing(make_service) -> None:
    deciding, never = asyncio.Event(), asyncio.Event()

    async def pm_thinking(req):
        deciding.set()
        await never.wait()

    first = await make_service(ScriptedModel({"WorkPlan": [DIAMOND], "purpose:work": _researcher_blocks, "EscalationDecision": pm_thinking}))
    pid = (await first.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)).id
    await wait_for(deciding.is_set)
    t1 = await _task(first, pid, "T1")
    assert t1.status == TaskState.ESCALATED  # the escalation is stored before the PM is asked
    await first.close()

    model = ScriptedModel({"WorkPlan": [DIAMOND], "purpose:work": _researcher_blocks,
                           "EscalationDecision": [{"action": "reassign", "assignee": "Analyst-A", "message": "Analyst-A has a copy."}]})
    second = await make_service(model, cfg=first.settings)
    assert await drive(second, pid) == "done"
    t1 = await _task(second, pid, "T1")
    analyst = (await _rows(second, MemberRow, MemberRow.handle == "Analyst-A"))[0]
    assert t1.status == TaskState.DONE and t1.assignee_id == analyst.id and t1.completions == 1 and t1.attempt == 1
    assert [e.data["to"] for e in await _events(second, pid, "reassign", t1.id)] == ["Analyst-A"]
    assert len(await _events(second, pid, "escalated", t1.id)) == 1
    assert len(await _messages(second, pid, "/blocker T1: @Researcher-A is blocked: the archive is offline")) == 1
    assert len(await _messages(second, pid, "/assign T1 @Analyst-A (was @Researcher-A)")) == 1
    assert len(model.calls("EscalationDecision")) == 1
    first_turn = next(r for r in model.calls("AgentTurn", "work") if r.meta["task"]["key"] == "T1")
    assert "Analyst-A has a copy." in first_turn.messages[-1]["content"]


async def test_pm_hires_a_specialist_who_finishes_the_task(make_service) -> None:
    model = ScriptedModel({"WorkPlan": [DIAMOND], "purpose:work": _researcher_blocks,
                           "EscalationDecision": [{"action": "hire", "hire_role": "engineer", "message": "An engineer can rebuild the data."}]})
    svc = await make_service(model)
    pid = (await svc.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)).id
    assert await drive(svc, pid) == "done"
    hired = (await _rows(svc, MemberRow, MemberRow.role == "engineer"))
    assert [(m.handle, m.kind) for m in hired] == [("Engineer-A", "specialist")]
    t1 = await _task(svc, pid, "T1")
    assert t1.assignee_id == hired[0].id and t1.status == TaskState.DONE and t1.completions == 1
    assert [e.data["to"] for e in await _events(svc, pid, "hire", t1.id)] == ["Engineer-A"]
    assert len(await _messages(svc, pid, "/assign T1 @Engineer-A (was @Researcher-A)")) == 1
    work = [r for r in model.calls("AgentTurn", "work") if r.meta["task"]["key"] == "T1"]
    assert work[-1].meta["handle"] == "Engineer-A"
    spaces = await _rows(svc, SpaceRow, SpaceRow.address.like("thread:%"))
    assert any(sp.name == "Engineer-A - work" for sp in spaces)  # a work thread of their own


async def test_a_rejected_milestone_reopens_its_last_task_which_completes_again(make_service) -> None:
    model = ScriptedModel({"WorkPlan": [DIAMOND]})
    svc = await make_service(model)
    pid = (await svc.new_project(AGENCY, OBJECTIVE, oversight="milestones", actor=DIRECTOR)).id
    verdicts: list[tuple[str, str, bool]] = []

    def decide(aid: int, kind: str, subject: str):
        first_milestone = kind == "milestone" and not any(k == "milestone" for k, _, _ in verdicts)
        verdicts.append((kind, subject, not first_milestone))
        return (False, "add a comparison table", None) if first_milestone else (True, None, None)

    assert await drive(svc, pid, decide=decide) == "done"
    assert [v for v in verdicts if v[0] == "milestone"] == [("milestone", "research", False), ("milestone", "research", True),
                                                            ("milestone", "production", True)]
    reopened = await _events(svc, pid, "reopened")
    assert len(reopened) == 1 and len(await _events(svc, pid, "milestone_rejected")) == 1
    last = next(t for t in await _rows(svc, TaskRow, TaskRow.project_id == pid) if t.id == reopened[0].task_id)
    assert last.key in ("T1", "T2") and last.status == TaskState.DONE and last.revision == 1
    assert len(await _events(svc, pid, "task_done", last.id)) == 2  # done, reopened, done again ...
    assert all(t.completions == 1 and t.status == TaskState.DONE for t in await _rows(svc, TaskRow, TaskRow.project_id == pid))  # ... counted once
    again = [r for r in model.calls("AgentTurn", "work") if r.meta["task"]["key"] == last.key][-1]
    assert "add a comparison table" in again.messages[-1]["content"]
    # T3 (the other stream, after T1 and T2) starts only once the research milestone is approved
    kinds = [(e.kind, e.data.get("key") or e.data.get("stream")) for e in await _events(svc, pid)]
    assert kinds.index(("milestone_approved", "research")) < kinds.index(("task_started", "T3"))
