"""The Project Manager: approaches, the work plan, escalations, the deliverable."""
from __future__ import annotations

from typing import Any

from agency.roles.common import clip, system_prompt, user_block
from agency.schemas import ApproachSet, Deliverable, EscalationDecision, WorkPlan

IDENTITY = (
    "You are PM, the Project Manager of an AI agency run in a chat server. A human Director gives objectives; "
    "you propose approaches, plan the work as a dependency graph of tasks grouped in work streams, staff each "
    "stream with specialists, unblock them, and assemble the final deliverable."
)


def approaches_messages(objective: str, notes: list[str], memories: str = "") -> list[dict[str, str]]:
    user = [user_block("Objective", objective)]
    if notes:
        user.append(user_block("The Director's notes on earlier proposals", "\n".join(f"- {n}" for n in notes)))
    if memories:
        user.append(user_block("What the agency remembers", memories))
    user.append(
        "Propose 2 to 4 distinct approaches. For each: title, summary, outputs, risks, rough cost. "
        "Set `recommended` to the 1-based index of the one you recommend."
    )
    return [
        {"role": "system", "content": system_prompt(IDENTITY, ApproachSet)},
        {"role": "user", "content": "\n\n".join(user)},
    ]


def plan_messages(
    objective: str,
    approach: dict[str, Any] | None,
    *,
    catalogue: str,
    stored: list[dict[str, Any]],
    humans: list[str],
    notes: list[str],
    problems: list[str],
    oversight: str,
    budget: str,
    memories: str = "",
) -> list[dict[str, str]]:
    user = [user_block("Objective", objective)]
    if approach:
        user.append(user_block("Chosen approach", approach))
    user.append(user_block("Specialist roles in the catalogue", catalogue))
    if stored:
        user.append(user_block("The agency's stored specialists (reuse them by handle with reuse=true)", stored))
    if humans:
        user.append(user_block("Human specialists you may assign", ", ".join("@" + h for h in humans)))
    if notes:
        user.append(user_block("The Director's notes (address every one)", "\n".join(f"- {n}" for n in notes)))
    if problems:
        user.append(user_block("Your previous plan was rejected by the validator; fix every problem", "\n".join(f"- {p}" for p in problems)))
    if memories:
        user.append(user_block("What the agency remembers", memories))
    user.append(
        f"Oversight level: {oversight}. Budget: {budget}.\n"
        "Write the work plan: outputs, success criteria, work streams (key = short lowercase channel name), "
        "specialists (handle like Researcher-A, role from the catalogue; reuse=true to reuse a stored one; "
        "give a full `definition` only for a role not in the catalogue), and tasks. Each task has a unique id "
        "(T1, T2, ...), a stream, an assignee handle from `specialists`, `depends_on` (ids of tasks whose output "
        "it needs; no cycles), success criteria, and `scores` 1-5 for reasoning, domain, language and quality. "
        "Tasks without dependencies run in parallel."
    )
    return [
        {"role": "system", "content": system_prompt(IDENTITY, WorkPlan)},
        {"role": "user", "content": "\n\n".join(user)},
    ]


def escalation_messages(task: dict[str, Any], reason: str, members: list[str]) -> list[dict[str, str]]:
    user = [
        user_block("Blocked task", task),
        user_block("Why it is blocked", reason),
        user_block("Specialists in the project", ", ".join("@" + m for m in members)),
        "Decide: `feedback` (guidance so the assignee can continue), `reassign` (to another handle), "
        "`hire` (a catalogue role), `replan`, or `escalate` to the Director with the reason.",
    ]
    return [
        {"role": "system", "content": system_prompt(IDENTITY, EscalationDecision)},
        {"role": "user", "content": "\n\n".join(user)},
    ]


def deliver_messages(objective: str, plan_summary: str, outputs: dict[str, dict[str, str]], notes: list[str]) -> list[dict[str, str]]:
    body = "\n\n".join(f"### {k}: {v['title']}\n{clip(v['output'], 6000)}" for k, v in outputs.items())
    user = [
        user_block("Objective", objective),
        user_block("Plan", plan_summary),
        user_block("Accepted task outputs", body),
    ]
    if notes:
        user.append(user_block("The Director's notes", "\n".join(f"- {n}" for n in notes)))
    user.append("Assemble the final deliverable as one Markdown document that answers the objective.")
    return [
        {"role": "system", "content": system_prompt(IDENTITY, Deliverable)},
        {"role": "user", "content": "\n\n".join(user)},
    ]
