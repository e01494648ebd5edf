"""Replay: run a recorded project again with a model that answers from the record.

The engine gives every model call a deterministic ``call_key``
(``p{project}:approaches:r0``, ``p{project}:plan:r0:a0``,
``t{task}:a{attempt}:r{revision}:s{step}``, ``...:review``, ``...:ask:Handle``,
``t{task}:a0:escalation``, ``p{project}:deliver``). Ids differ in a new
database, so keys are normalised to the project and the task *key*
(``project:plan:r0:a0``, ``task:T2:a0:r0:s1``) and the n-th request for a
normalised key gets the n-th recorded answer for it (the invalid reply, then
its repair, as recorded). Matching by key, not by arrival order, makes the
replay independent of the order in which concurrent tasks ask.

:func:`replay_project` runs a fresh project with the recorded objective and
oversight in a temporary database, seeded with the agency's members, and makes
the recorded Director decisions (approve with the recorded choice, reject with
the recorded reason). It then compares tasks (keys, titles, assignees, tiers,
final states), the project's final state and the deliverable, and reports every
divergence, the first one first: a request with no recorded answer
(``replay call 7 (specialist work task:T2:a0:r1:s0): no recorded answer``), a
decision the record does not have, a task in another state, a different
deliverable, or recorded calls the replay never needed.

Not replayed: budgets (the replay runs without one, so budget gates are
skipped), the Director's free-text messages, human specialists' work (the
replay stops, waiting, at a human task), memory recall (prompts may differ;
answers come from the record) and the Learning Manager's calls after delivery.
"""
from __future__ import annotations

import asyncio
import logging
import re
import tempfile
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import func, select

from agency.db.session import Database
from agency.db.tables import (
    AgencyRow,
    ApprovalRow,
    EventRow,
    LLMCallRow,
    MemberRow,
    ProjectRow,
    SystemMessageRow,
    TaskRow,
)
from agency.errors import LLMError, NotFoundError
from agency.llm.base import ModelReply, ModelRequest
from agency.llm.client import CallContext, LLMClient, ModelSet
from agency.models import TERMINAL, Actor
from agency.settings import MetricsSettings, Settings

log = logging.getLogger(__name__)
T = TypeVar("T", bound=BaseModel)
REPLAY_DIRECTOR = Actor(name="Director (replay)", external_user_id="replay-director", is_director=True)
REPLAY_AGENCY = "replay"
_PROJECT_KEY = re.compile(r"^p\d+:")
_TASK_KEY = re.compile(r"^t(\d+):")


class ReplayMissError(LLMError):
    """The replay asked for an answer the record does not have."""


def normalise_key(call_key: str | None, task_keys: Mapping[int, str]) -> str | None:
    """``p7:plan:r0:a0`` -> ``project:plan:r0:a0``; ``t42:a0:r1:s0#invalid`` -> ``task:T2:a0:r1:s0``."""
    if not call_key:
        return None
    key = call_key.split("#", 1)[0]
    if _PROJECT_KEY.match(key):
        return "project:" + _PROJECT_KEY.sub("", key, count=1)
    m = _TASK_KEY.match(key)
    if m:
        tid = int(m[1])
        return f"task:{task_keys.get(tid, f'#{tid}')}:" + key[m.end():]
    return key


@dataclass(frozen=True)
class RecordedCall:
    index: int  # 1-based position among the project's recorded calls
    key: str | None  # normalised
    role: str
    purpose: str
    model: str
    response: str | None
    outcome: str | None
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    simulated: bool

    @property
    def engine_call(self) -> bool:
        """A call the engine makes while running the project (the Learning Manager's are not replayed)."""
        return self.role != "learning" and (self.key or "").startswith(("project:", "task:"))

    def describe(self) -> str:
        return f"{self.role} {self.purpose} {self.key or '(no key)'}"


@dataclass(frozen=True)
class RecordedTask:
    key: str
    title: str
    status: str
    assignee: str | None
    tier: str | None


@dataclass(frozen=True)
class RecordedApproval:
    kind: str
    subject: str
    status: str
    choice: int | None
    reason: str | None


@dataclass
class Recording:
    """Everything a replay needs from the source database."""

    project_id: int
    objective: str
    oversight: str
    status: str
    dry_run: bool
    deliverable: str | None
    tasks: dict[str, RecordedTask]
    calls: list[RecordedCall]
    approvals: list[RecordedApproval]
    resumes: int
    members: list[dict[str, Any]] = field(default_factory=list)


