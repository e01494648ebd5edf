"""Scripted Learning-Manager answers."""
from __future__ import annotations

from typing import Any

from agency.llm.base import ModelRequest

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
