"""Reports over the recorded LLM calls: cost per project, and model routing quality.

Every physical model call is a row of ``llm_calls`` (see
:mod:`agency.llm.client`) with its role, purpose, tier, model, tokens and cost
at the configured prices. This module only reads them:

- :func:`project_costs`: tokens and cost of a project by stream, member, model
  and role/purpose, orchestration calls (approaches, plan, reviews, escalations,
  delivery) included;
- :func:`model_report`: per tier, model and task kind, the calls, tokens, cost,
  latency, invalid replies and the acceptance rate of submissions, so routing
  thresholds can be tuned from data;
- :func:`work_verdicts`: the review verdict (``accepted`` / ``revised``) of each
  specialist work call. It is derived from the record, not stored: every work
  call keyed ``t{task}:a{attempt}:r{revision}:s{step}`` led to the submission
  reviewed by the call keyed ``t{task}:a{attempt}:r{revision}:review``, and the
  engine's ``accepted`` / ``revise`` event that follows that review is the verdict.

A model missing from the ``[llm.prices]`` table costs nothing by the table, but
its tokens are never reported as free: such lines are marked unpriced.
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from agency.db.tables import EventRow, LLMCallRow, MemberRow, StreamRow, TaskRow
from agency.llm.router import weighted_score
from agency.llm.usage import format_usd

_SUBMISSION = re.compile(r"^t(\d+):a(\d+):r(\d+):")
_REVIEW = re.compile(r"^t(\d+):a(\d+):r(\d+):review$")
ANSWERED = ("ok", "repaired")
ORCHESTRATION = "(project)"  # the stream label of calls that belong to no stream: approaches, plan, delivery


@dataclass(frozen=True)
class CostLine:
    label: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def unpriced(self) -> bool:
        """Tokens were spent but the price table gave them no cost."""
        return self.tokens > 0 and self.cost_usd <= 0

    @property
    def cost_text(self) -> str:
        return "no price" if self.unpriced else format_usd(self.cost_usd)


@dataclass
class CostBreakdown:
    project_id: int
    total: CostLine
    by_stream: list[CostLine]
    by_member: list[CostLine]
    by_model: list[CostLine]
    by_role: list[CostLine]  # "role/purpose", e.g. "pm/plan", "collaborator/review"

    @property
    def unpriced_models(self) -> list[str]:
        return [m.label for m in self.by_model if m.unpriced]

    @property
    def orchestration(self) -> CostLine:
        """Planning, review, routing and delivery: every call that is not a specialist's own work."""
        rows = [r for r in self.by_role if not r.label.startswith("specialist/")]
        return _sum("orchestration", rows)


def _sum(label: str, rows: list[CostLine]) -> CostLine:
    return CostLine(label, sum(r.calls for r in rows), sum(r.prompt_tokens for r in rows),
                    sum(r.completion_tokens for r in rows), sum(r.cost_usd for r in rows))


def _aggs() -> tuple[Any, ...]:
    return (
        func.count(LLMCallRow.id),
        func.coalesce(func.sum(LLMCallRow.prompt_tokens), 0),
        func.coalesce(func.sum(LLMCallRow.completion_tokens), 0),
        func.coalesce(func.sum(LLMCallRow.cost_usd), 0.0),
    )


def _lines(rows: Any, label: Any = None) -> list[CostLine]:
    out = [CostLine(label(r) if label else (str(r[0]) if r[0] is not None else "?"), int(r[-4]), int(r[-3]), int(r[-2]), float(r[-1]))
           for r in rows]
    return sorted(out, key=lambda x: (-x.cost_usd, -x.tokens, x.label))


