"""SQLite's write lock held elsewhere for longer than the busy timeout: the writes that time out
fail with "database is locked", and the engine redoes the step instead of blocking the project."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from agency.llm.scripted import ScriptedModel
from agency.settings import load_settings
from tests.conftest import AGENCY, DIRECTOR, drive, wait_for


async def test_a_lock_longer_than_the_busy_timeout_is_retried(make_service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("ATEAMS_CONFIG", str(tmp_path / "absent.toml"))
    cfg = load_settings(data_dir=tmp_path / "locked", memory={"enabled": False}, db_busy_timeout_seconds=0.2)
    model = ScriptedModel(delay=0.01)
    service = await make_service(model, cfg=cfg)
    info = await service.new_project(AGENCY, "Prepare a checklist for opening a small bakery", oversight="autonomous", actor=DIRECTOR)
    await wait_for(lambda: len(model.requests) >= 3)

    holder = sqlite3.connect(cfg.db_url.split("///", 1)[1], timeout=30, check_same_thread=False)
    # another writer takes the lock (from a thread: the event loop must go on to let the engine's
    # open transaction commit) and keeps it for five busy timeouts
    await asyncio.to_thread(holder.execute, "BEGIN IMMEDIATE")
    with caplog.at_level(logging.WARNING, logger="agency.engine"):
        await asyncio.sleep(1.0)
        holder.rollback()
        holder.close()
        assert await drive(service, info.id) == "done"
    assert any("a transient database error (OperationalError); retrying the step" in r.getMessage() for r in caplog.records)
    status = await service.status(info.id)
    assert status.project.status == "done" and not status.blockers
