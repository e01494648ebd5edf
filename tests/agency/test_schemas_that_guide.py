"""Schemas that guide a real model (issue 13, item 1): every field the engine needs is required in the
schema sent, references the engine knows are per-call enums, the plan's size is capped, and a plan
retry is an edit of the previous plan.

A grammar-constrained model (llama.cpp, vLLM, Ollama) emits exactly the required fields of the schema
it is sent and nothing else; :func:`_required_only` plays that model: it strips from a reply every
field the sent schema does not require."""
from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from agency.db.tables import MemberRow, ProjectRow, SystemMessageRow, TaskRow
from agency.guided import plan_schema, review_schema, sent_schema, work_schema
from agency.llm.base import ModelRequest
from agency.llm.scripted import ScriptedModel
from agency.schemas import AgentTurn, Review, TaskSpec, WorkPlan
from tests.agency.plans import DIAMOND, plan
from tests.conftest import AGENCY, DIRECTOR, drive

OBJECTIVE = "Write a short guide to composting for city apartments"
CATALOGUE_ROLES = ["analyst", "engineer", "researcher", "reviewer", "writer"]


def _required_only(schema: dict[str, Any], data: Any) -> Any:
    """What a model constrained to ``schema`` that leaves out every optional field sends."""
    if isinstance(data, dict) and "properties" in schema:
        req = schema.get("required", [])
        return {k: _required_only(schema["properties"][k], v) for k, v in data.items() if k in req}
    if isinstance(data, list) and "items" in schema:
        return [_required_only(schema["items"], x) for x in data]
    return data


def _in_enum(schema: dict[str, Any], value: Any) -> bool:
    return "enum" not in schema or value in schema["enum"]


async def _rows(service, row, *where) -> list[Any]:  # noqa: ANN001
    async with service.db.session() as s:
        return list((await s.execute(select(row).where(*where).order_by(row.id))).scalars())


def test_every_field_the_engine_needs_is_required_in_what_is_sent() -> None:
    wp = sent_schema(WorkPlan)
    task = wp["properties"]["tasks"]["items"]
    assert set(task["required"]) == {"id", "title", "description", "stream", "assignee", "depends_on", "success_criteria", "scores"}
    assert set(task["properties"]["scores"]["required"]) == {"reasoning", "domain", "language", "quality"}
    assert set(wp["required"]) == {"summary", "outputs", "success_criteria", "streams", "specialists", "tasks"}
    assert "oversight" not in wp["properties"] and "milestones" not in wp["properties"]  # the engine never reads them
    assert "reuse" not in wp["properties"]["specialists"]["items"]["properties"]  # the engine knows which handles are stored
    # compact: no titles, no defaults, no $refs, no 60,000-character bounds to bloat a grammar
    text = json.dumps(wp)
    assert '"title": "' not in text.replace('"title": {', "") and '"default"' not in text and "$ref" not in text
    assert '"maxLength": 60000' not in json.dumps(sent_schema(AgentTurn))
    assert len(json.dumps(wp, separators=(",", ":"))) < len(json.dumps(WorkPlan.model_json_schema(), separators=(",", ":"))) * 0.6
    # the model's side is required too: a task without a stream or an assignee does not validate (the repair round says so)
    with pytest.raises(ValidationError, match="stream"):
        TaskSpec.model_validate({"id": "T1", "title": "Gather", "description": "Gather facts.", "assignee": "Researcher-A",
                                 "success_criteria": ["x"]})
    with pytest.raises(ValidationError, match="assignee"):
        TaskSpec.model_validate({"id": "T1", "title": "Gather", "description": "Gather facts.", "stream": "research",
                                 "success_criteria": ["x"]})
    turn = work_schema("T4", min_output_chars=200, tools=False)
    assert turn["required"] == ["message", "output", "commands"] and "tools" not in turn["properties"]
    assert "200 characters" in turn["properties"]["output"]["description"]


def test_per_call_builders_hold_the_enums_and_limits() -> None:
    schema = plan_schema(roles=["researcher", "writer", "researcher"], handles=["Researcher-A", "Writer-B"], people=["Dana"],
                         max_tasks=7, max_streams=2, max_specialists=3)
    spec = schema["properties"]["specialists"]
    assert spec["items"]["properties"]["role"]["enum"] == ["researcher", "writer"]
    assert spec["items"]["properties"]["handle"]["enum"] == ["Researcher-A", "Writer-B"]
    assert spec["maxItems"] == 3 and schema["properties"]["streams"]["maxItems"] == 2
    task = schema["properties"]["tasks"]
    assert task["maxItems"] == 7
    assert task["items"]["properties"]["assignee"]["enum"] == ["Researcher-A", "Writer-B", "Dana"]
    assert task["items"]["properties"]["depends_on"]["items"]["pattern"] == task["items"]["properties"]["id"]["pattern"]
    review = review_schema("T3", 2)
    assert review["properties"]["task"] == {"enum": ["T3"]}
    assert review["properties"]["criteria_met"]["minItems"] == review["properties"]["criteria_met"]["maxItems"] == 2
    assert set(review["required"]) == {"task", "decision", "criteria_met", "notes", "message"}