async def project_costs(s: AsyncSession, project_id: int) -> CostBreakdown:
    """Tokens and cost of one project by stream, member, model and role/purpose (SQL group-bys)."""
    base = LLMCallRow.project_id == project_id
    stream_id = func.coalesce(LLMCallRow.stream_id, TaskRow.stream_id)
    by_stream = (await s.execute(
        select(StreamRow.key, *_aggs()).select_from(LLMCallRow)
        .outerjoin(TaskRow, TaskRow.id == LLMCallRow.task_id)
        .outerjoin(StreamRow, StreamRow.id == stream_id)
        .where(base).group_by(StreamRow.key))).all()
    by_member = (await s.execute(
        select(MemberRow.handle, LLMCallRow.role, *_aggs()).select_from(LLMCallRow)
        .outerjoin(MemberRow, MemberRow.id == LLMCallRow.member_id)
        .where(base).group_by(MemberRow.handle, LLMCallRow.role))).all()
    by_model = (await s.execute(select(LLMCallRow.model, *_aggs()).where(base).group_by(LLMCallRow.model))).all()
    by_role = (await s.execute(select(LLMCallRow.role, LLMCallRow.purpose, *_aggs()).where(base)
                               .group_by(LLMCallRow.role, LLMCallRow.purpose))).all()
    model_lines = _lines(by_model)
    return CostBreakdown(
        project_id=project_id,
        total=_sum("total", model_lines),
        by_stream=_lines(by_stream, lambda r: f"#{r[0]}" if r[0] else ORCHESTRATION),
        by_member=_lines(by_member, lambda r: f"@{r[0]}" if r[0] else str(r[1])),
        by_model=model_lines,
        by_role=_lines(by_role, lambda r: f"{r[0]}/{r[1]}"),
    )


def render_costs(b: CostBreakdown, *, limit: int = 6) -> str:
    """A few lines for chat (``/budget``) and the terminal."""
    def part(title: str, rows: list[CostLine]) -> str:
        shown = ", ".join(f"{r.label} {r.cost_text}" for r in rows[:limit])
        more = f", +{len(rows) - limit} more" if len(rows) > limit else ""
        return f"{title}: {shown}{more}" if rows else f"{title}: none"

    lines = [part("By stream", b.by_stream), part("By model", b.by_model), part("By member", b.by_member)]
    orch = b.orchestration
    lines.append(f"Orchestration (planning, review, routing, delivery): {orch.cost_text}, {orch.tokens} tokens in {orch.calls} calls")
    if b.unpriced_models:
        lines.append(f"No price configured for {', '.join(b.unpriced_models)}: their tokens are counted but not costed (add them to [llm.prices]).")
    return "\n".join(lines)


def cost_tables(b: CostBreakdown) -> list[Any]:
    """Rich tables for ``ateams cost``."""
    from rich.table import Table

    tables = []
    for title, rows in (("By stream", b.by_stream), ("By member", b.by_member), ("By model", b.by_model), ("By role/purpose", b.by_role)):
        t = Table(title=f"Project #{b.project_id} - {title.lower()}")
        for col in (title.removeprefix("By "), "calls", "prompt tokens", "completion tokens", "cost"):
            t.add_column(col, justify="left" if col == title.removeprefix("By ") else "right")
        for r in [*rows, b.total]:
            label = "[bold]total[/bold]" if r is b.total else r.label
            t.add_row(label, str(r.calls), str(r.prompt_tokens), str(r.completion_tokens), r.cost_text)
        tables.append(t)
    return tables


