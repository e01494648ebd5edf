"""The Learning & Performance Manager with a scripted model: feedback, evaluations, versions."""
from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from agency.db import repos
from agency.db.tables import (
    ApprovalRow,
    EvaluationRow,
    FeedbackRow,
    LLMCallRow,
    MemberRow,
    MessageRow,
    SystemMessageRow,
    TaskRow,
)
from agency.errors import AgencyError, NotFoundError, PermissionDeniedError
from agency.learning import LEARNING_HANDLE, reaction_rating, system_message_diff
from agency.llm.scripted import ScriptedModel
from agency.memory import SimpleMemory
from agency.models import Actor
from agency.schemas import Evaluation
from tests.conftest import AGENCY, DIRECTOR
from tests.learning.helpers import LESSON, MARKER, evaluation, run_project

ALICE = Actor(name="Alice", external_user_id="u-alice", is_director=False)


async def _rows(service: Any, row: Any, *where: Any) -> list[Any]:
    async with service.db.session() as s:
        return list((await s.execute(select(row).where(*where).order_by(row.id))).scalars())


async def _member(service: Any, handle: str) -> MemberRow:
    async with service.db.session() as s:
        m = await repos.member_by_handle(s, 1, handle)
        assert m is not None
        return m


async def _work_prompts(service: Any, handle: str, project_id: int) -> list[LLMCallRow]:
    m = await _member(service, handle)
    return await _rows(service, LLMCallRow, LLMCallRow.member_id == m.id, LLMCallRow.project_id == project_id,
                       LLMCallRow.purpose == "work", LLMCallRow.outcome == "ok")


async def _join_as_human(service: Any, thread: str) -> None:
    """Alice joins the stream of ``thread`` (``thread:<stream>:<member>``) as a human specialist."""
    stream = "stream:" + thread.split(":")[1]
    assert "human specialist" in await service.add_human(AGENCY, stream, ALICE.external_user_id, "Alice", DIRECTOR)


def _system(call: LLMCallRow) -> str:
    return call.request["messages"][0]["content"]


# -- pure parts ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("emoji", "rating"), [
    ("👍", 5), ("✅", 5), ("⭐", 5), ("❤️", 5), ("❤", 5), ("👍🏽", 5), (":thumbsup:", 5),
    ("👎", 1), ("❌", 1), ("🎉", None), ("", None), ("smile", None),
])
def test_reactions_map_to_ratings(emoji: str, rating: int | None) -> None:
    assert reaction_rating(emoji) == rating


def test_an_evaluation_that_proposes_a_revision_must_carry_it() -> None:
    with pytest.raises(ValueError, match="revised_system_message"):
        Evaluation.model_validate({"propose_revision": True, "reason": "x"})
    with pytest.raises(ValueError, match="reason"):
        Evaluation.model_validate({"propose_revision": True, "revised_system_message": "You are Writer-A, and more text."})
    with pytest.raises(ValueError, match="short"):
        Evaluation.model_validate({"lessons": ["x" * 301]})
    e = Evaluation.model_validate({"scores": [{"expectation": "a", "score": 4}, {"expectation": "b", "score": 5}],
                                   "lessons": ["  keep   it short ", "keep it short"]})
    assert e.mean_score == 4.5 and e.lessons == ["keep it short"]
    with pytest.raises(ValueError):
        Evaluation.model_validate({"scores": [{"expectation": "a", "score": 6}]})


def test_the_diff_is_unified() -> None:
    d = system_message_diff("a\nb\n", "a\nc\n", "v1", "v2")
    assert d.startswith("--- v1\n+++ v2") and "-b" in d and "+c" in d