async def test_the_schemas_sent_for_a_plan_and_a_review_hold_the_per_call_enums(make_service) -> None:
    model = ScriptedModel()
    service = await make_service(model)
    first = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, first.id) == "done"
    cfg = service.settings.engine

    sent = model.calls("WorkPlan")[0]
    spec = sent.json_schema["properties"]["specialists"]
    assert spec["items"]["properties"]["role"]["enum"] == CATALOGUE_ROLES
    handles = spec["items"]["properties"]["handle"]["enum"]
    assert {"Researcher-A", "Writer-A", "Analyst-A", "Reviewer-A", "Engineer-A"} <= set(handles)  # free handles, one set per role
    tasks = sent.json_schema["properties"]["tasks"]
    assert tasks["maxItems"] == cfg.plan_max_tasks and spec["maxItems"] == cfg.plan_max_specialists
    assert tasks["items"]["properties"]["assignee"]["enum"] == handles
    assert sent.json_schema["properties"]["streams"]["maxItems"] == cfg.plan_max_streams
    assert json.dumps(sent.json_schema, separators=(",", ":")) in sent.messages[0]["content"]  # the prompt shows the same schema

    # a second project: the stored specialists are offered for reuse, their handles no longer "free"
    second = await service.new_project(AGENCY, OBJECTIVE + " and balconies", oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, second.id) == "done"
    again = model.calls("WorkPlan")[1].json_schema["properties"]["specialists"]["items"]["properties"]["handle"]["enum"]
    assert again[:4] == ["Researcher-A", "Analyst-A", "Writer-A", "Reviewer-A"]  # stored first, then free ones
    assert "Researcher-B" in again and again.count("Researcher-A") == 1

    reviews = [r for r in model.calls("Review") if r.meta["task"]["key"] == "T2"]
    assert reviews, "T2 was reviewed"
    props = reviews[0].json_schema["properties"]
    assert props["task"] == {"enum": ["T2"]}
    assert props["criteria_met"]["minItems"] == len(reviews[0].meta["task"]["success_criteria"])
    work = [r for r in model.calls("AgentTurn", "work") if r.meta["task"]["key"] == "T2"][0]
    assert "output" in work.json_schema["required"] and "/submit T2" in work.json_schema["properties"]["output"]["description"]


async def test_a_model_that_leaves_out_every_optional_field_still_plans(make_service) -> None:
    """A constrained model sends only what is required (and fills the definitions of catalogue roles, as
    the real PM did): the plan validates at once and runs, and every identity stays whole. Before,
    `stream` and `assignee` were optional and left empty on every task of 5 of 5 real plans, and the
    definition's one line replaced the specialist's system message."""
    full = plan([("T1", "research", "Researcher-A", []), ("T2", "production", "Writer-A", ["T1"])])
    full["thinking"] = "long reasoning a small model would rather skip"
    full["oversight"] = "autonomous"
    for t in full["tasks"]:  # what a constrained model must write: scores are required
        t["scores"] = {"reasoning": 2, "domain": 3, "language": 3, "quality": 3}
    sent: list[dict[str, Any]] = []

    def pm(req: ModelRequest) -> dict[str, Any]:
        reply = _required_only(req.json_schema, full)
        for x in reply["specialists"]:  # ... but fills the optional definition of a catalogue role, as a real PM did
            x["definition"] = {"system_message": "Research should be thorough and factual."}
        sent.append(reply)
        return reply

    model = ScriptedModel({"WorkPlan": pm})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    assert len(model.calls("WorkPlan")) == 1  # valid at the first attempt
    reply = sent[0]
    assert "thinking" not in reply and "oversight" not in reply and all("reuse" not in x for x in reply["specialists"])
    schema = model.calls("WorkPlan")[0].json_schema
    task_schema = schema["properties"]["tasks"]["items"]["properties"]
    for t in reply["tasks"]:
        assert t["stream"] and t["assignee"] and "scores" in t
        assert _in_enum(task_schema["assignee"], t["assignee"])
    for x in reply["specialists"]:
        props = schema["properties"]["specialists"]["items"]["properties"]
        assert _in_enum(props["role"], x["role"]) and _in_enum(props["handle"], x["handle"])
    tasks = await _rows(service, TaskRow, TaskRow.project_id == info.id)
    assert sorted((t.key, t.status) for t in tasks) == [("T1", "done"), ("T2", "done")]
    members = {m.handle: m for m in await _rows(service, MemberRow, MemberRow.kind == "specialist")}
    for handle in ("Researcher-A", "Writer-A"):  # identities stay whole; the PM's line is a note after them
        text = (await _rows(service, SystemMessageRow, SystemMessageRow.member_id == members[handle].id))[0].text
        assert text.startswith(f"You are {handle}, a ") and "You are expected to:" in text
        assert text.rstrip().endswith("Notes from the PM:\nResearch should be thorough and factual.")


