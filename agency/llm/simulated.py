"""The dry-run model: plays every role with plausible, schema-valid content
derived from the objective, without calling any model.

It is deterministic (a replay reaches the same result), and everything it
writes says that no model was called. Token counts are estimated from the text
so a dry run can report what a real run would cost.
"""
from __future__ import annotations

import json
import re
from typing import Any

from agency.llm.base import ModelReply, ModelRequest
from agency.llm.usage import estimate_tokens

NOTICE = "[dry run: simulated, no model was called]"


def _topic(objective: str) -> str:
    t = re.sub(r"\s+", " ", objective).strip().rstrip(".")
    return t[:140]


class SimulatedModel:
    """A stand-in for every role. ``name`` shows in records as the model used."""

    name = "simulated"

    def __init__(self, model_name: str = "simulated") -> None:
        self.model_name = model_name

    async def generate(self, request: ModelRequest) -> ModelReply:
        handler = getattr(self, f"_{request.schema_name}", None)
        data: Any = handler(request.meta or {}) if handler else self._generic(request)
        text = json.dumps(data)
        prompt = sum(estimate_tokens(m.get("content", "")) for m in request.messages)
        return ModelReply(
            text=text,
            model=request.model or self.model_name,
            prompt_tokens=prompt,
            completion_tokens=estimate_tokens(text),
            simulated=True,
        )

    # -- PM ------------------------------------------------------------------------
    def _ApproachSet(self, meta: dict[str, Any]) -> dict[str, Any]:
        topic = _topic(meta.get("objective", "the objective"))
        return {
            "thinking": f"{NOTICE} Three ways to reach: {topic}.",
            "recommended": 1,
            "approaches": [
                {
                    "title": "Research, then write",
                    "summary": f"Gather background and analyse the options for '{topic}', then write and review one document.",
                    "outputs": ["research notes", "analysis", "final document"],
                    "risks": ["sources may be thin on niche points"],
                    "rough_cost": "about 15 model calls",
                },
                {
                    "title": "Fast single draft",
                    "summary": f"One writer drafts '{topic}' directly from general knowledge; one review round.",
                    "outputs": ["final document"],
                    "risks": ["shallower; fewer checked facts"],
                    "rough_cost": "about 6 model calls",
                },
                {
                    "title": "Deep study",
                    "summary": f"Parallel research tracks on '{topic}', a synthesis, and a critical review before delivery.",
                    "outputs": ["per-track findings", "synthesis", "final document", "review notes"],
                    "risks": ["more time and cost"],
                    "rough_cost": "about 25 model calls",
                },
            ],
        }

    def _WorkPlan(self, meta: dict[str, Any]) -> dict[str, Any]:
        topic = _topic(meta.get("objective", "the objective"))
        approach = meta.get("approach") or "Research, then write"
        notes = meta.get("director_notes") or []
        extra = f" Revised for the Director's notes: {notes[-1]}" if notes else ""
        crit = ["covers the objective", "clear and specific", "states its sources or assumptions"]
        tasks = [
            ("T1", "Gather background", "research", "Researcher-A", [], "Collect the background facts, context and constraints."),
            ("T2", "Analyse needs and options", "research", "Analyst-A", [], "Identify who it is for, what they need, and compare the main options."),
            ("T3", "Outline the document", "production", "Writer-A", ["T1", "T2"], "Turn the findings into a structured outline."),
            ("T4", "Write the document", "production", "Writer-A", ["T3"], "Write the full document from the outline and findings."),
            ("T5", "Review and recommend", "production", "Reviewer-A", ["T4"], "Check the document against the success criteria; list fixes and a recommendation."),
        ]
        return {
            "thinking": f"{NOTICE} Plan for approach '{approach}'.",
            "summary": f"Two streams deliver '{topic}': research (in parallel) feeds production.{extra}",
            "outputs": ["a Markdown document answering the objective"],
            "success_criteria": ["answers the objective", "every section is supported by the research"],
            "streams": [
                {"key": "research", "goal": f"Establish the facts and options for {topic}", "success_criteria": ["facts gathered", "options compared"]},
                {"key": "production", "goal": "Write and review the deliverable", "success_criteria": ["document written", "document reviewed"]},
            ],
            "specialists": [
                {"handle": "Researcher-A", "role": "researcher", "reuse": True},
                {"handle": "Analyst-A", "role": "analyst", "reuse": True},
                {"handle": "Writer-A", "role": "writer", "reuse": True},
                {"handle": "Reviewer-A", "role": "reviewer", "reuse": True},
            ],
            "tasks": [
                {
                    "id": k,
                    "title": t,
                    "description": f"{d} Objective: {topic}.",
                    "stream": s,
                    "assignee": a,
                    "depends_on": deps,
                    "success_criteria": crit,
                    "scores": {"reasoning": 2 + (k in ("T2", "T4")), "domain": 3, "language": 3 + (k == "T4"), "quality": 3},
                }
                for k, t, s, a, deps, d in tasks
            ],
        }

    def _Deliverable(self, meta: dict[str, Any]) -> dict[str, Any]:
        topic = _topic(meta.get("objective", "the objective"))
        outputs: dict[str, Any] = meta.get("outputs", {})
        sections = "\n\n".join(f"## {v.get('title', k)}\n\n{v.get('output', '')}" for k, v in outputs.items())
        return {
            "title": topic[:190] or "Deliverable",
            "summary": f"{NOTICE} The assembled result of {len(outputs)} tasks for: {topic}.",
            "body_markdown": f"# {topic}\n\n> {NOTICE}\n\n{sections or 'No outputs.'}",
        }

    def _EscalationDecision(self, meta: dict[str, Any]) -> dict[str, Any]:
        return {"thinking": NOTICE, "action": "escalate", "message": f"Needs the Director: {meta.get('reason', 'blocked')}"}

    # -- collaborator ----------------------------------------------------------------
    def _Review(self, meta: dict[str, Any]) -> dict[str, Any]:
        crit = (meta.get("task") or {}).get("success_criteria", [])
        return {
            "thinking": NOTICE,
            "decision": "accept",
            "criteria_met": [True] * len(crit),
            "notes": "",
            "message": f"{NOTICE} Accepted: meets {len(crit)} of {len(crit)} criteria.",
        }

    # -- specialist and everyone's free turns -------------------------------------------
    def _AgentTurn(self, meta: dict[str, Any]) -> dict[str, Any]:
        task = meta.get("task")
        if meta.get("purpose") == "answer" or not task:
            q = meta.get("question") or meta.get("text") or "the message"
            return {"thinking": NOTICE, "message": f"{NOTICE} Noted: {str(q)[:200]}", "commands": []}
        topic = _topic(meta.get("objective", ""))
        deps = meta.get("dep_outputs", {})
        used = ", ".join(deps) if deps else "no earlier tasks"
        crit = task.get("success_criteria", [])
        body = (
            f"{NOTICE}\n\n### {task.get('title')}\n\n"
            f"Objective: {topic}.\nWhat this part covers: {task.get('description', '').split(' Objective:')[0]}\n\n"
            f"- Builds on: {used}.\n"
            + "".join(f"- Addresses: {c}.\n" for c in crit)
            + (f"- Revised after review: {meta['review_notes']}\n" if meta.get("review_notes") else "")
            # above engine.min_output_chars (200 by default) whatever the task: a dry run is never returned as too short
            + "- Method: every point above was checked against the task's success criteria and the outputs it builds on; "
            "what could not be checked is stated as an assumption.\n"
        )
        return {"thinking": NOTICE, "message": body, "commands": [f"/submit {task.get('key')}"]}

    # -- learning & performance manager ------------------------------------------------------
    def _Evaluation(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Scores from the feedback counts; lessons from corrections and revision requests; a revision
        that appends the lessons the system message does not have yet."""
        feedback: list[dict[str, Any]] = meta.get("feedback") or []
        tasks: list[dict[str, Any]] = meta.get("tasks") or []
        revisions = sum(1 for f in feedback if f.get("source") == "revision")
        escalations = sum(1 for f in feedback if f.get("source") == "escalation")
        ratings = [f["rating"] for f in feedback if f.get("source") in ("director", "reaction") and f.get("rating")]
        corrections = [f for f in feedback if f.get("source") in ("human", "director") and f.get("text")]
        score = max(1, min(5, 5 - min(2, revisions) - min(1, escalations) - (1 if ratings and min(ratings) <= 2 else 0)))
        evidence = f"{len(tasks)} task(s), {revisions} revision request(s), {escalations} escalation(s)"
        evidence += f", Director ratings {ratings}." if ratings else "."
        lessons: list[str] = []
        for f in corrections[-2:]:
            lessons.append(f"Apply what {f.get('author') or 'the Director'} asked: {' '.join(str(f['text']).split())[:160]}")
        if revisions:
            lessons.append("Check every success criterion one by one before you submit.")
        if escalations:
            lessons.append("Say early and precisely what blocks you and what you need to continue.")
        if not lessons:
            lessons.append("Say which earlier outputs you built on and how each success criterion is met.")
        known = set(meta.get("known_lessons") or [])
        lessons = [x for x in dict.fromkeys(lessons) if x not in known] or lessons[:1]
        current = str(meta.get("system_message") or "")
        missing = [x for x in lessons if x not in current]
        propose = bool(current) and (bool(missing) or bool(meta.get("require_revision")))
        header = "" if "Lessons learned:" in current else "\n\nLessons learned:"
        revised = current.rstrip() + header + "".join(f"\n- {x}" for x in (missing or lessons[:1])) + "\n" if propose else ""
        return {
            "thinking": NOTICE,
            "scores": [{"expectation": str(e)[:300], "score": score, "evidence": evidence} for e in (meta.get("expectations") or ["does the assigned work"])[:10]],
            "strengths": [f"{NOTICE} finished {sum(1 for t in tasks if t.get('status') == 'done')} of {len(tasks)} task(s)"],
            "weaknesses": [f"{revisions} submission(s) sent back for revision"] if revisions else [],
            "lessons": lessons[:5],
            "propose_revision": propose,
            "revised_system_message": revised,
            "reason": f"{NOTICE} Adds {len(missing or lessons[:1])} lesson(s) from this evaluation to the system message." if propose else "",
        }

    def _generic(self, request: ModelRequest) -> dict[str, Any]:
        """Fill any other schema with minimal valid values from its JSON schema."""
        return _fill(request.json_schema, request.json_schema.get("$defs", {}))


def _fill(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    if "$ref" in schema:
        return _fill(defs[schema["$ref"].split("/")[-1]], defs)
    if "default" in schema:
        return schema["default"]
    if "anyOf" in schema:
        return _fill(schema["anyOf"][0], defs)
    if "enum" in schema:
        return schema["enum"][0]
    t = schema.get("type")
    if t == "object":
        return {k: _fill(v, defs) for k, v in schema.get("properties", {}).items() if k in schema.get("required", [])}
    if t == "array":
        n = schema.get("minItems", 0)
        return [_fill(schema.get("items", {}), defs) for _ in range(n)]
    if t == "string":
        return (NOTICE + " " * 10)[: max(schema.get("maxLength", 200), schema.get("minLength", 0))].ljust(schema.get("minLength", 0), ".")
    if t == "integer":
        return max(schema.get("minimum", 1), 1)
    if t == "number":
        return float(schema.get("minimum", 1))
    if t == "boolean":
        return True
    return None
