"""The Project Manager: approaches, the work plan, escalations, the deliverable."""
from __future__ import annotations

import json
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
    previous: dict[str, Any] | None = None,
    schema: dict[str, Any] | None = None,
    limits: tuple[int, int, int] | None = None,
) -> list[dict[str, str]]:
    """The plan call. ``previous`` (the plan the validator returned) and ``problems`` make it an edit: the
    previous plan is the PM's own last reply, followed by its problems and the request for the corrected
    plan. ``schema``: the call's own JSON schema (agency.guided.plan_schema)."""
    user = [user_block("Objective", objective)]
    if approach:
        user.append(user_block("Chosen approach", approach))
    user.append(user_block("Specialist roles in the catalogue", catalogue))
    if stored:
        user.append(user_block("The agency's stored specialists (reuse one by its handle and role)", stored))
    if humans:
        user.append(user_block("Human specialists you may assign", ", ".join("@" + h for h in humans)))
    if notes:
        user.append(user_block("The Director's notes (address every one)", "\n".join(f"- {n}" for n in notes)))
    if problems and previous is None:
        user.append(user_block("Your previous plan was rejected by the validator; fix every problem", "\n".join(f"- {p}" for p in problems)))
    if memories:
        user.append(user_block("What the agency remembers", memories))
    size = (f" At most {limits[0]} tasks, {limits[1]} streams and {limits[2]} specialists." if limits else "")
    user.append(
        f"Oversight level: {oversight}. Budget: {budget}.\n"
        "Write the work plan: outputs, success criteria, work streams (key = short lowercase channel name), "
        "specialists and tasks. Specialists: a handle and its role, both from the lists in the schema (a stored "
        "specialist's handle reuses it; a free Role-Letter handle such as Writer-B creates one); a `definition` may "
        "only add expertise, expectations or notes to a role. Each task has a unique id (T1, T2, ...), the key of "
        "one of your streams, an assignee from your specialists (or a person), `depends_on` (ids of tasks whose "
        "output it needs; no cycles), success criteria, and `scores` 1-5 for reasoning, domain, language and "
        "quality. Every required output and success criterion must be produced or met by some task: name it in "
        "that task's description or criteria. Tasks without dependencies run in parallel." + size
    )
    msgs = [
        {"role": "system", "content": system_prompt(IDENTITY, WorkPlan, sent=schema)},
        {"role": "user", "content": "\n\n".join(user)},
    ]
    if previous is not None:  # a retry is an edit of the plan the validator returned
        msgs += [
            {"role": "assistant", "content": json.dumps(previous, ensure_ascii=False, separators=(",", ":"))},
            {"role": "user", "content": user_block("The validator returned your plan with these problems",
                                                   "\n".join(f"- {p}" for p in problems))
             + "\n\nEdit your plan above: fix every problem and keep everything else as it is. Reply with the complete "
               "corrected plan."},
        ]
    return msgs


def escalation_messages(task: dict[str, Any], reason: str, members: list[str], schema: dict[str, Any] | None = None) -> list[dict[str, str]]:
    user = [
        user_block("Blocked task", task),
        user_block("Why it is blocked", reason),
        user_block("Specialists in the project", ", ".join("@" + m for m in members)),
        "Decide: `feedback` (guidance so the assignee can continue), `reassign` (to another handle), "
        "`hire` (a catalogue role), `replan`, or `escalate` to the Director with the reason.",
    ]
    return [
        {"role": "system", "content": system_prompt(IDENTITY, EscalationDecision, sent=schema)},
        {"role": "user", "content": "\n\n".join(user)},
    ]


def deliver_messages(objective: str, plan_summary: str, outputs: dict[str, dict[str, str]], notes: list[str],
                     missing: list[str] | None = None) -> list[dict[str, str]]:
    body = "\n\n".join(f"### {k}: {v['title']}\n{clip(v['output'], 6000)}" for k, v in outputs.items())
    user = [
        user_block("Objective", objective),
        user_block("Plan", plan_summary),
        user_block("Accepted task outputs", body),
    ]
    if notes:
        user.append(user_block("The Director's notes", "\n".join(f"- {n}" for n in notes)))
    if missing:
        user.append(user_block("What is missing (say so in the deliverable; do not fill it in from your own knowledge)",
                               "\n".join(f"- {m}" for m in missing)))
    user.append("Assemble the final deliverable as one Markdown document that answers the objective from the task outputs above.")
    return [
        {"role": "system", "content": system_prompt(IDENTITY, Deliverable)},
        {"role": "user", "content": "\n\n".join(user)},
    ]