async def load_recording(db: Database, project_id: int) -> Recording:
    async with db.session() as s:
        p = await s.get(ProjectRow, project_id)
        if p is None:
            raise NotFoundError(f"There is no project #{project_id}.")
        members = {m.id: m for m in (await s.execute(select(MemberRow).where(MemberRow.agency_id == p.agency_id))).scalars()}
        task_rows = list((await s.execute(select(TaskRow).where(TaskRow.project_id == project_id))).scalars())
        keys = {t.id: t.key for t in task_rows}
        tasks = {t.key: RecordedTask(t.key, t.title, t.status, members[t.assignee_id].handle if t.assignee_id in members else None, t.tier)
                 for t in task_rows}
        rows = list((await s.execute(select(LLMCallRow).where(LLMCallRow.project_id == project_id).order_by(LLMCallRow.id))).scalars())
        calls = [RecordedCall(i, normalise_key(r.call_key, keys), r.role, r.purpose, r.model, r.response, r.outcome, r.error,
                              r.prompt_tokens, r.completion_tokens, bool(r.simulated)) for i, r in enumerate(rows, 1)]
        approvals = [RecordedApproval(a.kind, a.subject, a.status, a.choice, a.reason) for a in
                     (await s.execute(select(ApprovalRow).where(ApprovalRow.project_id == project_id).order_by(ApprovalRow.id))).scalars()]
        resumes = (await s.execute(select(func.count(EventRow.id)).where(EventRow.project_id == project_id, EventRow.kind == "resumed"))).scalar() or 0
        seeds = []
        for m in members.values():
            sysmsg = (await s.execute(select(SystemMessageRow).where(SystemMessageRow.member_id == m.id, SystemMessageRow.status == "active")
                                      .order_by(SystemMessageRow.version.desc()).limit(1))).scalar_one_or_none()
            seeds.append({"handle": m.handle, "kind": m.kind, "role": m.role, "definition": m.definition, "external_user_id": m.external_user_id,
                          "display_name": m.display_name, "tier": m.tier, "active": m.active, "system_message": sysmsg.text if sysmsg else None})
        return Recording(project_id=p.id, objective=p.objective, oversight=p.oversight, status=p.status, dry_run=bool(p.dry_run),
                         deliverable=p.deliverable, tasks=tasks, calls=calls, approvals=approvals, resumes=int(resumes), members=seeds)


class ReplayModel:
    """A chat model that answers each request from the recorded calls (see the module docstring)."""

    name = "replay"

    def __init__(self, calls: list[RecordedCall]) -> None:
        self.calls = calls
        self.queues: dict[str, list[RecordedCall]] = defaultdict(list)
        for c in calls:
            self.queues[c.key or f"{c.role}/{c.purpose}"].append(c)
        self.used: dict[str, int] = defaultdict(int)
        self.requests = 0
        self.divergences: list[str] = []

    async def generate(self, request: ModelRequest) -> ModelReply:
        self.requests += 1
        key = request.meta.get("_replay_key") or f"{request.role}/{request.purpose}"
        i = self.used[key]
        self.used[key] += 1
        queue = self.queues.get(key, [])
        if i >= len(queue):
            what = f"replay call {self.requests} ({request.role} {request.purpose} {key})"
            self.divergences.append(f"{what}: no recorded answer" + (f" (the record has {len(queue)})" if queue else ""))
            raise ReplayMissError(f"{what} has no recorded answer")
        rec = queue[i]
        if rec.outcome == "error" or rec.response is None:
            raise LLMError(rec.error or "the recorded call failed")
        return ModelReply(text=rec.response, model=rec.model or (request.model or self.name), prompt_tokens=rec.prompt_tokens,
                          completion_tokens=rec.completion_tokens, simulated=rec.simulated)

    def unused(self) -> list[RecordedCall]:
        """Recorded engine calls the replay never asked for, in recorded order."""
        out = []
        for key, queue in self.queues.items():
            out += [c for c in queue[self.used.get(key, 0):] if c.engine_call]
        return sorted(out, key=lambda c: c.index)


