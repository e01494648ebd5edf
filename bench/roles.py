"""The mock's brain: answers each role's structured output with scripted, valid content.

:class:`RoleHandler` is a :class:`bench.mock_openai.MockOpenAIServer` handler.
It reads only what goes over the wire (a real server sees nothing else): the
schema asked for (``response_format.json_schema.name``, the forced tool's
name, or the schema named in the system prompt for ``json_object``), and the
user message (the objective, the task key). It answers

- ``ApproachSet``: three approaches, the first recommended;
- ``WorkPlan``: a plan of the shape given in the objective (``[bench-shape=layered:4x3]``, see
  :func:`bench.plans.shape_tag`) or of the handler's default shape;
- ``AgentTurn``: a work product of ``output_chars`` characters and ``/submit <task>``
  (a turn without a task, e.g. an answer to ``/ask``, has no command);
- ``Review``: ``accept`` with every criterion met;
- ``Deliverable``: a short document; ``EscalationDecision``: feedback;
- ``Evaluation`` (Learning Manager): good scores, one lesson, no revision;
- anything else: minimal values filled from the request's JSON schema.

It counts the calls per schema in :attr:`RoleHandler.by_schema` and logs when
each was answered in :attr:`RoleHandler.log` (for the critical-path timeline;
``time.perf_counter()`` is the system's monotonic clock on Linux, so times
logged in the mock's own process compare with the bench's), both returned by
:meth:`RoleHandler.stats`.
"""
from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

from agency.llm.simulated import SimulatedModel, _fill
from bench.plans import Shape, make_plan, parse_shape, shape_from_text

__all__ = ["RoleHandler", "schema_of", "user_text"]

_JSON_OBJECT_SCHEMA = re.compile(r"conforms to the ([A-Za-z0-9_-]+) JSON schema")
_RULE_SCHEMA = re.compile(r"matches the schema `([A-Za-z0-9_-]+)`")
_OBJECTIVE = re.compile(r"^## (?:Project objective|Objective)\n(.*?)(?:\n\n## |\n\n[A-Z][a-z]|\Z)", re.S | re.M)
_TASK_KEY = re.compile(r'"key":\s*"([A-Za-z][A-Za-z0-9_.-]{0,31})"')
_SUBMIT_HINT = re.compile(r"add `/submit ([A-Za-z][A-Za-z0-9_.-]{0,31})`")
_FILLER = (
    "The findings are stated with their sources, the assumptions are listed, and the open questions are "
    "flagged for the next task. "
)


def _content(msg: dict[str, Any]) -> str:
    c = msg.get("content")
    if isinstance(c, list):
        return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in c)
    return c or ""


