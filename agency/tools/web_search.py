"""The ``web_search`` tool: a real web search through the ``ddgs`` library.

Off by default. The library is optional (not a dependency of A-TEAMs) and is
imported only when a search runs; when search is off, the library is missing
or the network fails, the agent gets a clear message instead.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
from typing import Any, ClassVar

from pydantic import Field

from agency.tools.base import ToolArgs, ToolContext, ToolResult

log = logging.getLogger(__name__)

__all__ = ["WebSearchArgs", "WebSearchTool", "DISABLED_MESSAGE", "MISSING_MESSAGE"]

DISABLED_MESSAGE = (
    "web search is off; set tools.web_search = true in config.toml and pip install ddgs"
)
MISSING_MESSAGE = (
    "web search is on but the search library is not installed; pip install ddgs"
)


class WebSearchArgs(ToolArgs):
    query: str = Field(min_length=1, max_length=300, description="the search query")
    max_results: int = Field(default=5, ge=1, le=10, description="how many results to return")


def _load_ddgs() -> Any | None:
    """The ``DDGS`` class from ``ddgs`` (or its predecessor ``duckduckgo_search``), or None."""
    for module in ("ddgs", "duckduckgo_search"):
        try:
            return importlib.import_module(module).DDGS
        except (ImportError, AttributeError):
            continue
    return None


class WebSearchTool:
    """Searches the web (DuckDuckGo and other engines, via ``ddgs``)."""

    name = "web_search"
    description = "Search the web and return titles, links and snippets of the top results."
    Args: ClassVar[type[WebSearchArgs]] = WebSearchArgs
    roles: frozenset[str] = frozenset({"pm", "collaborator", "specialist"})

    def __init__(self, *, enabled: bool = False, timeout_seconds: float = 15.0) -> None:
        self.enabled = enabled
        self.timeout_seconds = timeout_seconds

    async def run(self, args: WebSearchArgs, ctx: ToolContext) -> ToolResult:
        if not self.enabled:
            return ToolResult.failure(self.name, DISABLED_MESSAGE)
        ddgs_cls = _load_ddgs()
        if ddgs_cls is None:
            return ToolResult.failure(self.name, MISSING_MESSAGE)

        def search() -> list[dict[str, Any]]:
            with ddgs_cls(timeout=int(self.timeout_seconds)) as client:
                return list(client.text(args.query, max_results=args.max_results) or [])

        try:
            results = await asyncio.wait_for(asyncio.to_thread(search), timeout=self.timeout_seconds + 5)
        except TimeoutError:
            return ToolResult.failure(self.name, f"web search timed out after {self.timeout_seconds:g} s; try again later")
        except Exception as exc:  # the library raises its own errors for rate limits and network failures
            log.warning("web_search failed for %s: %s: %s", ctx.member, type(exc).__name__, exc)
            return ToolResult.failure(
                self.name, f"web search failed ({type(exc).__name__}: {exc}); the network may be down or rate-limited"
            )
        if not results:
            return ToolResult(tool=self.name, ok=True, output=f"No web results for {args.query!r}.")
        return ToolResult(tool=self.name, ok=True, output=format_results(results))


def format_results(results: list[dict[str, Any]]) -> str:
    lines = []
    for i, r in enumerate(results, 1):
        title = str(r.get("title") or "").strip() or "(untitled)"
        href = str(r.get("href") or r.get("url") or "").strip()
        body = str(r.get("body") or r.get("snippet") or "").strip()
        lines.append(f"[{i}] {title}\n{href}\n{body}".rstrip())
    return "\n\n".join(lines)