# -- verdicts and the model report ----------------------------------------------------------------
async def _review_decisions(s: AsyncSession, project_id: int | None) -> dict[tuple[int, int, int], str]:
    """(task id, attempt, revision) -> "accepted" | "revised", as the engine applied the review.

    The verdict is the engine's ``accepted`` / ``revise`` event that follows the
    review call (the engine may overrule a reviewer, e.g. an accept with unmet
    criteria becomes a revision): the first such event for the task, at or
    after the review call, for the same revision.
    """
    cw = [LLMCallRow.project_id == project_id] if project_id is not None else []
    ew = [EventRow.project_id == project_id] if project_id is not None else []
    reviews = (await s.execute(
        select(LLMCallRow.call_key, LLMCallRow.created_at)
        .where(*cw, LLMCallRow.purpose == "review", LLMCallRow.outcome.in_(ANSWERED), LLMCallRow.call_key.is_not(None))
        .order_by(LLMCallRow.created_at, LLMCallRow.id))).all()
    events: dict[int, list[tuple[Any, int, str, int]]] = defaultdict(list)
    for eid, tid, kind, data, at in (await s.execute(
            select(EventRow.id, EventRow.task_id, EventRow.kind, EventRow.data, EventRow.created_at)
            .where(*ew, EventRow.kind.in_(("accepted", "revise")), EventRow.task_id.is_not(None))
            .order_by(EventRow.created_at, EventRow.id))).all():
        rev = (data or {}).get("revision")
        if isinstance(rev, int):
            events[tid].append((at, eid, kind, rev if kind == "accepted" else rev - 1))
    used: set[int] = set()
    decisions: dict[tuple[int, int, int], str] = {}
    for key, at in reviews:
        m = _REVIEW.match(key or "")
        if not m:
            continue
        tid, attempt, revision = int(m[1]), int(m[2]), int(m[3])
        for e_at, eid, kind, rev in events.get(tid, []):
            if eid in used or rev != revision or (at is not None and e_at is not None and e_at < at):
                continue
            used.add(eid)
            decisions[(tid, attempt, revision)] = "accepted" if kind == "accepted" else "revised"
            break
    return decisions


def _submission(call_key: str | None) -> tuple[int, int, int] | None:
    m = _SUBMISSION.match(call_key or "")
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


async def work_verdicts(s: AsyncSession, project_id: int | None = None) -> dict[int, str]:
    """llm_calls.id -> "accepted" | "revised" for every specialist work call whose submission was reviewed."""
    where = [LLMCallRow.project_id == project_id] if project_id is not None else []
    decisions = await _review_decisions(s, project_id)
    rows = (await s.execute(select(LLMCallRow.id, LLMCallRow.call_key)
                            .where(*where, LLMCallRow.purpose == "work", LLMCallRow.call_key.is_not(None)))).all()
    out: dict[int, str] = {}
    for cid, key in rows:
        sub = _submission(key)
        if sub is not None and sub in decisions:
            out[cid] = decisions[sub]
    return out


