"""Faults from the model API, end to end: the real OpenAIModel and LLMClient against a local mock of
the chat-completions API (127.0.0.1) that fails a share of calls with timeouts, 429 + Retry-After,
500, dropped connections and invalid JSON. Three projects run at once:

- alpha: about 40% of its calls fail, never many in a row -> retried with backoff, completes;
- beta: a burst of consecutive 500s trips the circuit breaker (work waits, then resumes), and
  429s with Retry-After are honoured -> completes;
- gamma: the model fails every call after planning -> the call gives up after ``max_retries``
  and the project is blocked with the reason, stated to the Director.

Nothing hangs (every wait is bounded) and nothing crashes.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from agency.console import ConsoleChat
from agency.db.tables import LLMCallRow, MessageRow, ProjectRow, TaskRow
from agency.llm.base import ModelRequest
from agency.llm.client import ModelSet
from agency.llm.openai import OpenAIModel
from agency.llm.simulated import SimulatedModel
from agency.service import AgencyService
from agency.settings import load_settings
from bench.mock_openai import MockFault, MockOpenAIServer
from tests.conftest import AGENCY, DIRECTOR

OBJECTIVES = {
    "alpha": "Plan a community garden for the alpha district",
    "beta": "Write a guide to bicycle commuting for the beta office",
    "gamma": "Draft a reading list on urban trees for the gamma school",
}
TIMEOUT = 0.5
RETRY_AFTER = 0.3
_DEC = json.JSONDecoder()


def _block(text: str, title: str) -> Any:
    """The JSON value of a ``## title`` block of a prompt (see agency.roles.common.user_block)."""
    i = text.find(f"## {title}\n")
    if i < 0:
        return None
    try:
        return _DEC.raw_decode(text, i + len(title) + 4)[0]
    except ValueError:
        return None


class FaultyModelAPI:
    """The mock's handler: answers like the dry-run simulator (from the prompt text, since the task
    meta is not sent over HTTP), and injects each project's faults."""

    def __init__(self) -> None:
        self.sim = SimulatedModel()
        self.calls: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.log: list[tuple[float, str, str, str]] = []  # (time, project, fault, fingerprint of the messages)

    def _fault(self, project: str, n: int) -> tuple[str, MockFault | None]:
        if project == "alpha":  # 5 faults in every 12 calls, never two in a row
            kind = {1: "429", 3: "500", 5: "timeout", 7: "drop", 10: "invalid"}.get(n % 12)
        elif project == "beta":  # a burst of four 500s (the breaker trips at 3), and a few 429s
            kind = "500" if 3 <= n <= 6 else ("429" if n in (9, 14) else None)
        else:  # gamma: fine until the plan is written, then the model is down for good
            kind = "500" if n >= 2 else None
        fault = {
            None: None,
            "429": MockFault(status=429, retry_after=RETRY_AFTER),
            "500": MockFault(status=500),
            "timeout": MockFault(delay=TIMEOUT * 3),
            "drop": MockFault(drop=True),
            "invalid": MockFault(body='```json\n{"thinking": "cut off'),
        }[kind]
        return kind or "ok", fault

    async def __call__(self, body: dict[str, Any]) -> Any:
        text = json.dumps(body["messages"])
        project = next((k for k, v in OBJECTIVES.items() if v in text or k in text), "?")
        n = self.calls[project]
        self.calls[project] += 1
        kind, fault = self._fault(project, n)
        self.log.append((time.monotonic(), project, kind, hashlib.sha1(text.encode()).hexdigest()))
        if fault is not None:
            self.faults[project] += 1
            return fault
        schema = body["response_format"]["json_schema"]["name"]
        user = next((m["content"] for m in body["messages"] if m["role"] == "user"), "")
        meta: dict[str, Any] = {"objective": OBJECTIVES.get(project, "")}
        if schema == "AgentTurn":
            task = _block(user, "Your task")
            meta.update({"task": task, "purpose": "work"} if task else {"purpose": "answer", "question": user[:200]})
        elif schema == "Review":
            meta["task"] = _block(user, "Task")
        reply = await self.sim.generate(ModelRequest(messages=[], schema_name=schema, json_schema={}, meta=meta))
        return reply.text


