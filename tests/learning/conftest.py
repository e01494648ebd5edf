"""Fixtures for memory-in-the-work and the Learning Manager: services built by ``agency.wiring``."""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agency.console import ConsoleChat
from agency.embeddings import LocalMiniLMEmbedding
from agency.llm.scripted import ScriptedModel
from agency.memory import SimpleMemory
from agency.service import AgencyService
from agency.settings import load_settings
from agency.wiring import build_service
from tests.conftest import AGENCY, model_set


@pytest.fixture(scope="session")
def local_embedding() -> LocalMiniLMEmbedding:
    """Load the local model once per test session (every instance shares it)."""
    ef = LocalMiniLMEmbedding()
    ef(["warm up"])
    return ef


@pytest.fixture
async def build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """``await build(model, chroma=False, **settings)``: a started service on ``tmp_path/data``.

    ``chroma=True`` uses the real memory the settings describe (Chroma on disk,
    local embedding); otherwise a SimpleMemory. Building again on the same data
    directory after ``await svc.close()`` is a restart.
    """
    monkeypatch.setenv("ATEAMS_CONFIG", str(tmp_path / "absent.toml"))
    made: list[AgencyService] = []
    closed: set[int] = set()

    async def factory(model: Any = None, *, chroma: bool = False, memory: Any = None, **overrides: Any) -> AgencyService:
        mem_cfg = {"enabled": chroma, **overrides.pop("memory", {})}
        settings = load_settings(data_dir=tmp_path / "data", memory=mem_cfg, **overrides)
        if memory is None and not chroma:
            memory = SimpleMemory()
        svc = await build_service(settings, ConsoleChat(quiet=True), models=model_set(model or ScriptedModel()), memory=memory)
        made.append(svc)
        close = svc.close

        async def close_once() -> None:
            if id(svc) not in closed:
                closed.add(id(svc))
                await close()

        svc.close = close_once  # type: ignore[method-assign]
        await svc.ensure_agency(AGENCY, "Test agency")
        await svc.start()
        return svc

    yield factory
    for svc in made:
        await svc.close()
