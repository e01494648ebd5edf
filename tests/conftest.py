"""Shared fixtures. No test may reach the network: only loopback connections are allowed."""
from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agency.console import ConsoleChat
from agency.llm.client import ModelSet
from agency.llm.scripted import ScriptedModel
from agency.models import TERMINAL, Actor
from agency.service import AgencyService
from agency.settings import Settings, load_settings

DIRECTOR = Actor(name="Director", external_user_id="director-1", is_director=True)
AGENCY = "test-agency"
_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and self.family in (socket.AF_INET, socket.AF_INET6):
        if not (host.startswith("127.") or host in ("::1", "localhost")):
            raise OSError(f"network access to {host} is forbidden in tests")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    for name in ("OPENAI_API_KEY", "DISCORD_TOKEN", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("ATEAMS_CONFIG", str(tmp_path / "absent.toml"))
    # scripted work in these tests is a sentence or two, written to exercise other mechanisms; the minimum
    # size of a submission (default 200) has its own tests at the default (tests/agency/test_real_model_habits.py),
    # and the other checks of agency.checks (a plan to work, a restatement, no criterion touched) stay on here
    return load_settings(data_dir=tmp_path / "data", memory={"enabled": False}, engine={"min_output_chars": 20})


def model_set(model: Any) -> ModelSet:
    return ModelSet({"fast": (model, "gpt-4o-mini"), "strong": (model, "gpt-4o")}, "fast", simulated=True)


@pytest.fixture
async def make_service(settings: Settings) -> AsyncIterator[Callable[..., Any]]:
    made: list[AgencyService] = []

    async def factory(model: Any = None, *, chat: ConsoleChat | None = None, start: bool = True, cfg: Settings | None = None) -> AgencyService:
        svc = await AgencyService.create(cfg or settings, chat or ConsoleChat(quiet=True), models=model_set(model or ScriptedModel()))
        made.append(svc)
        await svc.ensure_agency(AGENCY, "Test agency")
        if start:
            await svc.start()
        return svc

    yield factory
    for svc in made:
        await svc.close()


async def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` (sync or async) until truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        v = predicate()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        if loop.time() > end:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def drive(service: AgencyService, pid: int, *, approve: bool = True, timeout: float = 30.0,
                decide: Callable[[int, str, str], Any] | None = None) -> str:
    """Run a project to a terminal (or blocked) state, answering each approval.

    ``decide(approval_id, kind, subject)`` may return (approved, reason, choice); default approves.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        info = await service.project(pid)
        if info.status in TERMINAL or info.status == "blocked":
            return info.status
        a = await service.engine.pending_approval(pid)
        if a is not None and approve:
            verdict = decide(a.id, a.kind, a.subject) if decide else (True, None, None)
            ok, reason, choice = verdict
            await service.decide(a.id, ok, DIRECTOR, reason=reason, choice=choice)
        if loop.time() > end:
            raise AssertionError(f"project {pid} stuck in {info.status}\n{await _explain(service, pid)}")
        await asyncio.sleep(0.02)


async def _explain(service: AgencyService, pid: int) -> str:
    """What a stuck project looks like: its tasks, its last events and the live asyncio tasks."""
    from sqlalchemy import select

    from agency.db.tables import EventRow, TaskRow

    async with service.db.session() as s:
        tasks = (await s.execute(select(TaskRow).where(TaskRow.project_id == pid).order_by(TaskRow.key))).scalars()
        events = (await s.execute(select(EventRow).where(EventRow.project_id == pid).order_by(EventRow.id.desc()).limit(12))).scalars()
        lines = [f"task {t.key}: {t.status} step={t.step} revision={t.revision} attempt={t.attempt}" for t in tasks]
        lines += [f"event {e.kind} {e.data}" for e in reversed(list(events))]
    lines += [f"asyncio: {t.get_name()} at {_where(t.get_coro())}" for t in asyncio.all_tasks() if not t.done()]
    return "\n".join(lines)


def _where(coro: Any) -> str:
    """The chain of awaits a suspended coroutine is parked in (innermost last)."""
    chain = []
    while coro is not None and hasattr(coro, "cr_frame"):
        f = coro.cr_frame
        if f is not None:
            chain.append(f"{f.f_code.co_name}:{f.f_lineno}")
        coro = getattr(coro, "cr_await", None)
    if coro is not None:
        chain.append(repr(coro)[:120])
    return " > ".join(chain)
