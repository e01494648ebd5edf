"""Real memory (Chroma on disk, local embedding, no network): lessons cross projects and restarts."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select

from agency.db.tables import ApprovalRow, LLMCallRow, MemberRow, SystemMessageRow
from agency.llm.scripted import ScriptedModel
from agency.memory import ChromaMemory
from tests.conftest import AGENCY, DIRECTOR
from tests.learning.helpers import LESSON, MARKER, evaluation, run_project


async def _writer_calls(service: Any, project_id: int) -> list[LLMCallRow]:
    async with service.db.session() as s:
        return list((await s.execute(
            select(LLMCallRow).join(MemberRow, MemberRow.id == LLMCallRow.member_id)
            .where(MemberRow.handle == "Writer-A", LLMCallRow.project_id == project_id, LLMCallRow.purpose == "work")
            .order_by(LLMCallRow.id))).scalars())


async def test_a_lesson_from_project_1_reaches_the_same_specialist_in_project_2_after_a_restart(build: Any, local_embedding: Any) -> None:
    model = ScriptedModel({"Evaluation": evaluation()})
    service = await build(model, chroma=True)
    assert isinstance(service.memory, ChromaMemory)
    p1 = await run_project(service)
    assert all(LESSON not in c.request["messages"][1]["content"] for c in await _writer_calls(service, p1))
    assert await service.memory.count(1, "lesson") == 4
    assert await service.memory.count(1, "work") == 6  # five outputs and the deliverable
    await service.close()

    # a new process: the same database and the same Chroma folder
    service = await build(ScriptedModel({"Evaluation": evaluation()}), chroma=True)
    assert await service.memory.count(1, "lesson") == 4
    async with service.db.session() as s:
        (appr,) = (await s.execute(select(ApprovalRow).where(ApprovalRow.kind == "revision"))).scalars().all()
    assert appr.status == "pending"
    assert "now active" in await service.decide(appr.id, True, DIRECTOR)

    p2 = await run_project(service, "Write a short guide to composting on a balcony")
    calls = await _writer_calls(service, p2)
    assert calls
    for c in calls:
        lessons = [r for r in c.retrieved if r["kind"] == "lesson"]
        assert lessons and lessons[0]["scope"] == "own lesson" and lessons[0]["source"] == "evaluation"
        assert isinstance(lessons[0]["distance"], float)
        assert LESSON in c.request["messages"][1]["content"]  # the memories block of the prompt
        assert MARKER in c.request["messages"][0]["content"]  # the approved system message
    # other specialists get their own lessons, not the writer's
    async with service.db.session() as s:
        others = (await s.execute(select(LLMCallRow).join(MemberRow, MemberRow.id == LLMCallRow.member_id)
                                  .where(MemberRow.handle == "Researcher-A", LLMCallRow.project_id == p2,
                                         LLMCallRow.purpose == "work"))).scalars().all()
    assert others and all(LESSON not in c.request["messages"][1]["content"] for c in others)
    assert any("keep notes short" in c.request["messages"][1]["content"] for c in others)

    found = (await service.run_command(AGENCY, "hq", DIRECTOR, "/memory search executive summary at the top")).text
    assert LESSON in found and "lesson" in found
    await service.close()

    # and once more: the versions are still there, the approved one active
    service = await build(ScriptedModel(), chroma=True)
    async with service.db.session() as s:
        rows = (await s.execute(select(SystemMessageRow).join(MemberRow, MemberRow.id == SystemMessageRow.member_id)
                                .where(MemberRow.handle == "Writer-A").order_by(SystemMessageRow.version))).scalars().all()
    assert [(r.version, r.status) for r in rows] == [(1, "retired"), (2, "active")]
    assert await service.memory.count(1, "work") == 12


async def test_knowledge_added_by_the_director_is_recalled_in_the_work(build: Any, local_embedding: Any) -> None:
    service = await build(ScriptedModel(), chroma=True)
    doc = ("City rules: Balcony compost bins must be closed and rodent-proof.\n\n"
           "Bokashi fermentation works indoors without smell and handles cooked food scraps.")
    result = await service.run_command(AGENCY, "hq", DIRECTOR, f"/resource add {doc}")
    assert "Added 1 passage(s)" in result.text
    assert "Added 2 passage(s) from rules.md" in await service.add_resource(AGENCY, "x " * 400 + "\n\n" + "y " * 400, "rules.md", DIRECTOR)
    found = (await service.run_command(AGENCY, "hq", DIRECTOR, "/memory search indoor fermentation of food scraps")).text
    assert "Bokashi" in found and "knowledge" in found

    pid = await run_project(service, "Write a guide to composting food scraps in a city apartment")
    async with service.db.session() as s:
        calls = (await s.execute(select(LLMCallRow).where(LLMCallRow.project_id == pid, LLMCallRow.purpose.in_(("work", "plan")))
                                 .order_by(LLMCallRow.id))).scalars().all()
    with_knowledge = [c for c in calls if any(r["kind"] == "knowledge" for r in c.retrieved)]
    assert with_knowledge, "no call recalled the Director's knowledge"
    assert any("Bokashi" in c.request["messages"][1]["content"] for c in with_knowledge)
