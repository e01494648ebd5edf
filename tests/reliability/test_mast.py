"""The 14 failure modes of multi-agent systems (MAST, arXiv 2503.13657), each triggered by a scripted
misbehaving model and contained by a mechanism in code, not in a prompt.

The mode -> mechanism -> test table is in docs/reliability.md.
"""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from agency.console import ConsoleChat
from agency.db.tables import ApprovalRow, EventRow, FeedbackRow, MessageRow, ProjectRow, TaskRow
from agency.llm.scripted import ScriptedModel
from tests.agency.plans import DIAMOND, plan
from tests.conftest import AGENCY, DIRECTOR, drive, wait_for

OBJECTIVE = "Write a short guide to composting for city apartments"


# -- helpers ----------------------------------------------------------------------------------------
async def _rows(service, row, *where) -> list[Any]:  # noqa: ANN001
    async with service.db.session() as s:
        return list((await s.execute(select(row).where(*where).order_by(row.id))).scalars())


async def _task(service, pid: int, key: str) -> TaskRow:  # noqa: ANN001
    return (await _rows(service, TaskRow, TaskRow.project_id == pid, TaskRow.key == key))[0]


async def _events(service, pid: int, kind: str) -> list[EventRow]:  # noqa: ANN001
    return await _rows(service, EventRow, EventRow.project_id == pid, EventRow.kind == kind)


def _work(model: ScriptedModel, key: str) -> list[Any]:
    return [r for r in model.calls("AgentTurn", "work") if r.meta["task"]["key"] == key]


def _prompt(req: Any) -> str:
    return req.messages[-1]["content"]


def _identity(req: Any) -> str:
    return req.messages[0]["content"]


async def _start(make_service, model: ScriptedModel, *, oversight: str = "autonomous", cfg: Any = None):  # noqa: ANN001, ANN202
    service = await make_service(model, cfg=cfg)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight=oversight, actor=DIRECTOR)
    return service, info.id


def _engine_cfg(settings, **engine: Any):  # noqa: ANN001, ANN202
    return settings.model_copy(update={"engine": settings.engine.model_copy(update=engine)})


async def _all_done(service, pid: int) -> None:  # noqa: ANN001
    tasks = await _rows(service, TaskRow, TaskRow.project_id == pid)
    assert tasks and all(t.status == "done" and t.completions == 1 for t in tasks), [(t.key, t.status, t.completions) for t in tasks]


# -- FC1: specification issues ------------------------------------------------------------------------
async def test_fm_1_1_disobey_task_specification(make_service) -> None:
    """FM-1.1 Disobey task specification: the specialist submits nothing, then work that ignores the
    task's criterion ("lists three suppliers"). Mechanism: /submit is refused without an output, and
    the Collaborator reviews every submission against the task's own success criteria (revise)."""
    spec = plan([("T1", "research", "Researcher-A", [])])
    spec["tasks"][0]["success_criteria"] = ["lists at least three suppliers"]

    def work(req):  # noqa: ANN001, ANN202
        if req.meta.get("review_notes"):
            return {"message": "Suppliers: supplier 1 (bins), supplier 2 (bokashi), supplier 3 (worms).", "commands": ["/submit T1"]}
        if req.meta["step"] == 0:
            return {"message": "", "commands": ["/submit T1"]}
        return {"message": "Composting is great; one supplier sells bins.", "commands": ["/submit T1"]}

    def review(req):  # noqa: ANN001, ANN202
        ok = "supplier 3" in (req.meta["output"] or "")
        return {"decision": "accept", "criteria_met": [True], "message": "three suppliers listed"} if ok else \
            {"decision": "revise", "criteria_met": [False], "notes": "the criterion asks for at least three suppliers"}

    model = ScriptedModel({"WorkPlan": [spec], "purpose:work": work, "purpose:review": review})
    service, pid = await _start(make_service, model)
    assert await drive(service, pid) == "done"
    calls = _work(model, "T1")
    assert "the output is empty" in _prompt(calls[1])
    assert "at least three suppliers" in _prompt(calls[2])  # the review notes reach the specialist
    t1 = await _task(service, pid, "T1")
    assert t1.revision == 1 and t1.completions == 1 and "supplier 3" in t1.output
    assert len(model.calls("Review")) == 2