# -- feedback from every source ---------------------------------------------------------------------
async def test_a_director_reaction_and_a_human_correction_become_feedback(build: Any) -> None:
    model = ScriptedModel({"Evaluation": evaluation()})
    service = await build(model, learning={"enabled": False})
    pid = await run_project(service)
    writer = await _member(service, "Writer-A")
    msg = (await _rows(service, MessageRow, MessageRow.persona == "Writer-A", MessageRow.project_id == pid,
                       MessageRow.external_id.is_not(None)))[-1]
    system_msg = (await _rows(service, MessageRow, MessageRow.persona == "A-TEAMs", MessageRow.external_id.is_not(None)))[0]

    assert await service.record_reaction(AGENCY, msg.address, msg.external_id, "👍", DIRECTOR) == "Reaction recorded as 5/5 for @Writer-A."
    assert await service.record_reaction(AGENCY, msg.address, msg.external_id, "👍", DIRECTOR) is None  # the same reaction again
    assert await service.record_reaction(AGENCY, msg.address, msg.external_id, "👎", DIRECTOR) is not None
    assert await service.record_reaction(AGENCY, msg.address, msg.external_id, "🎉", DIRECTOR) is None  # no rating
    assert await service.record_reaction(AGENCY, msg.address, msg.external_id, "👍", ALICE) is None  # not the Director
    assert await service.record_reaction(AGENCY, msg.address, system_msg.external_id, "👍", DIRECTOR) is None  # not a member
    assert await service.record_reaction(AGENCY, msg.address, "no-such-message", "👍", DIRECTOR) is None

    # a human specialist's correction in the specialist's thread is feedback for that specialist
    await _join_as_human(service, msg.address)
    await service.handle_message(AGENCY, msg.address, ALICE, "Put the conclusion first, then the details.")

    rows = await _rows(service, FeedbackRow, FeedbackRow.member_id == writer.id, FeedbackRow.source.in_(("reaction", "human")))
    assert [(r.source, r.rating, r.author) for r in rows] == [("reaction", 5, "Director"), ("reaction", 1, "Director"), ("human", None, "Alice")]
    assert all(r.project_id == pid for r in rows)
    assert "Put the conclusion first" in rows[-1].text
    async with service.db.session() as s:
        record = await service.record(s, writer.id)
    assert record["director_rating"] == 3.0


async def test_feedback_of_every_source_reaches_the_evaluation(build: Any) -> None:
    model = ScriptedModel({"Evaluation": evaluation()})
    service = await build(model, learning={"enabled": False})
    pid = await run_project(service)
    msg = (await _rows(service, MessageRow, MessageRow.persona == "Writer-A", MessageRow.external_id.is_not(None)))[-1]
    await service.record_reaction(AGENCY, msg.address, msg.external_id, "👎", DIRECTOR)
    await _join_as_human(service, msg.address)
    await service.handle_message(AGENCY, msg.address, ALICE, "Cite the municipal compost rules by name.")
    await service.feedback(AGENCY, "Writer-A", 3, "Too long.", DIRECTOR, project_id=pid)
    await service.close()

    service = await build(model)  # learning on; same database (a restart)
    result = await service.run_command(AGENCY, f"overview:{pid}", DIRECTOR, "/evaluate @Writer-A")
    assert "Evaluated @Writer-A" in result.text and "proposed" in result.text
    req = model.calls("Evaluation")[-1]
    sources = [f["source"] for f in req.meta["feedback"]]
    assert {"review", "reaction", "human", "director"} <= set(sources)
    prompt = req.messages[-1]["content"]
    assert "Cite the municipal compost rules by name." in prompt and "Too long." in prompt
    assert req.meta["record"]["tasks_done"] == 2


