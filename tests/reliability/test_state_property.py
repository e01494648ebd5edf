"""A property test of the state machine (issue 11): random sequences of the Director's decisions,
pause, resume, cancel, ``/budget`` and restarts, against scripted models whose specialists submit,
write drafts or report being blocked, whose reviews accept or ask for revisions and whose PM gives
guidance, reassigns or escalates, checking that

(a) only legal transitions happen: SQLite triggers that this test installs in its own database
    (not a migration) log every status written to projects, tasks, approvals and streams; every
    logged move must be one of ``agency.states``' machines (a self-move only where the machine has
    one), and every new row must start in its machine's initial state;
(b) whenever the engine goes idle, the project is done, cancelled, or waiting on a person: the
    Director (awaiting an approach or a plan, paused, blocked, or a pending approval); and from
    there the Director can always bring it to an end by approving and resuming.

Idle is observed, not timed: no model call in flight, no task worker alive, and the project's runner
finished or parked on its wake-up event with no wake-up pending.
"""
from __future__ import annotations

import asyncio
import gc
import os
import shutil
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import make_url, select

from agency.console import ConsoleChat
from agency.db.tables import ApprovalRow, EventRow, ProjectRow, TaskRow
from agency.errors import AgencyError
from agency.llm.scripted import ScriptedModel
from agency.service import AgencyService
from agency.settings import Settings
from agency.states import APPROVAL, PROJECT, STREAM, TASK, ProjectState
from tests.agency.plans import plan
from tests.conftest import AGENCY, DIRECTOR, model_set, wait_for

PLAN = plan([("T1", "research", "Researcher-A", []), ("T2", "production", "Writer-A", ["T1"])])
MACHINES = {"projects": PROJECT, "tasks": TASK, "approvals": APPROVAL, "streams": STREAM}
WAITING = {ProjectState.AWAITING_APPROACH, ProjectState.AWAITING_PLAN, ProjectState.PAUSED, ProjectState.BLOCKED}
TRIGGERS = ["CREATE TABLE transition_log (id INTEGER PRIMARY KEY, tbl TEXT NOT NULL, row_id INTEGER, old TEXT, new TEXT)"] + [
    stmt for t in MACHINES for stmt in (
        (f"CREATE TRIGGER log_{t}_update AFTER UPDATE OF status ON {t} BEGIN "
         f"INSERT INTO transition_log (tbl, row_id, old, new) VALUES ('{t}', NEW.id, OLD.status, NEW.status); END"),
        (f"CREATE TRIGGER log_{t}_insert AFTER INSERT ON {t} BEGIN "
         f"INSERT INTO transition_log (tbl, row_id, old, new) VALUES ('{t}', NEW.id, NULL, NEW.status); END"),
    )]


# -- what the models do, drawn per example -----------------------------------------------------------
@dataclass
class Script:
    work: dict[str, list[str]]  # per task: each first turn (of an attempt or a revision) submits, drafts or is blocked
    review: dict[str, list[str]]  # per task: each review accepts or asks for a revision
    pm: list[str]  # each escalation: guidance, a reassignment or the Director
    budget_tokens: int | None
    oversight: str
    steps: list[tuple[str, bool]]  # the Director's commands, each after the engine went idle or straight away
    seen: Counter = field(default_factory=Counter)

    def _next(self, kind: str, key: str, options: list[str], default: str) -> str:
        i = self.seen[(kind, key)]
        self.seen[(kind, key)] += 1
        return options[i] if i < len(options) else default

    def on_work(self, req: Any) -> Any:
        key = req.meta["task"]["key"]
        if req.meta["step"] > 0:
            return None  # the simulator submits
        what = self._next("work", key, self.work.get(key, []), "submit")
        if what == "draft":
            return {"message": f"Notes for {key} ({self.seen[('work', key)]}): still collecting material.", "commands": []}
        if what == "blocked":
            return {"message": "I am stuck.", "commands": [f"/blocked the sources for {key} are unreachable"]}
        return None

    def on_review(self, req: Any) -> Any:
        key = req.meta["task"]["key"]
        if self._next("review", key, self.review.get(key, []), "accept") == "revise":
            return {"decision": "revise", "notes": f"make {key} more concrete ({self.seen[('review', key)]})"}
        return None  # the simulator accepts

    def on_pm(self, req: Any) -> Any:
        what = self._next("pm", "", self.pm, "feedback")
        task = req.meta["task"]
        if what == "reassign":
            other = "Writer-A" if task["assignee"] != "Writer-A" else "Researcher-A"
            return {"action": "reassign", "assignee": other, "message": f"@{other}, please take {task['key']} over."}
        if what == "escalate":
            return {"action": "escalate", "message": f"{task['key']} needs the Director."}
        return {"action": "feedback", "message": f"Try {task['key']} again with what you have."}


