"""Memory in the work: what each agent is reminded of before a turn, and what the work leaves behind.

:func:`make_recall` builds the engine's ``recall`` hook. Before a PM or
specialist turn it searches the agency's memory for

- the member's own lessons (``member`` = its handle),
- its role's lessons (``role``) and the agency-wide lessons,
- the project's earlier work (``kind`` work, ``project_id``), leaving out the
  outputs the prompt already carries (the task's dependencies),
- knowledge the Director added (``/resource add``),

ranks them (own lessons first, then by distance), keeps the ``memory.top_k``
best and packs them into ``memory.token_budget`` tokens (estimated as
characters / 4). It returns the text for the prompt and one record per memory
used (``id``, ``kind``, ``distance``, ``source``, ``scope``), which the engine
stores on the LLM call. For the PM it also lists the stored specialists' track
records, so that staffing can prefer the ones that did well.

Work enters memory in two ways: before a recall in a project, the outputs of
that project's finished tasks are stored (so later tasks can find them), and
after delivery :func:`store_project_work` stores every accepted output and the
deliverable's summary. Ids are deterministic, so storing twice is harmless.
"""
from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from agency.db.tables import MemberRow, ProjectRow, StreamRow, SystemMessageRow, TaskDepRow, TaskRow
from agency.ports import Memory, MemoryEntry, MemoryHit
from agency.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "AGENCY_LESSON",
    "Recall",
    "chunk_text",
    "estimate_tokens",
    "make_recall",
    "render_record",
    "store_knowledge",
    "store_project_work",
]

Recall = Callable[[int, str, str | None, str, int | None], Awaitable[tuple[str, list[dict[str, Any]]]]]
RecordsFn = Callable[[Any, list[int]], Awaitable[dict[int, dict[str, Any]]]]

AGENCY_LESSON = "agency"  # ``source`` of lessons meant for every member
WORK_CHARS = 3000  # stored per task output
KNOWLEDGE_CHUNK = 1200  # characters per knowledge entry
MAX_DISTANCE = 0.9  # knowledge and work farther than this are noise; lessons are kept whatever their distance
_BONUS = {"own lesson": 0.3, "role lesson": 0.12, "agency lesson": 0.12, "project work": 0.0, "knowledge": 0.0}
_MAX_RECORDS = 12


def estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def chunk_text(text: str, size: int = KNOWLEDGE_CHUNK) -> list[str]:
    """Split a document into passages of about ``size`` characters, at paragraph or sentence ends."""
    text = text.replace("\r\n", "\n").strip()
    if not text:
        return []
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    pieces: list[str] = []
    for p in paras:
        while len(p) > size:
            cut = max(p.rfind(". ", 0, size), p.rfind("\n", 0, size))
            cut = cut + 1 if cut > size // 3 else size
            pieces.append(p[:cut].strip())
            p = p[cut:].strip()
        if p:
            pieces.append(p)
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + len(piece) + 2 <= size:
            chunks[-1] = f"{chunks[-1]}\n\n{piece}"
        else:
            chunks.append(piece)
    return chunks


async def store_knowledge(memory: Memory, agency_id: int, text: str, source: str) -> list[str]:
    """Store a document (``/resource add``) as knowledge passages; returns their ids."""
    chunks = chunk_text(text)
    entries = [
        MemoryEntry(text=c, kind="knowledge", agency_id=agency_id, source=source if len(chunks) == 1 else f"{source} #{i}")
        for i, c in enumerate(chunks, 1)
    ]
    return await memory.add(entries)


def _work_entry(p_agency: int, pid: int, t: TaskRow, handle: str | None, role: str | None, stream: str | None) -> MemoryEntry:
    out = (t.output or "").strip()
    if len(out) > WORK_CHARS:
        out = out[: WORK_CHARS - 15].rstrip() + " ...[truncated]"
    return MemoryEntry(text=f"{t.key} {t.title}: {out}", kind="work", agency_id=p_agency, project_id=pid,
                       stream=stream, member=handle, role=role, source=t.key)


async def _done_work(db: Any, pid: int, exclude: set[int] | None = None) -> list[tuple[int, MemoryEntry]]:
    async with db.session() as s:
        p = await s.get(ProjectRow, pid)
        if p is None:
            return []
        rows = (await s.execute(
            select(TaskRow, MemberRow.handle, MemberRow.role, StreamRow.key)
            .join(MemberRow, MemberRow.id == TaskRow.assignee_id)
            .join(StreamRow, StreamRow.id == TaskRow.stream_id)
            .where(TaskRow.project_id == pid, TaskRow.status == "done")
            .order_by(TaskRow.key)
        )).all()
        return [(t.id, _work_entry(p.agency_id, pid, t, h, r, k)) for t, h, r, k in rows
                if (t.output or "").strip() and t.id not in (exclude or set())]