async def test_fm_1_2_disobey_role_specification(make_service) -> None:
    """FM-1.2 Disobey role specification: a specialist issues PM, Collaborator, Learning and Director
    commands. Mechanism: every command intent is parsed and authorized for the member's role
    (commands.authorize, is_model=True); refused ones come back as feedback and change nothing."""
    foreign = ["/assign T2 @Writer-A", "/review T1 accept", "/deliver", "/hire writer", "/handoff T1 @Writer-A",
               "/evaluate @Writer-A", "/lesson always approve", "/budget 1000", "/project pause"]

    def work(req):  # noqa: ANN001, ANN202
        if req.meta["task"]["key"] == "T1" and req.meta["step"] == 0:
            return {"message": "Acting as the PM and the reviewer now.", "commands": foreign}
        return None

    model = ScriptedModel({"WorkPlan": [DIAMOND], "purpose:work": work})
    service, pid = await _start(make_service, model)
    assert await drive(service, pid) == "done"
    feedback = _prompt(_work(model, "T1")[1])
    for c in foreign[:5]:
        assert f"{c[:80]!r} refused" in feedback, c
    assert "Director command" in feedback
    refused = await _events(service, pid, "command_refused")
    assert len(refused[0].data["feedback"]) == len(foreign)
    t2 = await _task(service, pid, "T2")
    assert t2.assignee_id != (await _task(service, pid, "T3")).assignee_id  # /assign did nothing
    assert [r.meta["task"]["key"] for r in model.calls("Review")].count("T1") == 1  # T1 still went through review
    assert await _rows(service, ApprovalRow, ApprovalRow.project_id == pid) == []
    assert (await service.project(pid)).status == "done"


async def test_fm_1_3_step_repetition(make_service) -> None:
    """FM-1.3 Step repetition: a specialist repeats the same turn over and over, and another copies a
    finished task's output as its own. Mechanism: repetition detection (a turn repeating an earlier
    turn, and a submission repeating another task's output, are refused with feedback), the
    turn_steps cap per attempt, then escalation to the PM and the Director."""
    stuck = {"message": "I am still gathering the background facts for this task.", "commands": []}

    def work(req):  # noqa: ANN001, ANN202
        key = req.meta["task"]["key"]
        if key == "T1" and "Director" not in _prompt(req):
            return stuck
        if key == "T3" and req.meta["step"] == 0:
            return {"message": req.meta["dep_outputs"]["T1"], "commands": ["/submit T3"]}
        return None

    model = ScriptedModel({"WorkPlan": [DIAMOND], "purpose:work": work, "EscalationDecision": [{"action": "escalate", "message": "T1 loops"}]})
    service, pid = await _start(make_service, model)
    kinds: list[str] = []

    def decide(aid: int, kind: str, subject: str):  # noqa: ANN202
        kinds.append(kind)
        return (False, "Stop repeating yourself and submit what you have.", None)

    assert await drive(service, pid, decide=decide) == "done"
    steps = service.settings.engine.turn_steps
    t1 = _work(model, "T1")
    assert len([r for r in t1 if "Director" not in _prompt(r)]) == steps  # capped, not endless
    assert "you repeated an earlier turn word for word" in _prompt(t1[2])  # turn 1 repeated turn 0
    assert kinds == ["escalation"]
    repeated = [e.data["detail"] for e in await _events(service, pid, "repetition")]
    assert "repeated turn" in repeated and "it repeats the output of T1; do this task's own work" in repeated
    t3 = _work(model, "T3")
    assert "repeats the output of T1" in _prompt(t3[1])
    await _all_done(service, pid)
    assert (await _task(service, pid, "T3")).output != (await _task(service, pid, "T1")).output


