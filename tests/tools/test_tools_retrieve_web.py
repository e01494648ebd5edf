"""The retrieve and web_search tools (no network: only the off/missing/fake paths)."""
from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from agency.ports import MemoryEntry, MemoryHit
from agency.tools import RetrieveTool, ToolContext, WebSearchTool
from agency.tools.web_search import DISABLED_MESSAGE, MISSING_MESSAGE

CTX = ToolContext(agency_id=42, member="Analyst-A", role="specialist", project_id=3)


class FakeMemory:
    def __init__(self, hits: list[MemoryHit] | None = None, fail: Exception | None = None) -> None:
        self.hits = hits or []
        self.fail = fail
        self.searches: list[dict[str, Any]] = []

    async def add(self, entries: list[MemoryEntry]) -> list[str]:
        return []

    async def search(self, agency_id, query, *, kinds=None, where=None, limit=5) -> list[MemoryHit]:
        self.searches.append({"agency_id": agency_id, "query": query, "kinds": kinds, "where": where, "limit": limit})
        if self.fail is not None:
            raise self.fail
        return self.hits[:limit]

    async def count(self, agency_id, kind=None) -> int:
        return len(self.hits)


async def test_retrieve_searches_the_callers_agency_and_formats_hits() -> None:
    hits = [
        MemoryHit(id="a", text="Our brand voice is plain and warm.", kind="knowledge", distance=0.1,
                  metadata={"source": "brand.md"}),
        MemoryHit(id="b", text="Cite sources for every number.", kind="lesson", distance=0.2,
                  metadata={"member": "Writer-B"}),
    ]
    mem = FakeMemory(hits)
    tool = RetrieveTool(mem)
    result = await tool.run(tool.Args(query="brand voice", limit=2), CTX)
    assert result.ok
    assert mem.searches == [{"agency_id": 42, "query": "brand voice", "kinds": ["knowledge", "work", "lesson"],
                             "where": None, "limit": 2}]
    assert result.output == (
        "[1] (knowledge, source: brand.md)\nOur brand voice is plain and warm.\n\n"
        "[2] (lesson, member: Writer-B)\nCite sources for every number."
    )


async def test_retrieve_without_hits_says_so() -> None:
    tool = RetrieveTool(FakeMemory())
    result = await tool.run(tool.Args(query="unicorns"), CTX)
    assert result.ok and result.output == "No passages in memory match 'unicorns'."


async def test_retrieve_without_memory_is_a_clear_failure() -> None:
    tool = RetrieveTool(None)
    result = await tool.run(tool.Args(query="anything"), CTX)
    assert not result.ok
    assert result.error == "this agency has no memory configured, so there is nothing to retrieve"


async def test_retrieve_reports_a_memory_failure(caplog: pytest.LogCaptureFixture) -> None:
    tool = RetrieveTool(FakeMemory(fail=RuntimeError("chroma is down")))
    result = await tool.run(tool.Args(query="anything"), CTX)
    assert not result.ok
    assert result.error == "the memory search failed: RuntimeError: chroma is down"


def test_retrieve_args_are_bounded() -> None:
    with pytest.raises(ValueError):
        RetrieveTool.Args(query="")
    with pytest.raises(ValueError):
        RetrieveTool.Args(query="x" * 501)
    with pytest.raises(ValueError):
        RetrieveTool.Args(query="x", limit=11)


async def test_web_search_is_off_by_default() -> None:
    tool = WebSearchTool()
    result = await tool.run(tool.Args(query="python"), CTX)
    assert not result.ok
    assert result.error == DISABLED_MESSAGE


async def test_web_search_without_the_library_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ddgs", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "duckduckgo_search", None)
    tool = WebSearchTool(enabled=True)
    result = await tool.run(tool.Args(query="python"), CTX)
    assert not result.ok
    assert result.error == MISSING_MESSAGE
    assert "pip install ddgs" in result.error


def fake_ddgs(results: list[dict[str, str]] | None = None, fail: Exception | None = None) -> types.ModuleType:
    module = types.ModuleType("ddgs")

    class DDGS:
        def __init__(self, timeout: int | None = None) -> None:
            self.timeout = timeout

        def __enter__(self) -> DDGS:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def text(self, query: str, max_results: int = 5) -> list[dict[str, str]]:
            if fail is not None:
                raise fail
            return (results or [])[:max_results]

    module.DDGS = DDGS  # type: ignore[attr-defined]
    return module


async def test_web_search_formats_results_from_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ddgs", fake_ddgs([
        {"title": "Python", "href": "https://www.python.org/", "body": "The official home."},
        {"title": "PyPI", "href": "https://pypi.org/", "body": "Packages."},
    ]))
    tool = WebSearchTool(enabled=True)
    result = await tool.run(tool.Args(query="python", max_results=1), CTX)
    assert result.ok
    assert result.output == "[1] Python\nhttps://www.python.org/\nThe official home."


async def test_web_search_network_failure_is_a_clear_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ddgs", fake_ddgs(fail=ConnectionError("no route to host")))
    tool = WebSearchTool(enabled=True)
    result = await tool.run(tool.Args(query="python"), CTX)
    assert not result.ok
    assert result.error is not None
    assert "web search failed (ConnectionError: no route to host)" in result.error
