"""The JSON schemas sent to models: strict, compact, and built per call.

The pydantic models in :mod:`agency.schemas` validate what comes back and
stay lenient where old records and scripted tests need it (defaults, ``/submit
T1 <text>``). What a model is *asked* for is stricter, because grammar-
constrained decoding (llama.cpp, vLLM, Ollama, OpenAI's json_schema) lets a
model leave out anything optional:

- every field the engine needs is required (a plan's task ``stream`` and
  ``assignee``, its ``scores``; a turn's ``output``; a review's ``criteria_met``);
  fields the engine does not read are not sent (a plan's ``oversight``,
  ``milestones``, a specialist's ``reuse``), and ``thinking`` stays optional;
- references the engine can name before the call are enums: a plan's roles
  (the catalogue and the stored specialists' roles), its handles (stored
  specialists, free ``Role-Letter`` handles for new ones) and assignees (those
  and the people), a review's task, an escalation's reassignment and hire;
  task ids and ``depends_on`` items are pattern-constrained to the id shape;
- the plan's size limits (settings) are ``maxItems``;
- the schema is compact: references inlined, no titles or defaults, lengths
  only where they guide (a ``maxLength`` of 60,000 only slows a grammar down).

Nothing here is trusted: the reply is still validated by pydantic and by the
engine (:meth:`agency.engine.planning.Planning.validate_plan`).
"""
from __future__ import annotations

import copy
import functools
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from agency.schemas import HANDLE_PATTERN, TASK_ID_PATTERN, AgentTurn, EscalationDecision, Review, WorkPlan

# per model (its class name, also for nested models): fields sent but not required, and fields not sent
_OPTIONAL: dict[str, set[str]] = {
    "ApproachSet": {"thinking"},
    "WorkPlan": {"thinking"},
    "StaffingSpec": {"definition"},
    "DefinitionDraft": {"expertise", "expectations", "system_message"},
    "AgentTurn": {"thinking", "tools", "output"},
    "Review": {"thinking"},
    "EscalationDecision": {"thinking"},
    "Evaluation": {"thinking"},
}
_OMIT: dict[str, set[str]] = {
    "WorkPlan": {"oversight", "milestones"},
    "StaffingSpec": {"reuse"},
    "DefinitionDraft": {"role", "title", "collaboration_strategy", "adaptability_strategy", "custom_commands", "tools"},
}
_KEEP = {"type", "properties", "required", "items", "enum", "const", "pattern", "description", "minimum", "maximum",
         "minLength", "maxLength", "minItems", "maxItems", "additionalProperties", "anyOf"}
_MAX_LENGTH_SENT = 1000  # a larger bound is checked by pydantic, not sent (it bloats a grammar)
_MAX_ITEMS_SENT = 30


