"""The Learning & Performance Manager: evaluations, lessons and system-message revisions."""
from __future__ import annotations

from typing import Any

from agency.roles.common import clip, system_prompt, user_block
from agency.schemas import AgentTurn, Evaluation

HANDLE = "Learning-Manager"
IDENTITY = (
    f"You are {HANDLE}, the Learning & Performance Manager of an AI agency. You turn feedback into better "
    "specialists. You evaluate a specialist against each expectation in its definition and cite the evidence: "
    "Collaborator reviews, revision requests, escalations, the Director's ratings and reactions, and the "
    "corrections people wrote in its thread. You distil at most five short, actionable lessons it should "
    "remember next time (imperative sentences, no names of projects). When the evidence shows a recurring "
    "problem that its current system message does not address, you propose a complete revised system message: "
    "keep what works, change only what the evidence supports, keep its identity, role and handle, and give the "
    "reason. With little or only positive evidence, propose no revision."
)


def evaluate_messages(
    *,
    handle: str,
    role: str,
    definition: dict[str, Any] | None,
    system_message: str,
    version: int | None,
    record: dict[str, Any],
    feedback: list[dict[str, Any]],
    tasks: list[dict[str, Any]],
    known_lessons: list[str],
    scope: str,
    request: str = "",
    require_revision: bool = False,
) -> list[dict[str, str]]:
    d = definition or {}
    user = [
        user_block("Specialist", {"handle": handle, "role": role, "title": d.get("title") or role,
                                  "expertise": d.get("expertise", []), "expectations": d.get("expectations", [])}),
        user_block(f"Its current system message (v{version or '?'})", clip(system_message, 6000) or "(none)"),
        user_block("Scope of this evaluation", scope),
        user_block("Performance figures", record),
        user_block("Feedback, oldest first", feedback or "(no feedback recorded)"),
        user_block("Its tasks", tasks or "(no tasks in scope)"),
    ]
    if known_lessons:
        user.append(user_block("Lessons it already has (do not repeat them)", "\n".join(f"- {x}" for x in known_lessons)))
    if request:
        user.append(user_block("Why you were asked", request))
    ask = (
        "Score every expectation from 1 to 5 with its evidence, list strengths and weaknesses, and give the lessons."
    )
    if require_revision:
        ask += " You were asked to propose a revision: set propose_revision=true with the complete new system message and the reason."
    else:
        ask += " Set propose_revision=true only if the evidence supports a change to the system message."
    user.append(ask)
    return [
        {"role": "system", "content": system_prompt(IDENTITY, Evaluation)},
        {"role": "user", "content": "\n\n".join(user)},
    ]


def turn_messages(*, request: str, author: str, specialists: list[dict[str, Any]], scope: str) -> list[dict[str, str]]:
    user = [
        user_block(f"{author} says", clip(request, 4000)),
        user_block("Scope", scope),
        user_block("The agency's specialists", specialists or "(none yet)"),
        "Answer in `message`. To act, add commands: `/evaluate @Handle` to evaluate a specialist, "
        "`/revise @Handle` to propose a new system-message version, `/lesson <text>` to store a lesson for every member.",
    ]
    return [
        {"role": "system", "content": system_prompt(IDENTITY, AgentTurn, role="learning")},
        {"role": "user", "content": "\n\n".join(user)},
    ]
