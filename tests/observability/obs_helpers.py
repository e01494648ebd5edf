"""Helpers for the observability tests (scripted models with known token counts, plans with routing scores)."""
from __future__ import annotations

import socket
from typing import Any

from sqlalchemy import select

from agency.llm.base import ModelReply, ModelRequest
from agency.llm.scripted import ScriptedModel
from tests.agency.plans import plan

OBJECTIVE = "Write a short guide to composting for city apartments"
HIGH = {"reasoning": 5, "domain": 5, "language": 5, "quality": 5}
LOW = {"reasoning": 1, "domain": 2, "language": 1, "quality": 2}


def scored_plan(scores: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The diamond plan (T1, T2 -> T3) with routing scores per task."""
    p = plan([
        ("T1", "research", "Researcher-A", []),
        ("T2", "research", "Analyst-A", []),
        ("T3", "production", "Writer-A", ["T1", "T2"]),
    ])
    for t in p["tasks"]:
        if t["id"] in scores:
            t["scores"] = scores[t["id"]]
    return p


class FixedTokens(ScriptedModel):
    """A scripted model whose every reply reports the same token usage."""

    def __init__(self, scripts: dict[str, Any] | None = None, *, prompt: int = 100, completion: int = 50) -> None:
        super().__init__(scripts)
        self.prompt, self.completion = prompt, completion

    async def generate(self, request: ModelRequest) -> ModelReply:
        reply = await super().generate(request)
        return ModelReply(text=reply.text, model=reply.model, prompt_tokens=self.prompt, completion_tokens=self.completion, simulated=True)


async def rows(service: Any, row: Any, *where: Any) -> list[Any]:
    async with service.db.session() as s:
        return list((await s.execute(select(row).where(*where).order_by(row.id))).scalars())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