# -- after a project -----------------------------------------------------------------------------------
async def test_a_project_produces_evaluations_lessons_and_a_proposed_version(build: Any) -> None:
    memory = SimpleMemory()
    service = await build(ScriptedModel({"Evaluation": evaluation()}), memory=memory)
    pid = await run_project(service)

    evals = await _rows(service, EvaluationRow, EvaluationRow.project_id == pid)
    handles = {(await _member_by_id(service, e.member_id)).handle for e in evals}
    assert handles == {"Researcher-A", "Analyst-A", "Writer-A", "Reviewer-A"}
    assert all(e.trigger == "project" and e.mean_score == 4.0 and e.record.get("tasks_done") for e in evals)

    # the Learning Manager is a member; its calls are its own, not the specialists'
    lm = await _member(service, LEARNING_HANDLE)
    assert lm.kind == "learning"
    calls = await _rows(service, LLMCallRow, LLMCallRow.role == "learning", LLMCallRow.project_id == pid)
    assert len(calls) == 4 and all(c.member_id == lm.id and c.purpose == "evaluate" for c in calls)

    # lessons are in memory, tagged with the member and its role
    hits = await memory.search(1, "executive summary document", kinds=["lesson"], where={"member": "Writer-A"})
    assert [h.text for h in hits] == [LESSON] and hits[0].metadata["role"] == "writer"

    # a proposed version, with its reason, kept beside the active one
    writer = await _member(service, "Writer-A")
    versions = await _rows(service, SystemMessageRow, SystemMessageRow.member_id == writer.id)
    assert [(v.version, v.status) for v in versions] == [(1, "active"), (2, "proposed")]
    assert MARKER in versions[1].text and "summary first" in versions[1].reason
    others = await _rows(service, SystemMessageRow, SystemMessageRow.status == "proposed")
    assert len(others) == 1

    # the approval is posted in the project's overview, with the diff
    (appr,) = await _rows(service, ApprovalRow, ApprovalRow.kind == "revision")
    assert (appr.project_id, appr.subject, appr.status) == (pid, "Writer-A v2", "pending")
    (post,) = await _rows(service, MessageRow, MessageRow.approval_id == appr.id)
    assert post.persona == LEARNING_HANDLE and post.address == f"overview:{pid}" and post.kind == "approval"
    assert "```diff" in post.content and f"+{MARKER}" in post.content and "/approve" in post.content
    summary = await _rows(service, MessageRow, MessageRow.address == "hq", MessageRow.persona == LEARNING_HANDLE)
    assert "evaluated 4 specialist(s)" in summary[-1].content and "1 system-message revision(s)" in summary[-1].content

    # idempotent: the hook again does nothing
    assert await service.learning.after_project(pid) == []
    assert len(await _rows(service, EvaluationRow)) == 4


async def _member_by_id(service: Any, member_id: int) -> MemberRow:
    async with service.db.session() as s:
        m = await s.get(MemberRow, member_id)
        assert m is not None
        return m


async def test_approving_changes_the_next_prompt_and_rollback_restores_it(build: Any) -> None:
    service = await build(ScriptedModel({"Evaluation": evaluation()}))
    p1 = await run_project(service)
    v1_text = _system((await _work_prompts(service, "Writer-A", p1))[0])
    assert MARKER not in v1_text

    (appr,) = await _rows(service, ApprovalRow, ApprovalRow.kind == "revision")
    # the project is done, yet its revision approval can be decided (and only once)
    assert await service.decide(appr.id, True, DIRECTOR) == "System message v2 of @Writer-A is now active."
    assert "already approved" in await service.decide(appr.id, True, DIRECTOR)
    writer = await _member(service, "Writer-A")
    assert [(v.version, v.status) for v in await _rows(service, SystemMessageRow, SystemMessageRow.member_id == writer.id)] == [
        (1, "retired"), (2, "active")]
    assert "now works from system message v2" in (await _rows(service, MessageRow, MessageRow.persona == LEARNING_HANDLE))[-1].content

    p2 = await run_project(service)
    assert all(MARKER in _system(c) for c in await _work_prompts(service, "Writer-A", p2))
    # the PM sees the stored specialists' track records when it plans
    pm_plan = (await _rows(service, LLMCallRow, LLMCallRow.project_id == p2, LLMCallRow.purpose == "plan"))[-1]
    assert "Track record of the stored specialists" in pm_plan.request["messages"][1]["content"]
    assert "@Writer-A (writer): 2 tasks done, acceptance 100%" in pm_plan.request["messages"][1]["content"]
    assert "system message v2" in pm_plan.request["messages"][1]["content"]
    # the records come from grouped queries: each member's figures are its own
    members = [await _member(service, h) for h in ("Writer-A", "Researcher-A", "Analyst-A")]
    async with service.db.session() as s:
        batch = await service.records(s, [m.id for m in members])
    for m in members:
        done = await _rows(service, TaskRow, TaskRow.assignee_id == m.id, TaskRow.status == "done")
        calls = await _rows(service, LLMCallRow, LLMCallRow.member_id == m.id)
        assert batch[m.id]["tasks_done"] == len(done) > 0
        assert batch[m.id]["calls"] == len(calls) and batch[m.id]["tokens"] == sum(c.prompt_tokens + c.completion_tokens for c in calls)
    assert any(r["kind"] == "record" for r in pm_plan.retrieved)
    assert all(MARKER not in _system(c) for c in await _work_prompts(service, "Researcher-A", p2))

    history = (await service.run_command(AGENCY, "hq", DIRECTOR, "/specialist history Writer-A")).text
    assert "v1 (retired" in history and "v2 (active" in history

    result = await service.run_command(AGENCY, "hq", DIRECTOR, "/specialist rollback @Writer-A 1")
    assert "v3 (the text of v1) is now active" in result.text
    versions = await _rows(service, SystemMessageRow, SystemMessageRow.member_id == writer.id)
    assert [(v.version, v.status) for v in versions] == [(1, "retired"), (2, "retired"), (3, "active")]
    assert versions[2].text == versions[0].text and "rollback to v1" in versions[2].reason

    p3 = await run_project(service)
    for c in await _work_prompts(service, "Writer-A", p3):
        assert MARKER not in _system(c) and versions[0].text.strip() in _system(c)
    # the rollback stays: the script proposes again (the marker is gone), but nothing changes until approved
    assert (await _rows(service, SystemMessageRow, SystemMessageRow.member_id == writer.id))[-1].status == "proposed"

    assert "already" in await service.rollback_specialist(AGENCY, "Writer-A", 3, DIRECTOR)
    with pytest.raises(NotFoundError):
        await service.rollback_specialist(AGENCY, "Writer-A", 99, DIRECTOR)
    with pytest.raises(PermissionDeniedError):
        await service.rollback_specialist(AGENCY, "Writer-A", 1, ALICE)


