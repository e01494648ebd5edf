"""Members' performance records, read from tasks, feedback and model calls (used by the service's
member views, recall and the Learning Manager)."""
from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from agency.db.tables import FeedbackRow, LLMCallRow, TaskRow


async def member_records(s: AsyncSession, member_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Performance figures of members (tasks, acceptance, revisions, escalations, tokens, latency,
    the Director's ratings): three grouped queries, whatever their number."""
    ids = list(dict.fromkeys(member_ids))
    if not ids:
        return {}
    done = dict((await s.execute(select(TaskRow.assignee_id, func.count(TaskRow.id))
                                 .where(TaskRow.assignee_id.in_(ids), TaskRow.status == "done").group_by(TaskRow.assignee_id))).all())
    fb: dict[int, list[tuple[str, int | None]]] = {i: [] for i in ids}
    for mid, src, rating in (await s.execute(select(FeedbackRow.member_id, FeedbackRow.source, FeedbackRow.rating)
                                             .where(FeedbackRow.member_id.in_(ids)))).all():
        fb[mid].append((src, rating))
    calls = {mid: (tokens, latency, n) for mid, tokens, latency, n in (await s.execute(select(
        LLMCallRow.member_id, func.coalesce(func.sum(LLMCallRow.prompt_tokens + LLMCallRow.completion_tokens), 0),
        func.coalesce(func.avg(LLMCallRow.latency_ms), 0.0), func.count(LLMCallRow.id))
        .where(LLMCallRow.member_id.in_(ids)).group_by(LLMCallRow.member_id))).all()}
    out: dict[int, dict[str, Any]] = {}
    for mid in ids:
        n_done = int(done.get(mid, 0))
        reviews = [r for src, r in fb[mid] if src == "review"]
        accepted = sum(1 for r in reviews if r and r >= 4)
        revisions = sum(1 for src, _ in fb[mid] if src == "revision")
        escalations = sum(1 for src, _ in fb[mid] if src == "escalation")
        tokens, latency, n_calls = calls.get(mid, (0, 0.0, 0))
        ratings = [r for src, r in fb[mid] if src in ("director", "reaction") and r]
        out[mid] = {
            "tasks_done": n_done,
            "reviews": len(reviews),
            "acceptance_rate": round(accepted / len(reviews), 3) if reviews else None,
            "revisions_per_task": round(revisions / n_done, 3) if n_done else None,
            "escalations": escalations,
            "tokens": int(tokens),
            "tokens_per_task": round(tokens / n_done, 1) if n_done else None,
            "avg_latency_ms": round(float(latency), 1),
            "calls": int(n_calls),
            "director_rating": round(sum(ratings) / len(ratings), 2) if ratings else None,
        }
    return out


async def member_record(s: AsyncSession, member_id: int) -> dict[str, Any]:
    return (await member_records(s, [member_id]))[member_id]