# weighted by repetition: mostly approvals, a cancel now and then (it ends the example's interesting part)
COMMANDS = ["approve"] * 8 + ["reject", "pause", "resume", "budget"] * 2 + ["restart"] * 3 + ["cancel"]
scripts = st.builds(
    Script,
    work=st.fixed_dictionaries({k: st.lists(st.sampled_from(["submit", "draft", "blocked"]), max_size=3) for k in ("T1", "T2")}),
    review=st.fixed_dictionaries({k: st.lists(st.sampled_from(["accept", "revise"]), max_size=2) for k in ("T1", "T2")}),
    pm=st.lists(st.sampled_from(["feedback", "reassign", "escalate"]), max_size=2),
    budget_tokens=st.sampled_from([None, None, 2500, 4500]),
    oversight=st.sampled_from(["autonomous", "plan", "milestones", "every_task"]),
    steps=st.lists(st.tuples(st.sampled_from(COMMANDS), st.booleans()), max_size=8),
)


# -- observing the engine ------------------------------------------------------------------------------
def _parked(task: asyncio.Task[Any]) -> bool:
    """The runner waits on its wake-up event (``Engine._wait_wake``): a person has to act first."""
    coro: Any = task.get_coro()
    while coro is not None and hasattr(coro, "cr_frame"):
        if coro.cr_frame is not None and coro.cr_frame.f_code.co_name == "_wait_wake":
            return True
        coro = coro.cr_await
    return False


def _idle(svc: AgencyService, pid: int) -> bool:
    eng = svc.engine
    if eng.llm.in_model or any(not w.done() for w in eng.scheduler.workers.get(pid, {}).values()):
        return False
    runner = eng._runners.get(pid)
    if runner is None or runner.done():
        return True
    wake = eng._wake.get(pid)
    return _parked(runner) and not (wake is not None and wake.is_set())


async def quiesce(svc: AgencyService, pid: int) -> None:
    ok = 0

    def settled() -> bool:  # idle at two consecutive looks, a loop turn apart
        nonlocal ok
        ok = ok + 1 if _idle(svc, pid) else 0
        return ok >= 2

    await wait_for(settled, timeout=30, interval=0.002)


async def _project(svc: AgencyService, pid: int) -> tuple[ProjectRow, list[ApprovalRow]]:
    async with svc.db.session() as s:
        p = await s.get(ProjectRow, pid)
        pending = list((await s.execute(select(ApprovalRow).where(ApprovalRow.project_id == pid, ApprovalRow.status == "pending")
                                        .order_by(ApprovalRow.id))).scalars())
    assert p is not None
    return p, pending


async def check_waiting_or_finished(svc: AgencyService, pid: int) -> tuple[ProjectRow, list[ApprovalRow]]:
    """(b): the engine is idle; the project is finished or a person has something to do."""
    p, pending = await _project(svc, pid)
    if p.status in (ProjectState.DONE, ProjectState.CANCELLED):
        assert not pending, f"{p.status} with pending approvals {[(a.kind, a.subject) for a in pending]}"
    elif p.status == ProjectState.AWAITING_APPROACH:
        assert [a.kind for a in pending] == ["approach"], pending
    elif p.status == ProjectState.AWAITING_PLAN:
        assert [a.kind for a in pending] == ["plan"], pending
    elif p.status not in WAITING:  # new, planning, staffing, running, delivering: only a pending decision may hold it
        assert pending, f"idle in {p.status} with nothing for anyone to do:\n{await _explain(svc, pid)}"
    return p, pending