async def test_a_rejected_revision_keeps_the_current_version(build: Any) -> None:
    service = await build(ScriptedModel({"Evaluation": evaluation()}))
    pid = await run_project(service)
    with pytest.raises(AgencyError, match="reason"):
        await service.approve(pid, DIRECTOR, approved=False)
    assert await service.approve(pid, DIRECTOR, approved=False, reason="too rigid") == "Revision v2 of @Writer-A rejected."
    writer = await _member(service, "Writer-A")
    versions = await _rows(service, SystemMessageRow, SystemMessageRow.member_id == writer.id)
    assert [(v.version, v.status) for v in versions] == [(1, "active"), (2, "rejected")]
    assert "too rigid" in versions[1].reason


async def test_auto_apply_activates_the_proposal_at_once(build: Any) -> None:
    service = await build(ScriptedModel({"Evaluation": evaluation()}), learning={"auto_apply": True})
    await run_project(service)
    writer = await _member(service, "Writer-A")
    versions = await _rows(service, SystemMessageRow, SystemMessageRow.member_id == writer.id)
    assert [(v.version, v.status) for v in versions] == [(1, "retired"), (2, "active")]
    assert await _rows(service, ApprovalRow, ApprovalRow.kind == "revision") == []
    post = (await _rows(service, MessageRow, MessageRow.content.contains("Evaluation of @Writer-A")))[-1]
    assert "Applied system message v2" in post.content and "/specialist rollback Writer-A 1" in post.content


async def test_a_new_proposal_supersedes_a_pending_one(build: Any) -> None:
    service = await build(ScriptedModel({"Evaluation": evaluation()}))
    await run_project(service)
    await run_project(service)
    writer = await _member(service, "Writer-A")
    versions = await _rows(service, SystemMessageRow, SystemMessageRow.member_id == writer.id)
    assert [(v.version, v.status) for v in versions] == [(1, "active"), (2, "rejected"), (3, "proposed")]
    assert "superseded by v3" in versions[1].reason
    approvals = await _rows(service, ApprovalRow, ApprovalRow.kind == "revision")
    assert [(a.subject, a.status) for a in approvals] == [("Writer-A v2", "superseded"), ("Writer-A v3", "pending")]


