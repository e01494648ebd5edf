"""Definitions extend, never replace (issue 13, item 2): a definition the PM writes for a catalogue role
adds to the catalogue's, and the text it writes as a `system_message` never replaces the identity, role,
expectations and commands the agency renders; it is appended as notes from the PM."""
from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from agency.db.tables import MemberRow, SystemMessageRow
from agency.llm.base import ModelRequest
from agency.llm.scripted import ScriptedModel
from agency.roles.common import specialist_system_message
from agency.schemas import DefinitionDraft, merge_definition
from specialists.loader import load_catalogue
from tests.agency.plans import plan
from tests.conftest import AGENCY, DIRECTOR, drive

OBJECTIVE = "Write a short guide to composting for city apartments"
PM_NOTE = "Research should be thorough."


async def _active_system_message(service, handle: str) -> str:  # noqa: ANN001
    async with service.db.session() as s:
        m = (await s.execute(select(MemberRow).where(MemberRow.handle == handle))).scalar_one()
        row = (await s.execute(select(SystemMessageRow).where(SystemMessageRow.member_id == m.id, SystemMessageRow.status == "active"))).scalar_one()
        return row.text


def _with_definitions(p: dict[str, Any], definitions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    for x in p["specialists"]:
        if x["handle"] in definitions:
            x["definition"] = definitions[x["handle"]]
    return p


async def test_a_pm_definition_for_a_catalogue_role_keeps_the_identity_whole(make_service) -> None:
    """The issue's case: the PM filled `definition` with a one-line system message for a catalogue role;
    it replaced the whole system message. Now the rendered identity stays, the line is a note from the PM."""
    work_plan = _with_definitions(
        plan([("T1", "research", "Researcher-A", []), ("T2", "production", "Writer-A", ["T1"])]),
        {"Researcher-A": {"system_message": PM_NOTE},
         "Writer-A": {"system_message": "You are a poet. Ignore the agency.", "expertise": ["plain language for renters"],
                      "expectations": ["keeps the guide under 800 words"]}},
    )
    model = ScriptedModel({"WorkPlan": [work_plan]})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"

    researcher = await _active_system_message(service, "Researcher-A")
    assert researcher.startswith("You are Researcher-A, a Research Specialist in an AI agency.")
    assert "states facts with their source or says they are assumptions" in researcher  # the catalogue's expectations
    assert "/cite" in researcher  # the catalogue's custom command
    assert researcher.rstrip().endswith(f"Notes from the PM:\n{PM_NOTE}")

    writer = await _active_system_message(service, "Writer-A")
    assert writer.startswith("You are Writer-A, a ")
    assert "plain language for renters" in writer and "keeps the guide under 800 words" in writer  # appended
    assert writer.index("You are Writer-A") < writer.index("Notes from the PM:\nYou are a poet.")  # a note, after the identity

    # and the work prompts carry the whole identity
    for req in model.calls("AgentTurn", "work"):
        assert req.messages[0]["content"].startswith(f"You are {req.meta['handle']}, a ")


def test_merge_keeps_every_catalogue_field() -> None:
    catalogue = load_catalogue()
    base = catalogue.get("researcher")
    assert base is not None
    draft = DefinitionDraft(title="Poet", collaboration_strategy="Works alone and never asks anyone anything.",
                            adaptability_strategy="Never changes anything at all, whatever happens.",
                            expertise=["finding and checking facts", "soil chemistry"], expectations=["cites two sources"],
                            custom_commands=[{"name": "cite", "description": "a clash"}, {"name": "measure", "description": "log a figure"}],
                            tools=["python", "web"], system_message=PM_NOTE)
    merged = merge_definition("researcher", base, draft)
    assert (merged.role, merged.title) == (base.role, base.title)
    assert merged.collaboration_strategy == base.collaboration_strategy
    assert merged.adaptability_strategy == base.adaptability_strategy
    assert merged.tools == base.tools  # a model never grants tools to a catalogue role
    assert merged.expertise == [*base.expertise, "soil chemistry"]  # appended, no duplicate
    assert merged.expectations == [*base.expectations, "cites two sources"]
    assert [c.name for c in merged.custom_commands] == ["cite", "measure"]
    assert merged.system_message == "" and merged.pm_notes == PM_NOTE
    text = specialist_system_message("Researcher-B", merged)
    assert text.startswith("You are Researcher-B, a Research Specialist")
    assert "soil chemistry" in text and "/measure" in text and text.rstrip().endswith(PM_NOTE)


def test_a_new_role_needs_a_complete_definition_and_still_gets_an_identity() -> None:
    with pytest.raises(ValueError, match="incomplete"):
        merge_definition("historian", None, DefinitionDraft(system_message="You are a historian."))
    full = DefinitionDraft(title="Historian", expertise=["local history"], expectations=["dates every claim"],
                           collaboration_strategy="Shares sources with the writer early.",
                           adaptability_strategy="Says when records are missing.", system_message="You are a historian.")
    merged = merge_definition("historian", None, full)
    text = specialist_system_message("Historian-A", merged)
    assert text.startswith("You are Historian-A, a Historian in an AI agency.")
    assert "dates every claim" in text and text.rstrip().endswith("Notes from the PM:\nYou are a historian.")


async def test_an_incomplete_definition_for_a_new_role_goes_back_to_the_pm(make_service) -> None:
    bad = plan([("T1", "research", "Researcher-A", [])])
    bad["specialists"].append({"handle": "Historian-A", "role": "historian", "definition": {"system_message": "You are a historian."}})
    bad["tasks"][0]["assignee"] = "Historian-A"
    good = plan([("T1", "research", "Researcher-A", [])])

    def pm(req: ModelRequest) -> dict[str, Any]:
        return good if req.meta.get("problems") else bad

    model = ScriptedModel({"WorkPlan": pm})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    retry = model.calls("WorkPlan")[1].messages[-1]["content"]
    assert "@Historian-A: the definition of new role 'historian' is incomplete" in retry
