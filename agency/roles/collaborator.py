"""The Collaborator: reviews each submission against the task's success criteria."""
from __future__ import annotations

from typing import Any

from agency.roles.common import clip, system_prompt, user_block
from agency.schemas import Review


def identity(handle: str, stream: str, goal: str) -> str:
    return (
        f"You are {handle}, the Collaborator of the `{stream}` work stream (goal: {goal}). You review every "
        "submission against the task's success criteria: `accept` when each criterion is met, otherwise "
        "`revise` with specific notes that say what to change. You hand accepted work to the tasks that depend on it."
    )


def review_messages(handle: str, stream: str, goal: str, task: dict[str, Any], output: str, revision: int, max_revisions: int,
                    schema: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """``schema``: the review's own JSON schema (agency.guided.review_schema), shown in the system prompt."""
    user = [
        user_block("Task", task),
        user_block("Submission", clip(output, 12000)),
        f"This is revision {revision} of at most {max_revisions}. Set `criteria_met` to one boolean per criterion, in order.",
    ]
    return [
        {"role": "system", "content": system_prompt(identity(handle, stream, goal), Review, sent=schema)},
        {"role": "user", "content": "\n\n".join(user)},
    ]