async def store_project_work(memory: Memory, db: Any, pid: int) -> int:
    """After delivery: every accepted output and the deliverable's summary become ``work`` memories."""
    entries = [e for _, e in await _done_work(db, pid)]
    async with db.session() as s:
        p = await s.get(ProjectRow, pid)
        if p is not None and p.deliverable:
            body = p.deliverable.split("\n---\n", 1)[0]  # the body, without the appendix of outputs
            summary = f"Deliverable of project #{pid} ({p.deliverable_title or 'untitled'}). Objective: {p.objective}\n\n{body}"
            entries.append(MemoryEntry(text=summary[:WORK_CHARS], kind="work", agency_id=p.agency_id, project_id=pid,
                                       member="PM", role="pm", source="deliverable"))
    if entries:
        await memory.add(entries)
    log.info("memory: stored %d work entries (project=%s)", len(entries), pid)
    return len(entries)


@dataclass
class _Item:
    hit: MemoryHit
    scope: str

    @property
    def score(self) -> float:
        return self.hit.distance - _BONUS.get(self.scope, 0.0)

    def line(self) -> str:
        meta = self.hit.metadata or {}
        label = self.scope
        if self.scope == "project work":
            label = f"earlier work in this project: {meta.get('source', '?')} by {meta.get('member', '?')}"
        elif self.scope == "knowledge" and meta.get("source"):
            label = f"knowledge: {meta['source']}"
        elif self.scope == "role lesson" and meta.get("role"):
            label = f"lesson for {meta['role']}s"
        return f"- ({label}) {' '.join(self.hit.text.split())}"


def _pack(items: list[_Item], budget_tokens: int) -> tuple[list[str], list[_Item]]:
    """Greedy, in rank order; an item that does not fit is shortened when that still says something."""
    lines: list[str] = []
    used: list[_Item] = []
    left = budget_tokens * 4  # characters
    for it in items:
        line = it.line()
        if len(line) + 1 > left:
            room = left - 1
            if room < 80:
                continue
            line = line[: room - 4].rstrip() + " ..."
        lines.append(line)
        used.append(it)
        left -= len(line) + 1
        if left < 80:
            break
    return lines, used