def _compact(node: Any, defs: dict[str, Any], name: str | None = None) -> Any:
    if isinstance(node, list):
        return [_compact(x, defs) for x in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"].split("/")[-1]
        inner = _compact(defs[ref], defs, ref)
        extra = {k: v for k, v in node.items() if k == "description"}
        return {**inner, **extra}
    if "anyOf" in node:  # `X | None`: optional-ness is expressed by `required`, never by null
        alts = [a for a in node["anyOf"] if a.get("type") != "null"]
        if len(alts) == 1:
            merged = {**{k: v for k, v in node.items() if k not in ("anyOf", "default", "title")}, **alts[0]}
            return _compact(merged, defs, name)
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k not in _KEEP:
            continue
        if k == "maxLength" and v > _MAX_LENGTH_SENT:
            continue
        if k == "maxItems" and v > _MAX_ITEMS_SENT:
            continue
        if k == "description" and name is not None:
            continue  # a class docstring: for people, not for the model (a field's own description is kept)
        if k == "properties":
            omit = _OMIT.get(name or "", set())
            v = {p: _compact(s, defs) for p, s in v.items() if p not in omit}
        elif k in ("items", "anyOf", "additionalProperties"):
            v = _compact(v, defs)
        out[k] = v
    if "properties" in out:
        optional = _OPTIONAL.get(name or "", set())
        out["required"] = [p for p in out["properties"] if p not in optional]
        if not out["required"]:
            del out["required"]
    return out


@functools.cache
def sent_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The compact, strict JSON schema of ``model``, built once (shared: never modify it; the per-call
    builders below narrow a copy)."""
    raw = model.model_json_schema()
    return _compact(raw, raw.get("$defs", {}), model.__name__)


def _enum(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def plan_schema(*, roles: Iterable[str], handles: Iterable[str], people: Iterable[str] = (), max_tasks: int,
                max_streams: int, max_specialists: int) -> dict[str, Any]:
    """The WorkPlan schema for one plan call: ``roles`` the catalogue's and the stored specialists',
    ``handles`` the stored specialists' and free ones for new specialists, ``people`` the humans who
    may be assigned. A task's ``stream`` is one of the plan's own keys, which no schema can know
    before the plan is written: the validator checks it."""
    schema = copy.deepcopy(sent_schema(WorkPlan))
    props = schema["properties"]
    roles_, handles_ = _enum(roles), _enum(handles)
    spec = props["specialists"]
    spec["maxItems"] = max_specialists
    sp = spec["items"]["properties"]
    if roles_:
        sp["role"] = {"enum": roles_}
    if handles_:
        sp["handle"] = {"enum": handles_}
    else:
        sp["handle"] = {"type": "string", "pattern": HANDLE_PATTERN}
    props["streams"]["maxItems"] = max_streams
    tasks = props["tasks"]
    tasks["maxItems"] = max_tasks
    tp = tasks["items"]["properties"]
    tp["id"] = {"type": "string", "pattern": TASK_ID_PATTERN, "description": "T1, T2, ..."}
    assignees = _enum([*handles_, *people])
    if assignees:
        tp["assignee"] = {"enum": assignees, "description": "a handle from `specialists`, or a person"}
    tp["stream"] = {"type": "string", "pattern": r"^[a-z][a-z0-9-]{1,30}$", "description": "the key of one of `streams`"}
    tp["depends_on"] = {"type": "array", "items": {"type": "string", "pattern": TASK_ID_PATTERN},
                        "description": "ids of the tasks whose output this one needs"}
    return schema


def review_schema(task_key: str, criteria: int) -> dict[str, Any]:
    """The Review schema for one review: the task under review, one mark per criterion."""
    schema = copy.deepcopy(sent_schema(Review))
    props = schema["properties"]
    props["task"] = {"enum": [task_key]}
    props["criteria_met"] = {"type": "array", "items": {"type": "boolean"}, "minItems": criteria, "maxItems": criteria,
                             "description": "one per success criterion, in order"}
    return schema


def work_schema(task_key: str, *, min_output_chars: int, tools: bool) -> dict[str, Any]:
    """The AgentTurn schema for a specialist's work turn: the work product in ``output`` (required; empty
    unless the turn submits), the chat note in ``message``; ``tools`` only when the agency has tools."""
    schema = copy.deepcopy(sent_schema(AgentTurn))
    props = schema["properties"]
    props["output"] = {"type": "string", "description": f"your complete work product (at least {min_output_chars} characters) "
                                                         f"when you /submit {task_key}; empty otherwise"}
    if not tools:
        props.pop("tools", None)
    schema["required"] = [p for p in props if p not in ("thinking", "tools")]
    return schema


def escalation_schema(handles: Iterable[str], roles: Iterable[str]) -> dict[str, Any]:
    """The EscalationDecision schema: a reassignment names a member of the project, a hire a catalogue role."""
    schema = copy.deepcopy(sent_schema(EscalationDecision))
    props = schema["properties"]
    h, r = _enum(handles), _enum(roles)
    if h:
        props["assignee"] = {"enum": ["", *h], "description": "for reassign: the new assignee"}
    if r:
        props["hire_role"] = {"enum": ["", *r], "description": "for hire: a catalogue role"}
    return schema
