"""Specialists: do a task with the outputs of its dependencies in context."""
from __future__ import annotations

from typing import Any

from agency.roles.common import clip, system_prompt, user_block
from agency.schemas import AgentTurn

RULES = (
    "Do the task now, in this reply: write the work itself, not what you are going to do. Put the complete work "
    "product in `output` (at least {min_chars} characters, addressing every success criterion) and add "
    "`/submit {key}` to `commands`; `message` is a short note to the team. To ask another member, add "
    "`/ask @Handle question` (you will get the answer next turn). If you cannot proceed, add `/blocked reason`."
)


def work_messages(
    system_message: str,
    *,
    objective: str,
    task: dict[str, Any],
    dep_outputs: dict[str, str],
    context: list[dict[str, Any]],
    review_notes: str | None,
    tools: str = "",
    memories: str = "",
    custom: list[tuple[str, str]] | None = None,
    schema: dict[str, Any] | None = None,
    min_output_chars: int = 200,
) -> list[dict[str, str]]:
    """``schema``: the turn's own JSON schema (agency.guided.work_schema), shown in the system prompt."""
    user = [user_block("Project objective", objective), user_block("Your task", task)]
    if dep_outputs:
        user.append(user_block("Outputs of the tasks yours depends on", "\n\n".join(f"### {k}\n{clip(v, 6000)}" for k, v in dep_outputs.items())))
    if memories:
        user.append(user_block("Relevant memories (lessons, knowledge, earlier work)", memories))
    if review_notes:
        user.append(user_block("The Collaborator asked for a revision", review_notes))
    if context:
        user.append(user_block("Since your last turn", "\n".join(f"- {c.get('from', '?')}: {clip(c.get('text'), 2000)}" for c in context)))
    if tools:
        user.append(user_block("Tools", tools))
    user.append(RULES.format(key=task.get("key"), min_chars=min_output_chars))
    return [
        {"role": "system", "content": system_prompt(system_message, AgentTurn, role="specialist", extra="", sent=schema)},
        {"role": "user", "content": "\n\n".join(user)},
    ]


def answer_messages(system_message: str, *, asker: str, question: str, context: str = "") -> list[dict[str, str]]:
    user = [user_block(f"{asker} says", clip(question, 4000))]
    if context:
        user.append(user_block("Context", context))
    user.append("Answer in `message`, briefly and concretely. Leave `commands` empty.")
    return [
        {"role": "system", "content": system_prompt(system_message, AgentTurn)},
        {"role": "user", "content": "\n\n".join(user)},
    ]