# -- on request ---------------------------------------------------------------------------------------
async def test_the_director_evaluates_from_hq(build: Any) -> None:
    model = ScriptedModel({"Evaluation": evaluation(propose_for=("Analyst-A",))})
    service = await build(model, learning={"enabled": False})
    pid = await run_project(service)
    await service.close()
    service = await build(model)

    result = await service.run_command(AGENCY, "hq", DIRECTOR, "/evaluate @Analyst-A")
    assert "Evaluated @Analyst-A: mean 4.0/5, 1 lesson(s) stored. System message v2 proposed" in result.text
    (ev,) = await _rows(service, EvaluationRow)
    assert ev.trigger == "director" and ev.project_id is None and ev.proposed_version == 2
    assert "all of its work" in model.calls("Evaluation")[-1].messages[-1]["content"]
    (appr,) = await _rows(service, ApprovalRow, ApprovalRow.kind == "revision")
    assert appr.project_id == pid  # attached to its latest project, posted in #hq
    (post,) = await _rows(service, MessageRow, MessageRow.approval_id == appr.id)
    assert post.address == "hq" and f"project #{pid}" in post.content
    assert "now active" in await service.decide(appr.id, True, DIRECTOR)

    show = (await service.run_command(AGENCY, "hq", DIRECTOR, "/specialist show Analyst-A")).text
    assert "System message v2" in show and "Latest evaluation (all work): mean 4.0/5" in show and "tasks done" in show
    assert "Collaboration: " in show and "Adaptability: " in show and show.index("Adaptability: ") < show.index("System message v2")

    with pytest.raises(NotFoundError):
        await service.run_command(AGENCY, "hq", DIRECTOR, "/evaluate @Nobody")
    with pytest.raises(AgencyError, match="evaluates LLM specialists"):
        await service.run_command(AGENCY, "hq", DIRECTOR, f"/evaluate @{LEARNING_HANDLE}")


async def test_the_learning_manager_acts_through_its_commands(build: Any) -> None:
    def lm_turn(req: Any) -> Any:
        if req.schema_name != "AgentTurn":
            return None
        return {"message": "I will look at the writer and note a general lesson.",
                "commands": ["/evaluate @Writer-A", "/lesson State your assumptions before your conclusions.", "/approve",
                             "/evaluate @Ghost"]}

    memory = SimpleMemory()
    model = ScriptedModel({"role:learning": lm_turn, "Evaluation": evaluation()})
    service = await build(model, memory=memory, learning={"enabled": False})
    await run_project(service)
    await service.close()
    service = await build(model, memory=memory)

    reply = await service.ask_learning_manager(AGENCY, "How is the writer doing?", DIRECTOR)
    lines = reply.splitlines()
    assert lines[0] == "I will look at the writer and note a general lesson."
    assert lines[1].startswith("/evaluate @Writer-A: mean 4.0/5, proposed v2")
    assert lines[2] == "Lesson stored for every member."
    assert "'/approve' refused" in lines[3] and "Director command" in lines[3]
    assert "'/evaluate @Ghost' refused" in lines[4]
    (ev,) = await _rows(service, EvaluationRow)
    assert ev.trigger == "learning"
    hits = await memory.search(1, "assumptions conclusions", kinds=["lesson"], where={"source": "agency"})
    assert [h.text for h in hits] == ["State your assumptions before your conclusions."]
    with pytest.raises(PermissionDeniedError):
        await service.ask_learning_manager(AGENCY, "hi", ALICE)


async def test_with_learning_off_the_commands_say_so(build: Any) -> None:
    service = await build(learning={"enabled": False})
    await run_project(service)
    assert await _rows(service, EvaluationRow) == []
    for cmd in ("/evaluate @Writer-A", "/specialist history Writer-A", "/specialist rollback Writer-A 1"):
        with pytest.raises(AgencyError, match="learning.enabled"):
            await service.run_command(AGENCY, "hq", DIRECTOR, cmd)


async def test_a_failed_evaluation_is_reported_not_raised(build: Any) -> None:
    def flaky(req: Any) -> Any:
        if req.schema_name == "Evaluation" and req.meta.get("handle") == "Reviewer-A":
            return "not json at all"
        return evaluation()(req)

    service = await build(ScriptedModel({"Evaluation": flaky}))
    pid = await run_project(service)
    assert len(await _rows(service, EvaluationRow, EvaluationRow.project_id == pid)) == 3
    summary = (await _rows(service, MessageRow, MessageRow.address == "hq", MessageRow.persona == LEARNING_HANDLE))[-1].content
    assert "evaluated 3 specialist(s)" in summary and "Not evaluated: @Reviewer-A" in summary


async def test_the_dry_run_simulator_plays_the_learning_manager(build: Any) -> None:
    service = await build()  # every answer simulated
    pid = await run_project(service)
    evals = await _rows(service, EvaluationRow, EvaluationRow.project_id == pid)
    assert len(evals) == 4 and all(e.evaluation["lessons"] and e.evaluation["scores"] for e in evals)
    proposed = await _rows(service, SystemMessageRow, SystemMessageRow.status == "proposed")
    assert len(proposed) == 4 and all("no model was called" in r.reason and "Lessons learned:" in r.text for r in proposed)