@pytest.fixture
async def api() -> Any:
    handler = FaultyModelAPI()
    async with MockOpenAIServer(handler) as server:
        yield server, handler


async def test_every_project_completes_or_is_blocked_with_a_reason(api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server, handler = api
    monkeypatch.setenv("ATEAMS_CONFIG", str(tmp_path / "absent.toml"))
    settings = load_settings(
        data_dir=tmp_path / "data", memory={"enabled": False}, learning={"enabled": False},
        llm={"base_url": server.base_url, "mode": "json_schema", "timeout_seconds": TIMEOUT, "max_retries": 4,
             "retry_max_wait_seconds": 0.5, "circuit_failures": 3, "circuit_cooldown_seconds": 0.3},
    )
    model = OpenAIModel(model="mock-model", base_url=server.base_url, api_key="sk-local-test-key-000000000000", mode="json_schema", timeout=TIMEOUT)
    models = ModelSet({"fast": (model, "mock-model"), "strong": (model, "mock-model")}, "fast", simulated=False)
    service = await AgencyService.create(settings, ConsoleChat(quiet=True), models=models)
    try:
        await service.ensure_agency(AGENCY, "Test agency")
        await service.start()
        pids = {k: (await service.new_project(AGENCY, v, oversight="autonomous", actor=DIRECTOR)).id for k, v in OBJECTIVES.items()}

        async def settled() -> dict[str, str]:
            while True:
                states = {k: (await service.project(pid)).status for k, pid in pids.items()}
                if all(st in ("done", "blocked", "cancelled") for st in states.values()):
                    return states
                await asyncio.sleep(0.05)

        async with asyncio.timeout(90):  # bounded: a hang fails the test instead of stalling the suite
            states = await settled()
        await service.settle()

        assert states == {"alpha": "done", "beta": "done", "gamma": "blocked"}, (states, handler.calls, handler.faults)
        async with service.db.session() as s:
            gamma = await s.get(ProjectRow, pids["gamma"])
            tasks = list((await s.execute(select(TaskRow).where(TaskRow.project_id.in_([pids["alpha"], pids["beta"]])))).scalars())
            errors = list((await s.execute(select(LLMCallRow).where(LLMCallRow.outcome == "error"))).scalars())
            invalid = list((await s.execute(select(LLMCallRow).where(LLMCallRow.outcome == "invalid"))).scalars())
            notices = list((await s.execute(select(MessageRow).where(MessageRow.project_id == pids["gamma"], MessageRow.kind == "notice"))).scalars())
        # the reason is stated: in the project and to the Director
        assert gamma.error and "kept failing" in gamma.error and "HTTP 500" in gamma.error
        assert any("is blocked" in m.content and "kept failing" in m.content and "director" in (m.mentions or []) for m in notices)
        assert all(e.error for e in errors) and {e.project_id for e in errors} == {pids["gamma"]}
        # the completed projects: every task done exactly once, despite the faults
        assert len(tasks) == 10 and all(t.status == "done" and t.completions == 1 for t in tasks)
        # every kind of fault was injected and survived
        kinds = Counter(k for _, _, k, _ in handler.log)
        assert {"429", "500", "timeout", "drop", "invalid"} <= set(kinds), kinds
        assert invalid, "an invalid JSON reply goes through the repair round"
        assert handler.faults["alpha"] >= 5 and handler.faults["beta"] >= 4
        # a model that keeps failing is paused: the breaker opened at least once
        assert service.llm.breaker.trips >= 1
        # gamma gave up after max_retries + 1 attempts of one call, it did not burn retries forever
        assert handler.calls["gamma"] <= 2 + (settings.llm.max_retries + 1) * settings.engine.project_concurrency
        # Retry-After is honoured: the same request came back no sooner than the server asked
        by_print: dict[str, list[tuple[float, str]]] = defaultdict(list)
        for t, _, kind, fp in handler.log:
            by_print[fp].append((t, kind))
        gaps = [b[0] - a[0] for seq in by_print.values() for a, b in zip(seq, seq[1:]) if a[1] == "429"]
        assert gaps and min(gaps) >= RETRY_AFTER * 0.9, gaps
        # timeouts were cut at the client's timeout, not waited out
        assert not re.search(r"did not answer within", gamma.error or "")
    finally:
        await service.close()
        await model.aclose()
