"""Stopping the engine never interrupts a database write: a task waiting on a model is cancelled
at once, every other task ends at its next step, and the project stays resumable."""
from __future__ import annotations

import logging

import pytest

from agency.llm.scripted import ScriptedModel
from tests.conftest import AGENCY, DIRECTOR, wait_for


async def test_stop_cancels_only_tasks_waiting_on_a_model(make_service, caplog: pytest.LogCaptureFixture) -> None:
    model = ScriptedModel(delay=0.01)
    service = await make_service(model)
    info = await service.new_project(AGENCY, "Prepare a checklist for opening a small bakery", oversight="autonomous", actor=DIRECTOR)
    await wait_for(lambda: len(model.requests) >= 3)  # tasks are running
    model.delay = 120.0  # every call from now on hangs on the model
    await wait_for(lambda: len(service.llm.in_model) > 0)
    waiting = set(service.llm.in_model)

    with caplog.at_level(logging.WARNING, logger="agency.engine"):
        await service.engine.stop()
    assert all(t.done() for t in service.engine._runners.values())
    assert all(t.cancelled() or t.done() for t in waiting) and not service.llm.in_model
    assert not [r for r in caplog.records if "did not stop" in r.getMessage()]  # nothing needed a forced cancel
    assert (await service.project(info.id)).status == "running"  # resumable: the next start picks it up
