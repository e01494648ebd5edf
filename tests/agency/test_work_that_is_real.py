"""Work that is real (issue 13, item 3): a submission that is no work yet goes back to its specialist
without a review call; a plan must cover its required outputs and criteria; a plain approval (and so
``--auto-approve``) never accepts work that failed review, and the deliverable says what is missing."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from agency.checks import submission_problem, uncovered
from agency.console import ConsoleChat, run_console_project
from agency.db.tables import ApprovalRow, EventRow, MessageRow, ProjectRow, TaskRow
from agency.llm.base import ModelRequest
from agency.llm.scripted import ScriptedModel
from agency.schemas import WorkPlan
from tests.agency.plans import DIAMOND, plan
from tests.conftest import AGENCY, DIRECTOR, drive

OBJECTIVE = "Write a short guide to composting for city apartments"
TASK = {"key": "T1", "title": "Compare compost bins", "description": "Compare bokashi, worm and electric bins for small flats.",
        "success_criteria": ["names three kinds of bins", "gives a price for each"]}
REAL = (
    "Three kinds of bin suit a small flat. Bokashi bins ferment scraps with bran in two to three weeks; a two-bucket kit "
    "costs 30-60 USD and fits under a sink. Worm bins (vermicomposting) need 15-25 C and a 2:1 ratio of browns to greens; "
    "a stacking bin costs about 80 USD. Electric composters dry and grind scraps in a few hours and cost 300-500 USD. "
    "I will add odour-control tips if the Collaborator wants them, but the comparison above is complete: for renters "
    "with no balcony, bokashi is the cheapest start; worms give the best compost; electric units are fastest but need "
    "power and money. Prices are from three retailers' 2024 listings; they vary by region and season, so treat them "
    "as ranges rather than quotes, and check the size of each unit against the space you have before buying one."
)


def _engine(settings, **kw: Any):  # noqa: ANN001, ANN202
    return settings.model_copy(update={"engine": settings.engine.model_copy(update=kw)})


async def _rows(service, row, *where) -> list[Any]:  # noqa: ANN001
    async with service.db.session() as s:
        return list((await s.execute(select(row).where(*where).order_by(row.id))).scalars())


# -- the heuristics ------------------------------------------------------------------------------------------
def test_a_plan_to_work_is_not_work() -> None:
    for text in ("I will start working on it", "I will start gathering information on bins. Next I will compare prices.",
                 "Sure! Let me look into this and get back to you.", "I'm working on it now; stay tuned.",
                 "- I'll research the bins\n- Then I'll write the comparison"):
        problem = submission_problem(text, TASK, min_chars=200)
        assert problem and problem.startswith("it says what you will do"), (text, problem)


def test_real_work_passes_even_with_an_intention_in_it() -> None:
    assert len(REAL.split()) > 120 and "I will" in REAL
    assert submission_problem(REAL, TASK, min_chars=200) is None
    assert submission_problem(REAL, TASK, min_chars=200, objective=OBJECTIVE) is None


def test_a_restatement_a_short_text_and_an_off_topic_text_go_back() -> None:
    restated = "Compare compost bins: compare bokashi, worm and electric bins for small flats. Names three kinds of bins, gives a price for each."
    assert "restates the task" in submission_problem(restated, TASK, min_chars=0)
    assert "at least 200 characters" in submission_problem("Bokashi 30 USD, worms 80 USD, electric 400 USD.", TASK, min_chars=200)
    assert submission_problem("Bokashi 30 USD, worms 80 USD, electric 400 USD.", TASK, min_chars=20) is None
    poem = ("The sea at dawn is grey and wide; the gulls wheel over the harbour wall while fishing boats come home. "
            "Salt wind rattles the shutters, lanterns sway along the pier, and an old sailor hums a tune about "
            "distant islands, storms, whales and the lighthouse keeper's daughter who waited every winter.")
    assert "addresses neither the task's success criteria" in submission_problem(poem, TASK, min_chars=200)


def test_uncovered_outputs_are_named() -> None:
    wp = WorkPlan.model_validate(plan([("T1", "research", "Researcher-A", [])], outputs=[
        "a comparison of compost bins", "a table of prices", "a buying checklist"]))
    wp.tasks[0].title, wp.tasks[0].description = "Compare compost bins", "Compare the compost bins sold for flats."
    problems = uncovered(wp.outputs, wp.success_criteria, wp.tasks, wp.streams)
    assert len(problems) == 2
    assert "'a table of prices'" in problems[0] and "'a buying checklist'" in problems[1]
    # generic wording has nothing specific to cover: "a Markdown document", "answers the objective"
    assert uncovered(["a Markdown document"], ["answers the objective", "clear and complete"], wp.tasks, wp.streams) == []


# -- in the engine --------------------------------------------------------------------------------------------
async def test_a_plan_to_work_goes_back_without_a_review_call(make_service, settings) -> None:
    """ "I will start working on it" + /submit: back to the specialist with the reason, a turn used, no review."""
    def work(req: ModelRequest) -> Any:
        if req.meta["task"]["key"] != "T1":
            return None
        if req.meta["step"] == 0:
            return {"message": "On it.", "output": "I will start working on it", "commands": ["/submit T1"]}
        return {"message": "T1 done.", "output": REAL, "commands": ["/submit T1"]}

    model = ScriptedModel({"WorkPlan": [DIAMOND], "purpose:work": work})
    service = await make_service(model, cfg=_engine(settings, min_output_chars=200))
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    t1_work = [r for r in model.calls("AgentTurn", "work") if r.meta["task"]["key"] == "T1"]
    assert len(t1_work) == 2 and t1_work[1].meta["step"] == 1  # one turn used
    assert "/submit refused: it says what you will do (\"I will start working on it\")" in t1_work[1].messages[-1]["content"]
    reviews = [r for r in model.calls("Review") if r.meta["task"]["key"] == "T1"]
    assert len(reviews) == 1 and reviews[0].meta["output"] == REAL  # only the real work was reviewed
    returned = [e for e in await _rows(service, EventRow, EventRow.project_id == info.id, EventRow.kind == "submission_returned")]
    assert [e.data["key"] for e in returned] == ["T1"]
    notices = [m.content for m in await _rows(service, MessageRow, MessageRow.project_id == info.id, MessageRow.kind == "notice")]
    assert any("T1 was returned before review: it says what you will do" in n for n in notices)


async def test_a_one_task_plan_for_a_three_output_objective_goes_back_to_the_pm(make_service) -> None:
    outputs = ["a comparison of compost bins", "a table of prices", "a buying checklist"]
    thin = plan([("T1", "research", "Researcher-A", [])], outputs=outputs)
    thin["tasks"][0].update(title="Compare compost bins", description="Compare the compost bins sold for small flats.")
    whole = plan([("T1", "research", "Researcher-A", []), ("T2", "research", "Analyst-A", []),
                  ("T3", "production", "Writer-A", ["T1", "T2"])], outputs=outputs)
    whole["tasks"][0].update(title="Compare compost bins", description="Compare the compost bins sold for small flats.")
    whole["tasks"][1].update(title="Collect prices", description="Build a table of prices from three retailers.")
    whole["tasks"][2].update(title="Write the checklist", description="Write a buying checklist from T1 and T2.")
    model = ScriptedModel({"WorkPlan": [thin, whole]})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    retry = model.calls("WorkPlan")[1].messages[-1]["content"]
    assert "required output 'a table of prices' is produced by no task" in retry
    assert "required output 'a buying checklist' is produced by no task" in retry
    assert "a comparison of compost bins" not in retry  # covered by T1
    assert sorted(t.key for t in await _rows(service, TaskRow, TaskRow.project_id == info.id)) == ["T1", "T2", "T3"]


async def test_auto_approve_never_accepts_work_that_failed_review(make_service, tmp_path: Path) -> None:
    """The issue's run: T1's work keeps failing review, the PM escalates, and `--auto-approve` (the
    console's own loop, which approves every gate) used to accept it "as it is". Now a plain approval
    takes the recommended option: retry with the PM's guidance, then stop the task; the deliverable says
    what is missing, and no stream claims its criteria were met."""
    def review(req: ModelRequest) -> Any:
        if req.meta["task"]["key"] == "T1":
            return {"decision": "revise", "criteria_met": [False], "notes": "no facts yet, only intentions"}
        return None

    model = ScriptedModel({"WorkPlan": [DIAMOND], "purpose:review": review,
                           "EscalationDecision": [{"action": "escalate", "message": "Cite at least two facts about bins."}]})
    chat = ConsoleChat(quiet=True)
    service = await make_service(model, chat=chat, start=False)
    pid, status, path = await run_console_project(service, chat, OBJECTIVE, oversight="autonomous", auto_approve=True,
                                                  out_dir=tmp_path)
    assert status == "done"
    gates = await _rows(service, ApprovalRow, ApprovalRow.project_id == pid)
    assert [(a.kind, a.status, a.choice) for a in gates] == [("escalation", "approved", 1), ("escalation", "approved", 2)]
    assert len(gates[0].options) == 3 and "as it is" in gates[0].options[2]  # offered, never taken by a plain approval
    tasks = {t.key: t for t in await _rows(service, TaskRow, TaskRow.project_id == pid)}
    assert tasks["T1"].status == "cancelled" and tasks["T1"].completions == 0
    assert tasks["T3"].status == "cancelled"  # it needs T1
    assert tasks["T2"].status == "done"
    kinds = [e.kind for e in await _rows(service, EventRow, EventRow.project_id == pid)]
    assert "accepted_without_review" not in kinds and kinds.count("director_retry") == 1
    t1_prompts = [r.messages[-1]["content"] for r in model.calls("AgentTurn", "work") if r.meta["task"]["key"] == "T1"]
    assert any("- PM: Cite at least two facts about bins." in x for x in t1_prompts)  # the PM's guidance reached it
    md = path.read_text() if path else ""
    assert "## What is missing" in md and "T1 'Task T1' was not done" in md and "T3 'Task T3' was not done" in md
    texts = [m.content for m in await _rows(service, MessageRow, MessageRow.project_id == pid)]
    assert not any("research has met its criteria" in x or "production has met its criteria" in x for x in texts)
    assert any("Stream #research is closed without T1 (stopped)" in x for x in texts)


async def test_accepting_failed_work_takes_an_explicit_choice_and_is_marked(make_service) -> None:
    def review(req: ModelRequest) -> Any:
        if req.meta["task"]["key"] == "T1":
            return {"decision": "revise", "criteria_met": [False], "notes": "needs sources"}
        return None

    model = ScriptedModel({"WorkPlan": [DIAMOND], "purpose:review": review,
                           "EscalationDecision": [{"action": "escalate", "message": "The reviewer wants sources."}]})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)

    def decide(aid: int, kind: str, subject: str):  # noqa: ANN202
        return (True, None, 3)  # /approve 3: accept the output as it is

    assert await drive(service, info.id, decide=decide) == "done"
    t1 = [t for t in await _rows(service, TaskRow, TaskRow.project_id == info.id) if t.key == "T1"][0]
    assert t1.status == "done" and t1.completions == 1
    md = await service.deliverable(info.id)
    assert "## What is missing" in md and "T1 'Task T1' was accepted as it is by the Director; it did not pass review" in md
    assert "### T1: Task T1 (accepted without review)" in md
    deliver = model.calls("Deliverable")[0].messages[-1]["content"]
    assert "What is missing" in deliver and "do not fill it in from your own knowledge" in deliver


async def test_an_escalation_choice_out_of_range_is_refused(make_service) -> None:
    from agency.errors import AgencyError
    from tests.conftest import wait_for

    model = ScriptedModel({"WorkPlan": [DIAMOND],
                           "purpose:review": lambda req: {"decision": "revise", "notes": "no"} if req.meta["task"]["key"] == "T1" else None,
                           "EscalationDecision": [{"action": "escalate", "message": "stuck"}]})
    service = await make_service(model)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    appr = await wait_for(lambda: service.engine.pending_approval(info.id), timeout=60)
    with pytest.raises(AgencyError, match="Choose an option between 1 and 3"):
        await service.decide(appr.id, True, DIRECTOR, choice=7)
    assert (await service.engine.pending_approval(info.id)).id == appr.id  # nothing decided
    async with service.db.session() as s:
        assert (await s.get(ProjectRow, info.id)).status == "running"


async def test_a_dry_run_at_the_default_settings_returns_nothing(make_service, settings, tmp_path: Path) -> None:
    """The simulator's work (the offline demo) passes the checks at the production minimum size, and its
    plan covers its outputs: nothing is returned, every task is reviewed once."""
    from agency.settings import load_settings

    cfg = load_settings(data_dir=tmp_path / "data", memory={"enabled": False})
    assert cfg.engine.min_output_chars == 200
    model = ScriptedModel()
    service = await make_service(model, cfg=cfg)
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    kinds = [e.kind for e in await _rows(service, EventRow, EventRow.project_id == info.id)]
    assert "submission_returned" not in kinds and "plan_invalid" not in kinds
    assert len(model.calls("Review")) == len(await _rows(service, TaskRow, TaskRow.project_id == info.id)) == 5
