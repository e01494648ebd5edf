"""Issue 13: a pause or a cancel stops the project's model calls in flight (the request is cancelled, so the
server stops generating), and a resumed project makes them again and finishes."""
from __future__ import annotations

import asyncio

from agency.llm.scripted import ScriptedModel
from tests.agency.plans import DIAMOND
from tests.conftest import AGENCY, DIRECTOR, drive, wait_for

OBJECTIVE = "Write a short guide to composting for city apartments"


def _hanging_model(started: asyncio.Event, aborted: list[str], release: asyncio.Event) -> ScriptedModel:
    async def work(req):  # noqa: ANN001, ANN202 - a slow generation, until released
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            aborted.append(req.meta["task"]["key"])
            raise
        return None

    return ScriptedModel({"purpose:work": work, "WorkPlan": [DIAMOND]})


async def test_cancel_aborts_the_calls_in_flight(make_service) -> None:
    started, release, aborted = asyncio.Event(), asyncio.Event(), []
    service = await make_service(_hanging_model(started, aborted, release))
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    await asyncio.wait_for(started.wait(), 20)
    await service.cancel(info.id, DIRECTOR)
    await wait_for(lambda: aborted)  # the generation was cut, not waited for
    assert not service.engine.llm.in_model
    assert (await service.project(info.id)).status == "cancelled"


async def test_pause_aborts_them_and_resume_makes_them_again(make_service) -> None:
    started, release, aborted = asyncio.Event(), asyncio.Event(), []
    service = await make_service(_hanging_model(started, aborted, release))
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    await asyncio.wait_for(started.wait(), 20)
    await service.pause(info.id, DIRECTOR)
    await wait_for(lambda: aborted)
    release.set()  # from now on the model answers at once
    await service.resume(info.id, DIRECTOR)
    assert await drive(service, info.id) == "done"


async def test_a_directors_message_to_a_paused_project_is_acknowledged(make_service) -> None:
    started, release, aborted = asyncio.Event(), asyncio.Event(), []
    service = await make_service(_hanging_model(started, aborted, release))
    info = await service.new_project(AGENCY, OBJECTIVE, oversight="autonomous", actor=DIRECTOR)
    await asyncio.wait_for(started.wait(), 20)
    await service.pause(info.id, DIRECTOR)
    result = await service.handle_message(AGENCY, f"overview:{info.id}", DIRECTOR, "Please cover balcony composting too.")
    assert result is not None and "Noted" in result.text and not result.ephemeral
    assert (await service.project(info.id)).status == "paused"
    release.set()