@dataclass
class ModelReportRow:
    tier: str
    model: str
    kind: str  # the specialist's role for work ("researcher"), else "role/purpose" ("pm/plan")
    calls: int = 0
    invalid: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0  # total; see mean_latency_ms
    reviewed: int = 0  # submissions reviewed (counted under the tier of the call that submitted)
    accepted: int = 0
    scores: list[float] = field(default_factory=list)  # weighted task scores of the submissions

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.reviewed if self.reviewed else None

    @property
    def mean_latency_ms(self) -> float:
        return self.latency_ms / self.calls if self.calls else 0.0

    @property
    def mean_score(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None


async def model_report(s: AsyncSession, *, project_id: int | None = None, weights: Mapping[str, float] | None = None) -> list[ModelReportRow]:
    """Calls, tokens, cost, latency, invalid replies and acceptance per (tier, model, task kind).

    A submission is the group of work calls of one task attempt and revision;
    its review verdict counts once, under the tier and model of its last call.
    ``weights``: the routing weights, for tasks stored without a weighted score.
    """
    where = [LLMCallRow.project_id == project_id] if project_id is not None else []
    decisions = await _review_decisions(s, project_id)
    calls = (await s.execute(
        select(LLMCallRow.id, LLMCallRow.tier, LLMCallRow.model, LLMCallRow.role, LLMCallRow.purpose, LLMCallRow.outcome,
               LLMCallRow.call_key, LLMCallRow.prompt_tokens, LLMCallRow.completion_tokens, LLMCallRow.cost_usd,
               LLMCallRow.latency_ms, MemberRow.role, TaskRow.scores)
        .select_from(LLMCallRow)
        .outerjoin(MemberRow, MemberRow.id == LLMCallRow.member_id)
        .outerjoin(TaskRow, TaskRow.id == LLMCallRow.task_id)
        .where(*where).order_by(LLMCallRow.id))).all()
    rows: dict[tuple[str, str, str], ModelReportRow] = {}
    last_call: dict[tuple[int, int, int], tuple[tuple[str, str, str], Any]] = {}
    for (_cid, tier, model, role, purpose, outcome, key, pt, ct, cost, lat, member_role, scores) in calls:
        kind = (member_role or "specialist") if purpose == "work" else f"{role}/{purpose}"
        k = (tier or "-", model or "?", kind)
        r = rows.setdefault(k, ModelReportRow(*k))
        r.calls += 1
        r.invalid += int(outcome == "invalid")
        r.errors += int(outcome == "error")
        r.prompt_tokens += int(pt or 0)
        r.completion_tokens += int(ct or 0)
        r.cost_usd += float(cost or 0.0)
        r.latency_ms += float(lat or 0.0)
        if purpose == "work" and outcome in ANSWERED:
            sub = _submission(key)
            if sub is not None:
                last_call[sub] = (k, scores)
    for sub, (k, scores) in last_call.items():
        verdict = decisions.get(sub)
        if verdict is None:
            continue
        r = rows[k]
        r.reviewed += 1
        r.accepted += int(verdict == "accepted")
        score = _weighted(scores, weights)
        if score is not None:
            r.scores.append(score)
    order = {"-": 99}
    return sorted(rows.values(), key=lambda r: (order.get(r.tier, 0), r.tier, r.model, r.kind))


def _weighted(scores: Any, weights: Mapping[str, float] | None) -> float | None:
    if not isinstance(scores, dict):
        return None
    if isinstance(scores.get("weighted"), (int, float)):
        return float(scores["weighted"])
    if weights:
        return weighted_score({k: v for k, v in scores.items() if isinstance(v, int)}, weights)
    return None


def model_report_table(rows: list[ModelReportRow], *, title: str = "Model routing report") -> Any:
    """A rich table: acceptance, tokens and cost per tier, model and task kind.

    ``score``: the mean weighted routing score (1-5) of the reviewed submissions; ``latency``: mean per call.
    """
    from rich.table import Table

    t = Table(title=title)
    for col in ("tier", "model", "task kind", "calls", "reviewed", "accepted", "accept %", "score",
                "invalid", "errors", "tokens", "cost", "latency"):
        t.add_column(col, justify="left" if col in ("tier", "model", "task kind") else "right", no_wrap=col in ("tier", "model", "task kind"))
    tot = ModelReportRow("", "", "")
    for r in rows:
        t.add_row(r.tier, r.model, r.kind, str(r.calls), str(r.reviewed or ""), str(r.accepted if r.reviewed else ""),
                  f"{r.acceptance:.0%}" if r.acceptance is not None else "", f"{r.mean_score:.2f}" if r.mean_score is not None else "",
                  str(r.invalid or ""), str(r.errors or ""), str(r.tokens),
                  "no price" if r.tokens and r.cost_usd <= 0 else format_usd(r.cost_usd), f"{r.mean_latency_ms / 1000:.1f}s")
        tot.calls += r.calls
        tot.reviewed += r.reviewed
        tot.accepted += r.accepted
        tot.prompt_tokens += r.prompt_tokens
        tot.completion_tokens += r.completion_tokens
        tot.cost_usd += r.cost_usd
        tot.invalid += r.invalid
        tot.errors += r.errors
    t.add_row("[bold]total", "", "", str(tot.calls), str(tot.reviewed), str(tot.accepted),
              f"{tot.acceptance:.0%}" if tot.acceptance is not None else "", "", str(tot.invalid), str(tot.errors),
              str(tot.tokens), format_usd(tot.cost_usd), "")
    return t


def summarise_tiers(rows: list[ModelReportRow]) -> dict[str, dict[str, Any]]:
    """Per tier: calls, tokens, cost, reviewed, accepted (plain data, for tests and other reports)."""
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"calls": 0, "tokens": 0, "cost_usd": 0.0, "reviewed": 0, "accepted": 0})
    for r in rows:
        d = out[r.tier]
        d["calls"] += r.calls
        d["tokens"] += r.tokens
        d["cost_usd"] += r.cost_usd
        d["reviewed"] += r.reviewed
        d["accepted"] += r.accepted
    return dict(out)