class ReplayLLMClient(LLMClient):
    """The LLM client, telling the replay model which normalised key each request is for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._task_keys: dict[int, str] = {}

    async def call(self, schema: type[T], messages: list[dict[str, str]], ctx: CallContext, **kw: Any) -> T:
        ctx.meta = {**ctx.meta, "_replay_key": await self._key(ctx.call_key)}
        return await super().call(schema, messages, ctx, **kw)

    async def _key(self, call_key: str | None) -> str | None:
        m = _TASK_KEY.match(call_key or "")
        if m and int(m[1]) not in self._task_keys:
            async with self.db.session() as s:
                t = await s.get(TaskRow, int(m[1]))
                if t is not None:
                    self._task_keys[t.id] = t.key
        return normalise_key(call_key, self._task_keys)


@dataclass
class ReplayResult:
    project_id: int
    replay_project_id: int | None
    recorded_status: str
    replay_status: str
    calls_recorded: int
    calls_replayed: int
    tasks: int
    divergences: list[str]

    @property
    def ok(self) -> bool:
        return not self.divergences

    @property
    def first_divergence(self) -> str | None:
        return self.divergences[0] if self.divergences else None

    def render(self) -> str:
        head = (f"Project #{self.project_id}: recorded {self.recorded_status}, replay {self.replay_status}; "
                f"{self.calls_replayed} of {self.calls_recorded} recorded calls replayed; {self.tasks} tasks compared.")
        if self.ok:
            return head + "\nThe replay reached the same tasks, states and deliverable."
        more = f"\n({len(self.divergences) - 1} more divergence(s) after it)" if len(self.divergences) > 1 else ""
        return head + f"\nFirst divergence: {self.divergences[0]}{more}"


def _natural(key: str) -> list[Any]:
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", key)]


def _normalise_deliverable(text: str | None) -> str | None:
    if text is None:
        return None
    text = re.sub(r"(?i)project #\d+", "project #N", text)
    text = re.sub(r"project-\d+", "project-N", text)
    return re.sub(r"\$[0-9][0-9.,]*", "$X", text)


def compare(recording: Recording, tasks: dict[str, RecordedTask], status: str, deliverable: str | None) -> list[str]:
    """The differences between the recorded and the replayed outcome, in a stable order."""
    out: list[str] = []
    for key in sorted({*recording.tasks, *tasks}, key=_natural):
        a, b = recording.tasks.get(key), tasks.get(key)
        if b is None:
            out.append(f"task {key}: recorded ({a.title!r}, {a.status}) but not in the replay")  # type: ignore[union-attr]
            continue
        if a is None:
            out.append(f"task {key}: in the replay ({b.title!r}, {b.status}) but not recorded")
            continue
        for attr, name in (("title", "title"), ("assignee", "assignee"), ("tier", "tier"), ("status", "state")):
            va, vb = getattr(a, attr), getattr(b, attr)
            if va != vb:
                out.append(f"task {key}: recorded {name} {va!r}, replay {vb!r}" if attr != "status" else f"task {key}: recorded state {va}, replay {vb}")
    if recording.status != status:
        out.append(f"project: recorded state {recording.status}, replay {status}")
    da, db = _normalise_deliverable(recording.deliverable), _normalise_deliverable(deliverable)
    if da != db:
        if da is None or db is None:
            out.append(f"deliverable: {'none' if da is None else 'present'} in the record, {'none' if db is None else 'present'} in the replay")
        else:
            la, lb = da.splitlines(), db.splitlines()
            n = next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y), min(len(la), len(lb)))
            ra = la[n] if n < len(la) else "(end)"
            rb = lb[n] if n < len(lb) else "(end)"
            out.append(f"deliverable: differs at line {n + 1}: recorded {ra[:120]!r}, replay {rb[:120]!r}")
    return out


async def _seed_agency(service: Any, members: list[dict[str, Any]]) -> None:
    async with service.db.session() as s:
        agency = (await s.execute(select(AgencyRow).where(AgencyRow.external_id == REPLAY_AGENCY))).scalar_one()
        for m in members:
            row = MemberRow(agency_id=agency.id, handle=m["handle"], kind=m["kind"], role=m["role"], definition=m["definition"],
                            external_user_id=m["external_user_id"], display_name=m["display_name"], tier=m["tier"], active=m["active"])
            s.add(row)
            await s.flush()
            if m["system_message"]:
                s.add(SystemMessageRow(member_id=row.id, version=1, text=m["system_message"], status="active", reason="copied for a replay"))
        await s.commit()


async def _replayed_tasks(service: Any, pid: int) -> dict[str, RecordedTask]:
    async with service.db.session() as s:
        handles = {m.id: m.handle for m in (await s.execute(select(MemberRow))).scalars()}
        return {t.key: RecordedTask(t.key, t.title, t.status, handles.get(t.assignee_id), t.tier)
                for t in (await s.execute(select(TaskRow).where(TaskRow.project_id == pid))).scalars()}


async def replay_project(settings: Settings, source_db_url: str, project_id: int, *, timeout: float = 300.0) -> ReplayResult:
    """Replay project ``project_id`` of the database at ``source_db_url``; see the module docstring."""
    src = Database(source_db_url)
    try:
        await src.upgrade()
        recording = await load_recording(src, project_id)
    finally:
        await src.dispose()
    with tempfile.TemporaryDirectory(prefix="ateams-replay-") as tmp:
        return await replay_recording(settings, recording, Path(tmp), timeout=timeout)


async def replay_recording(settings: Settings, recording: Recording, workdir: Path, *, timeout: float = 300.0) -> ReplayResult:
    from agency.console import ConsoleChat
    from agency.wiring import compose

    cfg = settings.model_copy(update={
        "data_dir": workdir, "database_url": None, "dry_run": recording.dry_run,
        "memory": settings.memory.model_copy(update={"enabled": False}),
        "metrics": MetricsSettings(port=0),  # no metrics server for a replay
        "engine": settings.engine.model_copy(update={"budget_usd": None, "budget_tokens": None}),
    })
    db = Database.from_settings(cfg)
    await db.upgrade()
    model = ReplayModel(recording.calls)
    models = ModelSet({name: (model, t.model) for name, t in cfg.llm.tiers.items()}, cfg.llm.default_tier, simulated=recording.dry_run)
    service = compose(cfg, db, ConsoleChat(quiet=True), models=models, extras=False, llm_class=ReplayLLMClient)
    divergences: list[str] = []
    pid: int | None = None
    status = "new"
    try:
        await service.ensure_agency(REPLAY_AGENCY, "Replay")
        await _seed_agency(service, recording.members)
        await service.start()
        info = await service.new_project(REPLAY_AGENCY, recording.objective, oversight=recording.oversight, actor=REPLAY_DIRECTOR)
        pid = info.id
        status = await _drive(service, pid, recording, model, divergences, timeout)
        await service.engine.stop()
        tasks = await _replayed_tasks(service, pid)
        deliverable = await service.deliverable(pid)
    finally:
        await service.close()
    runtime = model.divergences + divergences
    found = runtime + compare(recording, tasks, status, deliverable)
    if not found:
        found = [f"call {c.index} ({c.describe()}): recorded but never asked for in the replay" for c in model.unused()]
    engine_calls = sum(1 for c in recording.calls if c.engine_call)
    log.info("replay of project %s: %s", recording.project_id, "identical" if not found else found[0])
    return ReplayResult(project_id=recording.project_id, replay_project_id=pid, recorded_status=recording.status, replay_status=status,
                        calls_recorded=engine_calls, calls_replayed=model.requests, tasks=len(recording.tasks), divergences=found)


async def _drive(service: Any, pid: int, recording: Recording, model: ReplayModel, divergences: list[str], timeout: float) -> str:
    """Answer the replay's approvals with the recorded decisions until it ends, diverges or stops where the record stops."""
    decisions: dict[tuple[str, str], deque[RecordedApproval]] = defaultdict(deque)
    for a in recording.approvals:
        if a.kind != "budget":  # the replay runs without a budget
            decisions[(a.kind, a.subject)].append(a)
    resumes = recording.resumes
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        info = await service.project(pid)
        if model.divergences or info.status in TERMINAL:
            return info.status
        if info.status == "blocked":
            if resumes > 0 and recording.status != "blocked":
                resumes -= 1
                await service.resume(pid, REPLAY_DIRECTOR)
                continue
            return info.status
        a = await service.engine.pending_approval(pid)
        if a is not None:
            queue = decisions.get((a.kind, a.subject))
            rec = queue.popleft() if queue else None
            if rec is None:
                divergences.append(f"approval {a.kind} {a.subject!r}: the replay asks the Director, the record has no such decision")
                return info.status
            if rec.status == "pending":  # the record ends here, waiting for the Director
                return info.status
            if rec.status == "superseded":
                if recording.status == "cancelled":
                    await service.cancel(pid, REPLAY_DIRECTOR)
                    continue
                return info.status
            await service.decide(a.id, rec.status == "approved", REPLAY_DIRECTOR,
                                 reason=rec.reason or ("rejected" if rec.status == "rejected" else None), choice=rec.choice)
            continue
        if loop.time() > end:
            divergences.append(f"timeout: the replay was still {info.status} after {timeout:.0f} s")
            return info.status
        await asyncio.sleep(0.02)