async def test_fm_1_4_loss_of_conversation_history(make_service) -> None:
    """FM-1.4 Loss of conversation history: the agent keeps no memory of its own; the process even
    crashes mid-task. Mechanism: the core keeps each task's conversation (the member's own drafts,
    answers to its questions, feedback) in the database and re-injects it into every prompt (bounded
    to the last HISTORY_ITEMS), so nothing said earlier in the task is lost, across restarts too."""
    never = asyncio.Event()

    def first_work(req):  # noqa: ANN001, ANN202
        if req.meta["task"]["key"] != "T1":
            return None
        step = req.meta["step"]
        if step == 0:
            return {"message": "Checking the budget first.", "commands": ["/ask @Analyst-A what is the budget?"]}
        if step == 1:
            return {"message": "DRAFT-ALPHA: bins, bokashi and worm farms, compared by price.", "commands": []}
        return never.wait()  # the process dies while this call is in flight

    answer = {"purpose:answer": lambda req: {"message": "BUDGET-99 dollars is the limit.", "commands": []}}
    model1 = ScriptedModel({"WorkPlan": [DIAMOND], "purpose:work": first_work, **answer})
    first = await make_service(model1)
    info = await first.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    await wait_for(lambda: len(_work(model1, "T1")) >= 3)
    await first.engine.stop()  # crash: no graceful drain
    await first.dispatcher.stop()
    first._status_task.cancel()
    await asyncio.gather(first._status_task, return_exceptions=True)
    await first.db.dispose()

    model2 = ScriptedModel({"WorkPlan": [DIAMOND], **answer})
    second = await make_service(model2, chat=ConsoleChat(quiet=True))
    assert await drive(second, info.id) == "done"
    resumed = _work(model2, "T1")[0]
    assert resumed.meta["step"] == 2
    assert "BUDGET-99 dollars is the limit." in _prompt(resumed)  # an answer from two turns ago
    assert "DRAFT-ALPHA" in _prompt(resumed)  # its own earlier draft
    await _all_done(second, info.id)


async def test_fm_1_5_unaware_of_termination_conditions(make_service, settings) -> None:
    """FM-1.5 Unaware of termination conditions: a specialist never submits and keeps asking questions,
    the addressee asks back (ping-pong), and the PM keeps answering "try again". Mechanism: ask_hops
    caps routed questions per turn, answers cannot ask further (one hop), turn_steps caps the turns of
    an attempt, and handoff_chain caps the PM's retries before the Director decides."""
    cfg = _engine_cfg(settings, turn_steps=2, handoff_chain=2, ask_hops=2)

    def work(req):  # noqa: ANN001, ANN202
        if req.meta["task"]["key"] == "T1" and "submit now" not in _prompt(req):
            return {"message": f"More questions (turn {req.meta['step']}).",
                    "commands": [f"/ask @Analyst-A question {i}?" for i in range(4)]}
        return None

    model = ScriptedModel({
        "WorkPlan": [DIAMOND], "purpose:work": work,
        "purpose:answer": lambda req: {"message": "Let me ask you back.", "commands": ["/ask @Researcher-A why?", "/approve"]},
        "EscalationDecision": [{"action": "feedback", "message": "Keep going, try again."}],
    })
    service, pid = await _start(make_service, model, cfg=cfg)
    seen: list[str] = []

    def decide(aid: int, kind: str, subject: str):  # noqa: ANN202
        seen.append(f"{kind}:{subject}")
        return (False, "submit now with what you have", None)

    assert await drive(service, pid, decide=decide) == "done"
    looping = [r for r in _work(model, "T1") if "submit now" not in _prompt(r)]
    assert len(looping) == 2 * 2  # turn_steps x handoff_chain, then the Director
    assert seen == ["escalation:T1"]
    asks = await _events(service, pid, "ask")
    assert len(asks) == 2 * len(looping)  # ask_hops per turn, not 4
    assert {e.data["asker"] for e in asks} == {"Researcher-A"}  # answers never asked back
    assert "only 2 questions per turn are routed" in _prompt(_work(model, "T1")[1])
    assert len(await _events(service, pid, "pm_feedback")) == 1
    await _all_done(service, pid)


