"""Plan builders for scripted PMs."""
from __future__ import annotations

from typing import Any

ROLES = {"Researcher-A": "researcher", "Analyst-A": "analyst", "Writer-A": "writer", "Reviewer-A": "reviewer"}


def plan(tasks: list[tuple[str, str, str, list[str]]], **extra: Any) -> dict[str, Any]:
    streams = sorted({t[1] for t in tasks})
    handles = sorted({t[2] for t in tasks if t[2] in ROLES})
    return {
        "summary": "A scripted plan for the test.",
        "outputs": ["a document"],
        "success_criteria": ["answers the objective"],
        "streams": [{"key": s, "goal": f"the {s} work", "success_criteria": [f"{s} done"]} for s in streams],
        "specialists": [{"handle": h, "role": ROLES[h], "reuse": True} for h in handles],
        "tasks": [
            {"id": k, "title": f"Task {k}", "description": f"Do {k} well.", "stream": s, "assignee": a,
             "depends_on": deps, "success_criteria": ["complete"]}
            for k, s, a, deps in tasks
        ],
        **extra,
    }


DIAMOND = plan([
    ("T1", "research", "Researcher-A", []),
    ("T2", "research", "Analyst-A", []),
    ("T3", "production", "Writer-A", ["T1", "T2"]),
])
