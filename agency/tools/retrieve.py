"""The ``retrieve`` tool: search the agency's long-term memory."""
from __future__ import annotations

import logging
from typing import ClassVar

from pydantic import Field

from agency.ports import Memory, MemoryHit, MemoryKind
from agency.tools.base import ToolArgs, ToolContext, ToolResult

log = logging.getLogger(__name__)

__all__ = ["RetrieveArgs", "RetrieveTool"]

KINDS: list[MemoryKind] = ["knowledge", "work", "lesson"]
HIT_CHARS = 1200  # per hit, so a few long documents cannot crowd out the rest


class RetrieveArgs(ToolArgs):
    query: str = Field(min_length=1, max_length=500, description="what to look for, in plain words")
    limit: int = Field(default=5, ge=1, le=10, description="how many passages to return")


class RetrieveTool:
    """Searches the knowledge, project work and lessons of the caller's agency."""

    name = "retrieve"
    description = (
        "Search this agency's memory (uploaded knowledge, the work of earlier tasks and projects, "
        "lessons learned) and return the most relevant passages with their sources."
    )
    Args: ClassVar[type[RetrieveArgs]] = RetrieveArgs
    roles: frozenset[str] = frozenset({"pm", "collaborator", "specialist", "learning"})

    def __init__(self, memory: Memory | None) -> None:
        self.memory = memory

    async def run(self, args: RetrieveArgs, ctx: ToolContext) -> ToolResult:
        if self.memory is None:
            return ToolResult.failure(
                self.name, "this agency has no memory configured, so there is nothing to retrieve"
            )
        query = args.query.strip()
        if not query:
            return ToolResult.failure(self.name, "the query is empty; say what to look for")
        try:
            hits = await self.memory.search(ctx.agency_id, query, kinds=list(KINDS), limit=args.limit)
        except Exception as exc:  # a vector store failure must not end the agent's turn
            log.exception("retrieve: memory search failed for agency %s", ctx.agency_id)
            return ToolResult.failure(self.name, f"the memory search failed: {type(exc).__name__}: {exc}")
        if not hits:
            return ToolResult(tool=self.name, ok=True, output=f"No passages in memory match {query!r}.")
        return ToolResult(tool=self.name, ok=True, output=format_hits(hits))


def format_hits(hits: list[MemoryHit]) -> str:
    lines = []
    for i, hit in enumerate(hits, 1):
        meta = hit.metadata or {}
        where: list[str] = [hit.kind]
        for key in ("source", "member", "project_id", "stream"):
            value = meta.get(key)
            if value not in (None, ""):
                where.append(f"{key}: {value}")
        text = hit.text.strip()
        if len(text) > HIT_CHARS:
            text = text[:HIT_CHARS].rstrip() + " ..."
        lines.append(f"[{i}] ({', '.join(where)})\n{text}")
    return "\n\n".join(lines)