# -- FC2: inter-agent misalignment ----------------------------------------------------------------------
async def test_fm_2_1_conversation_reset(make_service) -> None:
    """FM-2.1 Conversation reset: the runners are restarted several times mid-task and a specialist
    tries to restart its task with /accept. Mechanism: durable task state with conditional updates:
    a restart resumes each task at its committed step (recorded answers reused), nothing goes back to
    the start, and no task is completed twice."""
    def work(req):  # noqa: ANN001, ANN202
        if req.meta["step"] == 0:
            return {"message": "Starting over from scratch.", "commands": [f"/accept {req.meta['task']['key']}"]}
        return None

    model = ScriptedModel({"purpose:work": work}, delay=0.03)
    service, pid = await _start(make_service, model)
    for _ in range(4):
        await asyncio.sleep(0.25)
        await service.engine.stop()  # the conversation is cut...
        service.engine._stopping = False
        await service.engine.start()  # ...and picked up again
    assert await drive(service, pid) == "done"
    await _all_done(service, pid)
    for key in ("T1", "T2", "T3", "T4", "T5"):
        steps = [r.meta["step"] for r in _work(model, key)]
        assert steps == sorted(steps), (key, steps)  # never back to an earlier step
        assert max(steps) == 1  # /accept restarted nothing: step 0 acts, step 1 submits
        assert sum(1 for s in steps if s == 0) <= 2  # at most one lost in-flight call per step
    done_at = {e.data["key"]: e.id for e in await _events(service, pid, "task_done")}
    assert len(done_at) == 5


async def test_fm_2_2_fail_to_ask_for_clarification(make_service) -> None:
    """FM-2.2 Fail to ask for clarification: the writer guesses the audience instead of asking.
    Mechanism: the review against the task's criteria sends the guess back with notes; /ask routes the
    clarification question to the addressee's thread and the core injects the answer into the asker's
    next prompt; the answered submission is accepted."""
    def work(req):  # noqa: ANN001, ANN202
        if req.meta["task"]["key"] != "T3":
            return None
        notes = req.meta.get("review_notes") or ""
        prompt = _prompt(req)
        if not notes:
            return {"message": "Guide written for an audience I assumed: suburban homeowners with gardens.", "commands": ["/submit T3"]}
        if "renters in small flats" not in prompt:
            return {"message": "Asking first.", "commands": ["/ask @Analyst-A who is the audience of the guide?"]}
        return {"message": "Guide for renters in small flats: bokashi and worm bins under the sink.", "commands": ["/submit T3"]}

    def review(req):  # noqa: ANN001, ANN202
        if req.meta["task"]["key"] != "T3":
            return None
        if "renters" in req.meta["output"]:
            return {"decision": "accept", "criteria_met": [True], "message": "audience confirmed"}
        return {"decision": "revise", "criteria_met": [False], "notes": "You assumed the audience; ask @Analyst-A who it is."}

    def answer(req):  # noqa: ANN001, ANN202
        assert "Analyst-A" in _identity(req)
        return {"message": "The audience is renters in small flats.", "commands": []}

    model = ScriptedModel({"WorkPlan": [DIAMOND], "purpose:work": work, "purpose:review": review, "purpose:answer": answer})
    service, pid = await _start(make_service, model)
    assert await drive(service, pid) == "done"
    asks = await _events(service, pid, "ask")
    assert [(e.data["asker"], e.data["to"]) for e in asks] == [("Writer-A", "Analyst-A")]
    msgs = await _rows(service, MessageRow, MessageRow.project_id == pid)
    q = [m for m in msgs if m.content.startswith("@Analyst-A who is the audience")]
    assert len(q) == 1 and q[0].persona == "Writer-A"
    assert any(m.persona == "Analyst-A" and "renters in small flats" in m.content for m in msgs)
    t3 = await _task(service, pid, "T3")
    assert "renters" in t3.output and t3.revision == 1 and t3.completions == 1