async def _explain(svc: AgencyService, pid: int) -> str:
    from tests.conftest import _explain as explain

    return await explain(svc, pid)


def _transition_log(db_file: Path) -> list[tuple[str, int, str | None, str]]:
    with sqlite3.connect(db_file) as c:
        return list(c.execute("SELECT tbl, row_id, old, new FROM transition_log ORDER BY id"))


def check_legal(log: list[tuple[str, int, str | None, str]]) -> None:
    """(a): every logged status write is a move of its machine; new rows start in the initial state."""
    bad = []
    for tbl, row_id, old, new in log:
        m = MACHINES[tbl]
        if old is None:
            if new != m.initial:
                bad.append(f"{tbl} #{row_id} created as {new}, not {m.initial}")
        elif not m.legal(old, new):
            bad.append(f"{tbl} #{row_id}: {old} -> {new}" + (" (a self-move the machine does not have)" if old == new else ""))
    assert not bad, "\n".join(bad)


# -- one example -------------------------------------------------------------------------------------------
class Run:
    def __init__(self, cfg: Settings, script: Script) -> None:
        self.cfg = cfg
        self.script = script
        self.model = ScriptedModel({"WorkPlan": [PLAN], "purpose:work": script.on_work, "purpose:review": script.on_review,
                                    "EscalationDecision": script.on_pm})
        self.svc: AgencyService | None = None

    async def open(self) -> AgencyService:
        self.svc = await AgencyService.create(self.cfg, ConsoleChat(quiet=True), models=model_set(self.model), upgrade=False)
        await self.svc.start()
        return self.svc

    @property
    def live(self) -> AgencyService:
        assert self.svc is not None
        return self.svc

    async def close(self) -> None:
        if self.svc is not None:
            svc, self.svc = self.svc, None
            await svc.close()

    async def command(self, pid: int, cmd: str) -> None:
        svc = self.live
        try:
            if cmd in ("approve", "reject"):
                a = await svc.engine.pending_approval(pid)
                if a is not None:
                    await svc.decide(a.id, cmd == "approve", DIRECTOR, reason=None if cmd == "approve" else "change the approach")
            elif cmd == "pause":
                await svc.pause(pid, DIRECTOR)
            elif cmd == "resume":
                await svc.resume(pid, DIRECTOR)
            elif cmd == "cancel":
                await svc.cancel(pid, DIRECTOR)
            elif cmd == "budget":
                await svc.set_budget(pid, 1.0, DIRECTOR)
            elif cmd == "restart":
                await self.close()
                await self.open()
        except AgencyError:
            pass  # a decision the project has moved past: refused, nothing changes

    async def finish(self, pid: int) -> ProjectRow:
        """The Director approves every gate and resumes whatever waits: the project ends."""
        svc = self.live
        for _ in range(40):
            await quiesce(svc, pid)
            p, pending = await check_waiting_or_finished(svc, pid)
            if p.status in (ProjectState.DONE, ProjectState.CANCELLED):
                return p
            budget = [a for a in pending if a.kind == "budget"]
            if budget:  # paused at the budget: raise it (a plain resume would stop at the budget again)
                await svc.decide(budget[0].id, True, DIRECTOR)
            elif p.status in (ProjectState.PAUSED, ProjectState.BLOCKED):
                await svc.resume(pid, DIRECTOR)  # decisions wait until the project runs again
            elif pending:
                await svc.decide(pending[0].id, True, DIRECTOR)
        raise AssertionError(f"project {pid} did not end:\n{await _explain(svc, pid)}")


