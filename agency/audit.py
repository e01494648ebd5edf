"""Audit export: a project's record as JSON Lines.

One JSON object a line, each with a ``type``:

- ``project`` (first): objective, oversight, status, budget, plan, deliverable title;
- ``task``: key, title, stream, assignee, state, tier and routing scores, revisions;
- ``approval``: kind, subject, decision, reason, who decided;
- then the timeline, oldest first: ``event`` (every state change), ``message``
  (chat in and out, the outbox included) and ``llm_call`` (role, purpose, model,
  tier, the request messages, the response, tokens, cost, latency, outcome and
  the review verdict of work calls).

Secrets are redacted from every string (:func:`agency.logs.redact`). The
export holds whole prompts, so treat the file as confidential.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import IO, Any

from sqlalchemy import select

from agency.db import repos
from agency.db.session import Database
from agency.db.tables import ApprovalRow, EventRow, LLMCallRow, MessageRow
from agency.logs import redact
from agency.reports import work_verdicts

_ORDER = {"event": 0, "message": 1, "llm_call": 2}


def _clean(v: Any) -> Any:
    if isinstance(v, str):
        return redact(v)
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


async def export_audit(db: Database, project_id: int) -> AsyncIterator[dict[str, Any]]:
    """Yield the project's audit records (see the module docstring); raise NotFoundError for an unknown project."""
    async with db.session() as s:
        f = await repos.project_frame(s, project_id)
        p, tasks, streams, members = f.project, f.tasks, f.streams, f.members
        keys = {t.id: t.key for t in tasks}
        approvals = list((await s.execute(select(ApprovalRow).where(ApprovalRow.project_id == project_id).order_by(ApprovalRow.id))).scalars())
        events = list((await s.execute(select(EventRow).where(EventRow.project_id == project_id).order_by(EventRow.id))).scalars())
        messages = list((await s.execute(select(MessageRow).where(MessageRow.project_id == project_id).order_by(MessageRow.id))).scalars())
        calls = list((await s.execute(select(LLMCallRow).where(LLMCallRow.project_id == project_id).order_by(LLMCallRow.id))).scalars())
        verdicts = await work_verdicts(s, project_id)

    yield _clean({
        "type": "project", "id": p.id, "objective": p.objective, "oversight": p.oversight, "status": p.status,
        "error": p.error, "budget_usd": p.budget_usd, "budget_tokens": p.budget_tokens, "dry_run": bool(p.dry_run),
        "plan": p.plan, "director_notes": p.director_notes, "deliverable_title": p.deliverable_title,
        "deliverable": p.deliverable, "created_at": p.created_at, "finished_at": p.finished_at,
    })
    for t in tasks:
        yield _clean({
            "type": "task", "id": t.id, "key": t.key, "title": t.title, "stream": streams.get(t.stream_id),
            "assignee": members.get(t.assignee_id), "status": t.status, "tier": t.tier, "scores": t.scores,
            "revision": t.revision, "attempt": t.attempt, "completions": t.completions, "blocked_reason": t.blocked_reason,
            "started_at": t.started_at, "finished_at": t.finished_at,
        })
    for a in approvals:
        yield _clean({
            "type": "approval", "id": a.id, "kind": a.kind, "subject": a.subject, "status": a.status, "options": a.options,
            "choice": a.choice, "reason": a.reason, "decided_by": a.decided_by, "created_at": a.created_at, "decided_at": a.decided_at,
        })
    timeline: list[tuple[datetime, int, int, dict[str, Any]]] = []
    for e in events:
        timeline.append((e.created_at, _ORDER["event"], e.id, {
            "type": "event", "id": e.id, "at": e.created_at, "kind": e.kind, "task": keys.get(e.task_id) if e.task_id else None,
            "data": e.data,
        }))
    for m in messages:
        timeline.append((m.created_at, _ORDER["message"], m.id, {
            "type": "message", "id": m.id, "at": m.created_at, "direction": m.direction, "address": m.address, "persona": m.persona,
            "kind": m.kind, "content": m.content, "attachment_name": m.attachment_name, "attachment_text": m.attachment_text,
            "approval_id": m.approval_id, "status": m.status, "delivered_at": m.delivered_at, "attempts": m.attempts, "error": m.error,
        }))
    for c in calls:
        timeline.append((c.created_at, _ORDER["llm_call"], c.id, {
            "type": "llm_call", "id": c.id, "at": c.created_at, "call_key": c.call_key, "role": c.role, "purpose": c.purpose,
            "task": keys.get(c.task_id) if c.task_id else None, "member": members.get(c.member_id) if c.member_id else None,
            "stream": streams.get(c.stream_id) if c.stream_id else None, "model": c.model, "tier": c.tier,
            "outcome": c.outcome, "verdict": verdicts.get(c.id), "error": c.error, "simulated": bool(c.simulated),
            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens, "cost_usd": c.cost_usd,
            "latency_ms": c.latency_ms, "request": c.request, "response": c.response, "retrieved": c.retrieved,
        }))
    timeline.sort(key=lambda x: (x[0], x[1], x[2]))
    for *_, record in timeline:
        yield _clean(record)


async def write_audit(db: Database, project_id: int, out: IO[str]) -> int:
    """Write the export as JSON Lines to ``out``; return the number of records."""
    n = 0
    async for record in export_audit(db, project_id):
        out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        n += 1
    return n