async def test_fm_2_3_task_derailment(make_service) -> None:
    """FM-2.3 Task derailment: a specialist drifts to other tasks (submits and accepts T3 while it
    owns T1) and then hands in an off-topic text. Mechanism: a member can act only on its own task
    (/submit and /accept of another task are refused), and the Collaborator reviews against this
    task's criteria, so drift is sent back."""
    def work(req):  # noqa: ANN001, ANN202
        if req.meta["task"]["key"] != "T1":
            return None
        if req.meta["step"] == 0 and not req.meta.get("review_notes"):
            return {"message": "The final guide, written now: ...", "commands": ["/accept T3", "/submit T3"]}
        if not req.meta.get("review_notes"):
            return {"message": "A poem about the sea, waves and gulls, which I felt like writing.", "commands": ["/submit T1"]}
        return None

    def review(req):  # noqa: ANN001, ANN202
        if "poem" in (req.meta["output"] or ""):
            return {"decision": "revise", "criteria_met": [False], "notes": "off topic: this is not the background research of T1"}
        return None

    model = ScriptedModel({"WorkPlan": [DIAMOND], "purpose:work": work, "purpose:review": review})
    service, pid = await _start(make_service, model)
    assert await drive(service, pid) == "done"
    second = _prompt(_work(model, "T1")[1])
    assert "/submit T3 refused: your task is T1" in second and "/accept T3 refused: your task is T1" in second
    assert [r.meta["task"]["key"] for r in _work(model, "T3")][0] == "T3"
    t1, t3 = await _task(service, pid, "T1"), await _task(service, pid, "T3")
    assert "poem" not in t1.output and t1.revision == 1
    assert "The final guide, written now" not in (t3.output or "")
    await _all_done(service, pid)


async def test_fm_2_4_information_withholding(make_service) -> None:
    """FM-2.4 Information withholding: the producer of a fact will not repeat it when asked, the
    Collaborator's hand-off says nothing, and the PM's deliverable leaves the work out. Mechanism:
    accepted outputs are passed on by the core (dependency outputs injected into dependents' prompts;
    every accepted output appended to the deliverable), never relayed by agents."""
    def work(req):  # noqa: ANN001, ANN202
        key = req.meta["task"]["key"]
        if key == "T1":
            return {"message": "FACT-42: keep a 2:1 ratio of browns to greens.", "commands": ["/submit T1"]}
        if key == "T3" and req.meta["step"] == 0:
            return {"message": "Asking the researcher.", "commands": ["/ask @Researcher-A what ratio did you find?"]}
        return None

    model = ScriptedModel({
        "WorkPlan": [DIAMOND], "purpose:work": work,
        "purpose:answer": lambda req: {"message": "I'd rather not say.", "commands": []},
        "purpose:review": lambda req: {"decision": "accept", "criteria_met": [True], "message": "ok"},
        "Deliverable": [{"title": "Composting guide", "summary": "A guide, details withheld.", "body_markdown": "Nothing to see here, really."}],
    })
    service, pid = await _start(make_service, model)
    assert await drive(service, pid) == "done"
    for r in _work(model, "T3"):
        assert "FACT-42: keep a 2:1 ratio" in _prompt(r)  # injected by the core, whatever the agents said
    md = await service.deliverable(pid)
    assert "FACT-42: keep a 2:1 ratio" in md and "Appendix: accepted task outputs" in md


async def test_fm_2_5_ignored_other_agents_input(make_service) -> None:
    """FM-2.5 Ignored other agent's input: the addressee of a question answers nothing, and a
    specialist resubmits unchanged after review notes. Mechanism: an empty answer gets one reminder,
    then the ignored question is escalated (notice in #overview to the PM, feedback on the member) and
    the asker continues; review notes are injected into the next prompt and an unchanged resubmission
    is refused as repetition."""
    reviews = iter([{"decision": "revise", "criteria_met": [False], "notes": "add the price of each bin"}])

    def work(req):  # noqa: ANN001, ANN202
        key = req.meta["task"]["key"]
        if key == "T3" and req.meta["step"] == 0:
            return {"message": "One question first.", "commands": ["/ask @Researcher-A which bins work indoors?"]}
        if key == "T2":
            same = {"message": "Options: bokashi, worm bins and electric composters compared.", "commands": ["/submit T2"]}
            return same if req.meta["step"] == 0 else {"message": same["message"] + " Prices: 30, 60 and 300 USD.", "commands": ["/submit T2"]}
        return None

    model = ScriptedModel({
        "WorkPlan": [DIAMOND], "purpose:work": work,
        "purpose:answer": lambda req: {"message": "", "commands": []},
        "purpose:review": lambda req: next(reviews, None) if req.meta["task"]["key"] == "T2" else None,
    })
    service, pid = await _start(make_service, model)
    assert await drive(service, pid) == "done"
    answers = model.calls("AgentTurn", "answer")
    assert len(answers) == 2 and "Reminder: @Writer-A is waiting for your answer" in _prompt(answers[1])
    ignored = await _events(service, pid, "question_ignored")
    assert [(e.data["asker"], e.data["to"]) for e in ignored] == [("Writer-A", "Researcher-A")]
    notices = [m.content for m in await _rows(service, MessageRow, MessageRow.project_id == pid, MessageRow.kind == "notice")]
    assert any("@Researcher-A did not answer @Writer-A's question after a reminder" in c for c in notices)
    fb = await _rows(service, FeedbackRow, FeedbackRow.project_id == pid, FeedbackRow.source == "escalation")
    assert any("ignored a question from @Writer-A" in f.text for f in fb)
    assert "@Researcher-A did not answer" in _prompt(_work(model, "T3")[1])
    t2_calls = _work(model, "T2")
    assert "add the price of each bin" in _prompt(t2_calls[-1])
    assert "repeats your previous submission unchanged" in _prompt(t2_calls[-1])
    assert "Prices" in (await _task(service, pid, "T2")).output