async def scenario(cfg: Settings, db_file: Path, script: Script) -> None:
    run = Run(cfg, script)
    svc = await run.open()
    try:
        pid = (await svc.new_project(AGENCY, "Write a short guide to composting for city apartments", oversight=script.oversight,
                                     budget_tokens=script.budget_tokens, actor=DIRECTOR)).id
        for cmd, settle_first in script.steps:
            if settle_first:
                await quiesce(run.live, pid)
                await check_waiting_or_finished(run.live, pid)
            await run.command(pid, cmd)
        await quiesce(run.live, pid)
        await check_waiting_or_finished(run.live, pid)
        p = await run.finish(pid)
        svc = run.live
        async with svc.db.session() as s:
            tasks = list((await s.execute(select(TaskRow).where(TaskRow.project_id == pid))).scalars())
            crashes = [e.data for e in (await s.execute(select(EventRow).where(EventRow.kind == "blocked"))).scalars()
                       if "Internal error" in str(e.data.get("reason"))]
        assert not crashes, crashes
        assert all(t.completions <= 1 for t in tasks)  # no task completes twice
        if p.status == ProjectState.DONE:  # every task done once, or stopped by the Director at an escalation (marked missing)
            assert len(tasks) == 2 and all((t.status == "done" and t.completions == 1) or (t.status == "cancelled" and t.completions == 0)
                                           for t in tasks)
    finally:
        await run.close()
    check_legal(_transition_log(db_file))


_TEMPLATE: dict[str, Path] = {}


async def _template(cfg: Settings) -> Path:
    """A migrated database with the agency and the logging triggers, copied for every example."""
    svc = await AgencyService.create(cfg, None, models=model_set(ScriptedModel()))
    await svc.ensure_agency(AGENCY, "Test agency")
    await svc.db.dispose()
    db_file = Path(make_url(cfg.db_url).database or "")
    with sqlite3.connect(db_file) as c:
        for stmt in TRIGGERS:
            c.execute(stmt)
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db_file


# about 0.5 s an example; no shrinking, so a failure reports quickly (the example as drawn, and a blob to replay it)
# CI runs one fixed set of examples (a red CI means a change broke something, not that a new example was drawn);
# local runs keep drawing new ones, and print the blob to replay any failure
@hsettings(max_examples=30, deadline=None, database=None, print_blob=True, phases=(Phase.explicit, Phase.reuse, Phase.generate),
           derandomize=os.environ.get("CI") == "true",
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(script=scripts)
def test_only_legal_transitions_and_every_project_ends_or_waits_for_a_person(settings: Settings, tmp_path: Path, script: Script) -> None:
    if "db" not in _TEMPLATE or not _TEMPLATE["db"].exists():
        _TEMPLATE["db"] = asyncio.run(_template(settings.model_copy(update={"data_dir": tmp_path / "template"})))
    n = len(list(tmp_path.glob("example-*")))
    cfg = settings.model_copy(update={"data_dir": tmp_path / f"example-{n}"})
    db_file = Path(make_url(cfg.db_url).database or "")
    db_file.parent.mkdir(parents=True)
    shutil.copyfile(_TEMPLATE["db"], db_file)
    asyncio.run(scenario(cfg, db_file, script))
    gc.collect()  # what the KNOWN BUG left behind is reported within this test (and ignored), not in the next one


def test_the_triggers_log_what_they_should(settings: Settings, tmp_path: Path) -> None:
    """The log is real: an illegal write made behind the engine's back shows up as illegal."""
    db_file = asyncio.run(_template(settings.model_copy(update={"data_dir": tmp_path / "t"})))
    with sqlite3.connect(db_file) as c:
        c.execute("INSERT INTO projects (agency_id, objective, oversight, status, director_notes, budget_warned, approach_round, plan_round, "
                  "plan_attempt, dry_run, created_at, updated_at) SELECT id, 'x', 'plan', 'new', '[]', 0, 0, 0, 0, 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP FROM agencies")
        c.execute("UPDATE projects SET status = 'planning'")
        c.execute("UPDATE projects SET status = 'done'")
    log = _transition_log(db_file)
    assert [(t, o, n) for t, _, o, n in log] == [("projects", None, "new"), ("projects", "new", "planning"), ("projects", "planning", "done")]
    try:
        check_legal(log)
    except AssertionError as e:
        assert "projects #1: planning -> done" in str(e) and "new -> planning" not in str(e)
    else:
        raise AssertionError("an illegal move passed the check")