def user_text(body: dict[str, Any]) -> str:
    """The text of the last user message."""
    for msg in reversed(body.get("messages") or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return _content(msg)
    return ""


def schema_of(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(schema name, JSON schema) the request asks for, whatever the structured-output mode."""
    rf = body.get("response_format")
    if isinstance(rf, dict):
        if rf.get("type") == "json_schema":
            js = rf.get("json_schema") or {}
            return str(js.get("name") or ""), js.get("schema") or {}
        if rf.get("type") == "json_object":
            system = next((_content(m) for m in body.get("messages") or [] if m.get("role") == "system"), "")
            m = _JSON_OBJECT_SCHEMA.search(system) or _RULE_SCHEMA.search(system)
            return (m.group(1) if m else ""), rf.get("schema") or {}
    for tool in body.get("tools") or []:
        fn = tool.get("function") or {}
        return str(fn.get("name") or ""), fn.get("parameters") or {}
    system = next((_content(m) for m in body.get("messages") or [] if m.get("role") == "system"), "")
    m = _RULE_SCHEMA.search(system)
    return (m.group(1) if m else ""), {}


class RoleHandler:
    """Scripted, schema-valid answers for every role (see the module docstring)."""

    def __init__(self, shape: Shape | str = "aggregate:2", *, output_chars: int = 1200) -> None:
        self.shape = parse_shape(shape) if isinstance(shape, str) else shape
        self.output_chars = output_chars
        self.by_schema: Counter[str] = Counter()
        # (time.perf_counter() when answered, schema, task key) of every call, in order
        self.log: list[tuple[float, str, str]] = []
        self._sim = SimulatedModel("mock")
        self._plans: dict[Shape, dict[str, Any]] = {}

    def stats(self) -> dict[str, Any]:
        """What it counted, JSON-ready (a :class:`bench.mock_openai.MockProcess` asks its child for it)."""
        return {"by_schema": dict(self.by_schema), "log": [list(entry) for entry in self.log]}

    def reset(self) -> None:
        """Forget the counts and the log."""
        self.by_schema.clear()
        self.log.clear()

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        name, schema = schema_of(body)
        self.by_schema[name or "?"] += 1
        text = user_text(body)
        key = _SUBMIT_HINT.search(text) if name == "AgentTurn" else (_TASK_KEY.search(text) if name == "Review" else None)
        self.log.append((time.perf_counter(), name, key.group(1) if key else ""))
        answer = getattr(self, f"_{name}", None)
        if answer is not None:
            return answer(text)
        return _fill(schema, schema.get("$defs", {})) if schema else {}

    # -- PM ----------------------------------------------------------------------------
    @staticmethod
    def _objective(text: str) -> str:
        m = _OBJECTIVE.search(text)
        return m.group(1).strip() if m else "the objective"

    def _ApproachSet(self, text: str) -> dict[str, Any]:
        return self._sim._ApproachSet({"objective": self._objective(text)})

    def _WorkPlan(self, text: str) -> dict[str, Any]:
        shape = shape_from_text(text) or self.shape
        if shape not in self._plans:
            self._plans[shape] = make_plan(shape)
        return self._plans[shape]

    def _Deliverable(self, text: str) -> dict[str, Any]:
        objective = self._objective(text)
        n = text.count("\n### ")
        return {
            "title": f"Deliverable: {objective[:120]}",
            "summary": f"The assembled result of {n} accepted task outputs.",
            "body_markdown": f"# {objective[:120]}\n\nThe accepted outputs, assembled into one document.\n\n"
            + _FILLER * max(1, self.output_chars // (2 * len(_FILLER))),
        }

    def _EscalationDecision(self, text: str) -> dict[str, Any]:
        return {"thinking": "", "action": "feedback", "message": "Submit what you have with /submit."}

    # -- learning manager ---------------------------------------------------------------------
    def _Evaluation(self, text: str) -> dict[str, Any]:
        return {
            "thinking": "Every task was accepted without a revision.",
            "scores": [{"expectation": "does the assigned work", "score": 5, "evidence": "every submission accepted first time"}],
            "strengths": ["submits complete work"],
            "weaknesses": [],
            "lessons": ["Say which earlier outputs you built on."],
            "propose_revision": False,
            "revised_system_message": "",
            "reason": "",
        }

    # -- collaborator ----------------------------------------------------------------------
    def _Review(self, text: str) -> dict[str, Any]:
        key = (_TASK_KEY.search(text) or _SUBMIT_HINT.search(text))
        return {
            "thinking": "Every criterion is met.",
            "decision": "accept",
            "criteria_met": [True, True],
            "notes": "",
            "message": f"Accepted {key.group(1) if key else 'the task'}.",
        }

    # -- specialists and free turns ------------------------------------------------------------
    def _AgentTurn(self, text: str) -> dict[str, Any]:
        m = _SUBMIT_HINT.search(text) or (_TASK_KEY.search(text) if "## Your task" in text else None)
        if m is None:  # an answer to a question, or a free turn
            return {"thinking": "", "message": "Noted; here is my short answer.", "commands": []}
        key = m.group(1)
        body = f"### Work product for {key}\n\n" + (_FILLER * (self.output_chars // len(_FILLER) + 1))[: self.output_chars]
        return {"thinking": f"Working on {key}.", "message": body, "commands": [f"/submit {key}"]}