async def test_fm_2_6_reasoning_action_mismatch(make_service) -> None:
    """FM-2.6 Reasoning-action mismatch: the model says (in thinking and message) that it submits and
    asked a colleague, but emits no command. Mechanism: only structured command intents act; text
    that looks like a command is plain text; the core tells the member that nothing was submitted."""
    def work(req):  # noqa: ANN001, ANN202
        if req.meta["task"]["key"] == "T1" and req.meta["step"] == 0:
            return {"thinking": "The work is complete, so I will submit it now.",
                    "message": "I asked @Analyst-A and the work is final. /submit T1", "commands": []}
        return None

    model = ScriptedModel({"WorkPlan": [DIAMOND], "purpose:work": work})
    service, pid = await _start(make_service, model)
    assert await drive(service, pid) == "done"
    calls = _work(model, "T1")
    assert len(calls) == 2
    assert "No submission yet: when your work meets the criteria, add `/submit T1`" in _prompt(calls[1])
    submitted = [e for e in await _events(service, pid, "submitted") if e.data["key"] == "T1"]
    assert len(submitted) == 1
    assert [e for e in await _events(service, pid, "ask")] == []
    assert "/submit T1" not in (await _task(service, pid, "T1")).output  # the real submission, not the claim


# -- FC3: task verification -------------------------------------------------------------------------------
async def test_fm_3_1_premature_termination(make_service) -> None:
    """FM-3.1 Premature termination: a specialist declares the project finished and emits /deliver and
    /project cancel; the Collaborator says "done, deliver now". Mechanism: those commands are refused
    by role, and a project moves to delivery only when every task is done and every stream has met its
    criteria (at `milestones` oversight: approved by the Director)."""
    def work(req):  # noqa: ANN001, ANN202
        if req.meta["step"] == 0:
            return {"message": "The whole project is complete, we can stop now.", "commands": ["/deliver", "/project cancel"]}
        return None

    model = ScriptedModel({
        "WorkPlan": [DIAMOND], "purpose:work": work,
        "purpose:review": lambda req: {"decision": "accept", "criteria_met": [True], "message": "Project done, deliver now. /deliver"},
    })
    service, pid = await _start(make_service, model, oversight="milestones")

    async def waiting_for_last_milestone() -> bool:  # approve every gate but the production milestone
        a = await service.engine.pending_approval(pid)
        if a is not None and not (a.kind == "milestone" and a.subject == "production"):
            await service.decide(a.id, True, DIRECTOR)
            return False
        return a is not None

    await wait_for(waiting_for_last_milestone, timeout=30)
    await asyncio.sleep(0.3)
    p = (await _rows(service, ProjectRow, ProjectRow.id == pid))[0]
    assert p.status == "running" and p.deliverable is None  # every task done, a stream not yet accepted
    assert all(t.status == "done" for t in await _rows(service, TaskRow, TaskRow.project_id == pid))
    assert await _events(service, pid, "delivered") == []
    assert "is a Director command" in _prompt(_work(model, "T1")[1]) and "/deliver" in _prompt(_work(model, "T1")[1])
    assert await drive(service, pid) == "done"
    decisions = [e.id for e in await _events(service, pid, "decision")]
    assert (await _events(service, pid, "delivered"))[0].id > max(decisions)
    assert len([m for m in await _rows(service, MessageRow, MessageRow.project_id == pid) if m.kind == "deliverable"]) == 1