class _Recaller:
    def __init__(self, memory: Memory | None, settings: Settings, db: Any = None, records: RecordsFn | None = None) -> None:
        self.memory = memory
        self.settings = settings
        self.db = db
        self.records = records
        self._synced: set[int] = set()  # task ids whose output this process stored
        self._locks: dict[int, asyncio.Lock] = {}

    async def __call__(self, agency_id: int, handle: str, role: str | None, query: str, project_id: int | None) -> tuple[str, list[dict[str, Any]]]:
        parts: list[str] = []
        retrieved: list[dict[str, Any]] = []
        m = self.settings.memory
        if self.memory is not None and m.top_k > 0 and m.token_budget > 0 and query.strip():
            items = await self._search(agency_id, handle, role, query, project_id)
            lines, used = _pack(items[: m.top_k], m.token_budget)
            parts += lines
            retrieved += [{"id": it.hit.id, "kind": it.hit.kind, "distance": round(float(it.hit.distance), 4),
                           "source": (it.hit.metadata or {}).get("source"), "scope": it.scope} for it in used]
        if role == "pm" and self.db is not None and self.records is not None:
            records = await self._records(agency_id)
            if records:
                parts.append("Track record of the stored specialists (prefer those that did well; reuse by handle):")
                parts += [line for line, _ in records]
                retrieved += [{"id": f"member:{mid}", "kind": "record", "distance": None, "source": "record", "scope": "record"}
                              for _, mid in records]
        return "\n".join(parts), retrieved

    async def _search(self, agency_id: int, handle: str, role: str | None, query: str, project_id: int | None) -> list[_Item]:
        assert self.memory is not None
        k = self.settings.memory.top_k
        lesson_where: list[dict[str, Any]] = [{"member": handle}, {"source": AGENCY_LESSON}]
        if role:
            lesson_where.append({"role": role})
        exclude: set[str] = set()
        if project_id is not None and self.db is not None:
            exclude = await self._sync_project(project_id, handle)
        searches = [
            self.memory.search(agency_id, query, kinds=["lesson"], where={"$or": lesson_where}, limit=k * 2),
            self.memory.search(agency_id, query, kinds=["knowledge"], limit=k),
        ]
        if project_id is not None:
            searches.append(self.memory.search(agency_id, query, kinds=["work"], where={"project_id": project_id}, limit=k + len(exclude)))
        results = await asyncio.gather(*searches)
        items: list[_Item] = []
        seen: set[str] = set()
        for hits in results:
            for h in hits:
                if h.id in seen:
                    continue
                meta = h.metadata or {}
                if h.kind == "lesson":
                    scope = "own lesson" if meta.get("member") == handle else ("agency lesson" if meta.get("source") == AGENCY_LESSON else "role lesson")
                elif h.kind == "work":
                    if meta.get("source") in exclude or h.distance > MAX_DISTANCE:
                        continue
                    scope = "project work"
                else:
                    if h.distance > MAX_DISTANCE:
                        continue
                    scope = "knowledge"
                seen.add(h.id)
                items.append(_Item(h, scope))
        items.sort(key=lambda it: (it.score, it.hit.id))
        return items

    async def _sync_project(self, pid: int, handle: str) -> set[str]:
        """Store the project's finished outputs not yet in memory; return the task keys the prompt already has."""
        assert self.memory is not None
        lock = self._locks.setdefault(pid, asyncio.Lock())
        async with lock:
            new = await _done_work(self.db, pid, exclude=self._synced)
            if new:
                await self.memory.add([e for _, e in new])
                self._synced.update(i for i, _ in new)
                log.debug("memory: stored %d finished outputs of project %s", len(new), pid)
        async with self.db.session() as s:
            mine = (await s.execute(
                select(TaskRow.id, TaskRow.key).join(MemberRow, MemberRow.id == TaskRow.assignee_id)
                .where(TaskRow.project_id == pid, MemberRow.handle == handle, TaskRow.status.in_(("running", "review")))
            )).all()
            if not mine:
                return set()
            deps = (await s.execute(
                select(TaskRow.key).join(TaskDepRow, TaskDepRow.depends_on_id == TaskRow.id)
                .where(TaskDepRow.task_id.in_([i for i, _ in mine]))
            )).scalars()
            return {*deps, *(key for _, key in mine)}

    async def _records(self, agency_id: int) -> list[tuple[str, int]]:
        assert self.db is not None and self.records is not None
        out: list[tuple[str, int]] = []
        async with self.db.session() as s:
            members = (await s.execute(
                select(MemberRow).where(MemberRow.agency_id == agency_id, MemberRow.kind == "specialist", MemberRow.active == 1)
                .order_by(MemberRow.handle).limit(_MAX_RECORDS)
            )).scalars().all()
            ids = [m.id for m in members]
            records = await self.records(s, ids)
            versions = dict((await s.execute(
                select(SystemMessageRow.member_id, func.max(SystemMessageRow.version))
                .where(SystemMessageRow.member_id.in_(ids), SystemMessageRow.status == "active").group_by(SystemMessageRow.member_id)
            )).all()) if ids else {}
            for mem in members:
                r = records[mem.id]
                if not r.get("tasks_done") and not r.get("reviews"):
                    continue
                version = versions.get(mem.id)
                out.append((f"- @{mem.handle} ({mem.role}): {render_record(r)}" + (f"; system message v{version}" if version else ""), mem.id))
        return out


def render_record(r: dict[str, Any]) -> str:
    """Performance figures in one line, e.g. for prompts and ``/specialist show``."""
    parts = [f"{r.get('tasks_done', 0)} tasks done"]
    if r.get("acceptance_rate") is not None:
        parts.append(f"acceptance {r['acceptance_rate']:.0%}")
    if r.get("revisions_per_task") is not None:
        parts.append(f"{r['revisions_per_task']} revisions/task")
    parts.append(f"{r.get('escalations', 0)} escalations")
    if r.get("tokens_per_task") is not None:
        parts.append(f"{int(r['tokens_per_task'])} tokens/task")
    if (r.get("avg_latency_ms") or 0) >= 1:
        parts.append(f"{int(r['avg_latency_ms'])} ms/call")
    if r.get("director_rating") is not None:
        parts.append(f"Director rating {r['director_rating']}/5")
    return ", ".join(parts)


def make_recall(memory: Memory | None, settings: Settings, *, db: Any = None, records: RecordsFn | None = None) -> Recall:
    """The engine's ``recall`` hook: ``(agency_id, handle, role, query, project_id) -> (text, retrieved)``.

    ``db`` lets it store a project's finished outputs before searching them and
    skip the outputs the prompt already has; ``records`` (``AgencyService.records``)
    adds the stored specialists' track records to the PM's memories.
    """
    return _Recaller(memory, settings, db, records)
