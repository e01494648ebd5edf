"""A crash in the middle: the engine is cancelled at an arbitrary await point and a
new service on the database it left finishes the project, with no task completed
twice, no message lost or posted twice, and no recorded answer paid for again."""
from __future__ import annotations

import asyncio
import shutil
from collections import Counter

import pytest
from sqlalchemy import func, select

from agency.console import ConsoleChat
from agency.db.tables import LLMCallRow, MessageRow, TaskRow
from agency.llm.scripted import ScriptedModel
from tests.conftest import AGENCY, DIRECTOR, drive, wait_for

OBJECTIVE = "Prepare a checklist for opening a small bakery"


@pytest.mark.parametrize("crash_after_calls", [2, 5, 9, 12])
async def test_crash_and_resume(make_service, crash_after_calls: int) -> None:
    model1 = ScriptedModel(delay=0.005)
    chat1 = ConsoleChat(quiet=True)
    first = await make_service(model1, chat=chat1)
    info = await first.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    await wait_for(lambda: len(model1.requests) >= crash_after_calls, timeout=20)
    # crash: cancel everything wherever it is, no graceful drain
    await first.engine.stop()
    await first.dispatcher.stop()
    first._status_task.cancel()
    await asyncio.gather(first._status_task, return_exceptions=True)
    first.watchdog.stop()
    await first.db.dispose()
    assert (await _status(first, info.id)) != "done" or crash_after_calls >= 12

    # the restart sees what a dead process leaves: the files on disk. A copy of the data directory
    # keeps this process's SQLite lock bookkeeping for the abandoned connections out of the second run.
    restarted = first.settings.data_dir.parent / "restarted"
    shutil.copytree(first.settings.data_dir, restarted, ignore=shutil.ignore_patterns("*-shm"))
    model2 = ScriptedModel(delay=0.005)
    chat2 = ConsoleChat(quiet=True)
    second = await make_service(model2, chat=chat2, cfg=first.settings.model_copy(update={"data_dir": restarted}))
    assert await drive(second, info.id) == "done"
    await second.dispatcher.drain()

    async with second.db.session() as s:
        tasks = list((await s.execute(select(TaskRow).where(TaskRow.project_id == info.id))).scalars())
        rows = list((await s.execute(select(MessageRow).where(MessageRow.direction == "out"))).scalars())
        keys = list((await s.execute(select(LLMCallRow.call_key, func.count()).where(LLMCallRow.outcome.in_(("ok", "repaired"))).group_by(LLMCallRow.call_key))).all())
    assert len(tasks) == 5
    assert all(t.status == "done" and t.completions == 1 for t in tasks)
    # every message delivered exactly once across both processes (status edits aside)
    sent = Counter(m.id for m in chat1.sent + chat2.sent)
    assert all(n == 1 for n in sent.values()), [i for i, n in sent.items() if n > 1]
    posted = {r.id for r in rows if r.status == "delivered" and r.upsert_key is None}
    assert posted == {i for i in sent if i in {r.id for r in rows if r.upsert_key is None}}
    assert not [r.id for r in rows if r.status == "pending" and r.kind != "status"]
    # no model answer recorded twice under the same key: a recorded answer is reused, not paid again
    assert all(n == 1 for _, n in keys), [k for k, n in keys if n > 1]
    # the whole story is there once: one acceptance message per task, one deliverable
    accepted = Counter(r.content for r in rows if "criteria met" in r.content)
    assert sum(accepted.values()) == 5
    assert len([r for r in rows if r.kind == "deliverable"]) == 1


async def _status(service, pid: int) -> str:  # noqa: ANN001
    from agency.db.session import Database
    from agency.db.tables import ProjectRow

    db = Database(service.settings.db_url)
    async with db.session() as s:
        st = (await s.get(ProjectRow, pid)).status
    await db.dispose()
    return st


async def test_after_delivery_hooks_finish_after_a_restart(make_service) -> None:
    """Delivered, then the process died before memory and learning ran: the next start runs them."""
    from sqlalchemy import delete

    from agency.db.tables import EventRow

    first = await make_service()
    info = await first.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    assert await drive(first, info.id) == "done"
    await wait_for(lambda: _has_event(first, info.id))
    await first.close()
    async with first.db.session() as s:  # simulate the crash: the hooks never completed
        await s.execute(delete(EventRow).where(EventRow.kind == "after_delivery_done"))
        await s.commit()
    ran: list[int] = []

    async def hook(pid: int) -> None:
        ran.append(pid)

    second = await make_service(start=False)
    second.engine.on_project_done.append(hook)
    await second.start()
    await wait_for(lambda: ran == [info.id])
    await wait_for(lambda: _has_event(second, info.id))
    third = await make_service(start=False)
    third.engine.on_project_done.append(hook)
    await third.start()
    await asyncio.sleep(0.2)
    assert ran == [info.id]  # not run again once recorded


async def _has_event(service, pid: int) -> bool:  # noqa: ANN001
    from agency.db.tables import EventRow

    async with service.db.session() as s:
        return (await s.execute(select(EventRow.id).where(EventRow.project_id == pid, EventRow.kind == "after_delivery_done"))).first() is not None