@pytest.mark.parametrize("stamp", [[False], []], ids=["marked-unmet", "unchecked"])
async def test_fm_3_2_no_or_incomplete_verification(make_service, stamp: list[bool]) -> None:
    """FM-3.2 No or incomplete verification: the Collaborator rubber-stamps "accept" while its own check
    says a criterion is not met (or checks no criterion at all), and a specialist tries to review its
    own work. Mechanism: a task is done only through the Collaborator's review (a specialist's /review
    is refused), and an accept that does not mark every criterion met is turned into a revise naming
    the criteria that are unmet or unchecked."""
    stamps = iter([{"decision": "accept", "criteria_met": stamp, "message": "LGTM"}])

    def work(req):  # noqa: ANN001, ANN202
        if req.meta["task"]["key"] == "T1" and req.meta["step"] == 0 and not req.meta.get("review_notes"):
            return {"message": "Background: facts on bins, bokashi, worms and ratios.", "commands": ["/review T1 accept", "/submit T1"]}
        return None

    model = ScriptedModel({
        "WorkPlan": [DIAMOND], "purpose:work": work,
        "purpose:review": lambda req: next(stamps, None) if req.meta["task"]["key"] == "T1" else None,
    })
    service, pid = await _start(make_service, model)
    assert await drive(service, pid) == "done"
    incons = await _events(service, pid, "verification_inconsistent")
    assert [e.data["unmet"] for e in incons] == [["complete"]]
    t1 = await _task(service, pid, "T1")
    assert t1.revision == 1 and t1.completions == 1
    calls = _work(model, "T1")
    assert "Not met: complete" in _prompt(calls[-1])
    assert "'/review T1 accept' refused" in _prompt(calls[-1]) or len(calls) == 2
    reviews = [r for r in model.calls("Review") if r.meta["task"]["key"] == "T1"]
    assert len(reviews) == 2  # the second, real check accepted it


async def test_fm_3_3_incorrect_verification(make_service) -> None:
    """FM-3.3 Incorrect verification: the Collaborator accepts a wrong output with every criterion
    "met". Mechanism: Director oversight gates (`every_task`, or `milestones` per stream): the
    Director rejects, the task is reopened with the Director's notes in the next prompt, fixed,
    reviewed again and approved; it still counts one completion."""
    def work(req):  # noqa: ANN001, ANN202
        if req.meta["task"]["key"] == "T1" and not req.meta.get("review_notes"):
            return {"message": "Key figure: 2 + 2 = 5 kg of compost per week.", "commands": ["/submit T1"]}
        if req.meta["task"]["key"] == "T1":
            return {"message": "Key figure: 2 + 2 = 4 kg of compost per week.", "commands": ["/submit T1"]}
        return None

    model = ScriptedModel({
        "WorkPlan": [DIAMOND], "purpose:work": work,
        "purpose:review": lambda req: {"decision": "accept", "criteria_met": [True], "message": "All correct."},
    })
    service, pid = await _start(make_service, model, oversight="every_task")
    verdicts: list[tuple[str, bool]] = []

    def decide(aid: int, kind: str, subject: str):  # noqa: ANN202
        if kind == "task" and subject == "T1" and not any(s == "T1" for s, _ in verdicts):
            verdicts.append((subject, False))
            return (False, "2 + 2 is 4, not 5: fix the figure", None)
        verdicts.append((subject, True))
        return (True, None, None)

    assert await drive(service, pid, decide=decide) == "done"
    t1 = await _task(service, pid, "T1")
    assert "2 + 2 = 4" in t1.output and t1.completions == 1 and t1.revision == 1
    assert "Director: 2 + 2 is 4, not 5: fix the figure" in _prompt(_work(model, "T1")[-1])
    t1_approvals = [(a.status, a.decided_by) for a in await _rows(service, ApprovalRow, ApprovalRow.project_id == pid, ApprovalRow.subject == "T1")]
    assert t1_approvals == [("rejected", "Director"), ("approved", "Director")]
    await _all_done(service, pid)