async def test_a_plan_retry_is_an_edit_of_the_previous_plan(make_service) -> None:
    cyclic = plan([("T1", "research", "Researcher-A", ["T2"]), ("T2", "research", "Researcher-A", ["T1"])])
    model = ScriptedModel({"WorkPlan": [cyclic, DIAMOND]})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    retry = model.calls("WorkPlan")[1].messages
    assert [m["role"] for m in retry] == ["system", "user", "assistant", "user"]
    previous = json.loads(retry[2]["content"])
    assert [t["id"] for t in previous["tasks"]] == ["T1", "T2"] and previous["tasks"][0]["depends_on"] == ["T2"]
    assert "dependency cycle: T1 -> T2 -> T1" in retry[3]["content"]
    assert "Edit your plan above" in retry[3]["content"] and "corrected plan" in retry[3]["content"]
    assert model.calls("WorkPlan")[1].meta["previous_plan"]["tasks"][1]["depends_on"] == ["T1"]


async def test_the_rejected_plan_is_stored_with_its_problems(make_service) -> None:
    cyclic = plan([("T1", "research", "Researcher-A", ["T1"])])
    model = ScriptedModel({"WorkPlan": [cyclic]})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "blocked"
    async with service.db.session() as s:
        p = await s.get(ProjectRow, info.id)
        stored = p.plan_problems
    assert "task T1 depends on itself" in stored["problems"]
    assert stored["plan"]["tasks"][0]["depends_on"] == ["T1"]
    # every retry edited the plan before it (a restart would read it back from the row)
    for req in model.calls("WorkPlan")[1:]:
        assert json.loads(req.messages[2]["content"])["tasks"][0]["id"] == "T1"


async def test_a_plan_bigger_than_the_settings_allow_goes_back(make_service, settings) -> None:
    cfg = settings.model_copy(update={"engine": settings.engine.model_copy(update={"plan_max_tasks": 2})})
    big = plan([("T1", "research", "Researcher-A", []), ("T2", "research", "Analyst-A", []), ("T3", "production", "Writer-A", ["T1"])])
    small = plan([("T1", "research", "Researcher-A", []), ("T2", "production", "Writer-A", ["T1"])])
    model = ScriptedModel({"WorkPlan": [big, small]})
    service = await make_service(model, cfg=cfg)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    calls = model.calls("WorkPlan")
    assert calls[0].json_schema["properties"]["tasks"]["maxItems"] == 2
    assert "the plan has 3 tasks; at most 2 are allowed (engine.plan_max_tasks)" in calls[1].messages[-1]["content"]


async def test_the_work_product_travels_in_its_own_field(make_service) -> None:
    body = ("Bokashi bins ferment food scraps with bran in two to three weeks and fit under a sink; worm bins need "
            "15-25 C and a 2:1 ratio of browns to greens; electric composters dry and grind scraps in hours. ") * 2

    def work(req: ModelRequest) -> Any:
        if req.meta["task"]["key"] == "T1":
            return {"message": "Here is T1, background on the three kinds of bins.", "output": body, "commands": ["/submit T1"]}
        return None

    model = ScriptedModel({"WorkPlan": [DIAMOND], "purpose:work": work})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    t1 = [t for t in await _rows(service, TaskRow, TaskRow.project_id == info.id) if t.key == "T1"][0]
    assert t1.output == body.strip()  # the output field, not the chat note
    review = [r for r in model.calls("Review") if r.meta["task"]["key"] == "T1"][0]
    assert "Bokashi bins ferment" in review.messages[-1]["content"]
    from agency.db.tables import MessageRow

    thread = [m.content for m in await _rows(service, MessageRow, MessageRow.project_id == info.id, MessageRow.persona == "Researcher-A")]
    assert "Here is T1, background on the three kinds of bins." in thread and body.strip() in thread  # both in the record of work


def test_old_scripted_replies_still_validate() -> None:
    """Leniency on the way back: a review without `task`, a turn without `output` (scripted tests, old records)."""
    assert Review.model_validate({"decision": "accept"}).task == ""
    assert AgentTurn.model_validate({"message": "x", "commands": ["/submit T1 the text"]}).output == ""


async def test_stored_members_keep_their_system_messages(make_service) -> None:
    service = await make_service(ScriptedModel({"WorkPlan": [DIAMOND]}))
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    members = {m.handle: m for m in await _rows(service, MemberRow, MemberRow.kind == "specialist")}
    for handle in ("Researcher-A", "Analyst-A", "Writer-A"):
        sm = (await _rows(service, SystemMessageRow, SystemMessageRow.member_id == members[handle].id))[0]
        assert sm.text.startswith(f"You are {handle}, a ")
