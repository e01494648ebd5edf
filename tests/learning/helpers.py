"""Helpers: run a project to its end; scripted Learning-Manager answers."""
from __future__ import annotations

import asyncio
from typing import Any

from agency.llm.base import ModelRequest
from agency.service import AgencyService
from tests.conftest import AGENCY, DIRECTOR, drive

LESSON = "Open every document with a one-paragraph executive summary."
MARKER = "REVISED: lead with the executive summary, then the details."


def evaluation(propose_for: tuple[str, ...] = ("Writer-A",)) -> Any:
    """An ``Evaluation`` script: Writer-A gets LESSON, and a revision adding MARKER while its prompt lacks it."""

    def answer(req: ModelRequest) -> dict[str, Any] | None:
        if req.schema_name != "Evaluation":
            return None
        meta = req.meta
        handle = meta["handle"]
        current = meta.get("system_message") or ""
        propose = handle in propose_for and MARKER not in current
        return {
            "thinking": "scripted",
            "scores": [{"expectation": e, "score": 4, "evidence": "every review accepted"} for e in meta.get("expectations", [])],
            "strengths": ["delivered on time"],
            "weaknesses": ["buries the conclusion"] if handle == "Writer-A" else [],
            "lessons": [LESSON] if handle == "Writer-A" else [f"As a {meta.get('role')}, keep notes short and sourced."],
            "propose_revision": propose,
            "revised_system_message": f"{current.rstrip()}\n{MARKER}\n" if propose else "",
            "reason": "The reviews asked twice for the summary first." if propose else "",
        }

    return answer


async def run_project(service: AgencyService, objective: str = "Write a short guide to composting for city apartments",
                      timeout: float = 30.0) -> int:
    """Run an autonomous project to the end, after-delivery hooks (memory, learning) included."""
    info = await service.new_project(AGENCY, objective, oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id, timeout=timeout) == "done"
    await asyncio.wait_for(service.engine.wait_project(info.id), timeout)
    await service.settle()
    return info.id

