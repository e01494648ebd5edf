"""AgencyService: the one API the adapters (Discord, terminal, tests) call."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select

from agency import commands as cmdlib
from agency.db import repos
from agency.db.records import member_record, member_records
from agency.db.repos import SYSTEM, overview, post
from agency.db.session import Database
from agency.db.tables import (
    AgencyRow,
    ApprovalRow,
    FeedbackRow,
    MemberRow,
    MessageRow,
    ProjectRow,
    SpaceRow,
    StreamMemberRow,
    StreamRow,
    TaskRow,
    utcnow,
)
from agency.engine import PM_HANDLE, Engine, ProjectPaused
from agency.engine.tasks import ACTIVE, supersede_approvals
from agency.errors import AgencyError, CommandError, NotFoundError, PermissionDeniedError
from agency.llm.client import CallContext, LLMClient, ModelSet
from agency.llm.simulated import NOTICE, SimulatedModel
from agency.llm.usage import format_usd
from agency.logs import redact
from agency.models import TERMINAL, Actor, MemberInfo, ProjectInfo, StatusReport, TaskInfo
from agency.outbox import OutboxDispatcher
from agency.ports import ChatPort
from agency.roles import specialist as spec_role
from agency.schemas import AgentTurn, ProjectRequest
from agency.settings import Settings
from agency.states import APPROVAL, PROJECT, TASK, ApprovalState, ProjectState, TaskState, transition
from specialists.loader import Catalogue

log = logging.getLogger(__name__)


def build_tools(settings: Settings, memory: Any, db: Database) -> Any:
    """The tool registry from the ``[tools]`` settings; every call is recorded as an event."""
    from agency.tools.python_sandbox import SandboxLimits
    from agency.tools.registry import ToolPolicy, build_registry

    t = settings.tools
    policy = ToolPolicy(
        enabled=frozenset(t.enabled),
        python=SandboxLimits(cpu_seconds=t.python_cpu_seconds, memory_mb=t.python_memory_mb,
                             wall_seconds=t.python_wall_seconds, output_chars=t.python_output_chars),
        web_search_enabled=t.web_search,
    )
    return build_registry(policy, memory=memory)


def build_model_set(settings: Settings, *, dry_run: bool | None = None) -> ModelSet:
    """Real models when an endpoint or key is configured; otherwise the simulator (a dry run)."""
    dry = settings.dry_run if dry_run is None else dry_run
    if dry or not settings.has_model_endpoint:
        return ModelSet({name: (SimulatedModel(t.model), t.model) for name, t in settings.llm.tiers.items()},
                        settings.llm.default_tier, simulated=True)
    from agency.llm.openai import OpenAIModel

    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    providers: dict[str | None, Any] = {}
    tiers: dict[str, tuple[Any, str]] = {}
    for name, t in settings.llm.tiers.items():
        base = t.base_url or settings.llm.base_url
        if base not in providers:
            providers[base] = OpenAIModel(model=t.model, base_url=base, api_key=key, mode=settings.llm.mode,
                                          timeout=settings.llm.timeout_seconds, transport=settings.llm.http_transport)
        tiers[name] = (providers[base], t.model)
    return ModelSet(tiers, settings.llm.default_tier, simulated=False)


@dataclass
class CommandResult:
    """What a text command answered; ``ephemeral`` replies go only to the caller."""

    text: str
    ephemeral: bool = True
    data: dict[str, Any] = field(default_factory=dict)


class AgencyService:
    """The one API the adapters call. Built by :func:`agency.wiring.build_service` (the composition root),
    which hands it the engine and every optional part."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        llm: LLMClient,
        chat: ChatPort | None,
        *,
        engine: Engine,
        catalogue: Catalogue,
        memory: Any = None,
        learning: Any = None,
        extra_commands: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.llm = llm
        self.catalogue = catalogue
        self.memory = memory
        self.engine = engine
        self.learning = learning  # agency.learning.LearningManager, or None when learning is off
        self.chat = chat
        self.dispatcher = OutboxDispatcher(db, chat, self.engine.outbox_ready) if chat is not None else None
        self._status_dirty: set[int] = set()
        self._status_task: asyncio.Task[None] | None = None
        self._status_event = asyncio.Event()
        self._status_lock = asyncio.Lock()  # one writer of status messages at a time (the loop or settle)
        self.engine.on_change.append(self._mark_status)
        # more commands (learning, memory): name -> async (service, agency, address, actor, cmd) -> CommandResult
        self.extra_commands: dict[str, Any] = dict(extra_commands or {})
        self._on_close: list[Any] = []  # async callables run by close() (memory, metrics), last first

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    async def create(cls, settings: Settings, chat: ChatPort | None = None, *, models: ModelSet | None = None,
                     memory: Any = None, upgrade: bool = True) -> "AgencyService":
        """The service with only the core parts (no memory recall, learning or metrics): see
        :func:`agency.wiring.build_service` for the whole agency."""
        from agency.wiring import build_service

        return await build_service(settings, chat, models=models, memory=memory, upgrade=upgrade, extras=False)

    async def start(self) -> list[int]:
        from agency.watchdog import Watchdog

        if self.dispatcher is not None:
            self.dispatcher.start()
        self.db.start_checkpoints()  # the WAL's fsyncs happen in a worker thread, not on the loop
        self._status_task = asyncio.create_task(self._status_loop(), name="status")
        resumed = await self.engine.start()
        self.watchdog = Watchdog(self.engine, interval_seconds=max(5.0, min(60.0, self.settings.engine.task_deadline_seconds / 10)))
        self.watchdog.start()
        return resumed

    async def stop(self) -> None:
        """Graceful: stop scheduling, let committed state stand, flush the outbox once."""
        if getattr(self, "watchdog", None) is not None:
            self.watchdog.stop()
        await self.engine.stop()
        if self._status_task:
            self._status_task.cancel()
            await asyncio.gather(self._status_task, return_exceptions=True)
            await self._flush_status()  # the last status the Director sees is the true one
        if self.dispatcher is not None:
            await self.dispatcher.stop()
            try:
                await asyncio.wait_for(self.dispatcher.drain(), 10)
            except Exception:
                log.warning("outbox not fully drained at shutdown; it will be delivered after the restart")

    def on_close(self, fn: Any) -> None:
        """Run ``fn`` (async, no arguments) when the service closes, before the database closes (last added, first run)."""
        self._on_close.append(fn)

    async def close(self) -> None:
        try:
            await self.stop()
            for fn in reversed(self._on_close):
                try:
                    await fn()
                except Exception:
                    log.exception("closing %r failed", fn)
        finally:
            await self.llm.models.aclose()  # the HTTP connections to the model endpoint
            await self.db.dispose()

    # -- agencies and projects ----------------------------------------------------------------
    async def ensure_agency(self, external_id: str, name: str) -> int:
        async with self.db.session() as s:
            a = await repos.get_or_create_agency(s, external_id, name)
            await s.commit()
            return a.id

    async def _agency(self, s: Any, external_id: str) -> AgencyRow:
        a = (await s.execute(select(AgencyRow).where(AgencyRow.external_id == external_id))).scalar_one_or_none()
        if a is None:
            raise NotFoundError("This server has no agency yet: run `/agency setup` first.")
        return a

    async def new_project(self, agency_external_id: str, objective: str, *, oversight: str | None = None,
                          budget_usd: float | None = None, budget_tokens: int | None = None, actor: Actor | None = None) -> ProjectInfo:
        if actor is not None and not actor.is_director:
            raise PermissionDeniedError("Only the Director can start a project.")
        try:
            # validated from a dict: oversight is whatever the person typed, checked here against the levels
            req = ProjectRequest.model_validate({
                "objective": redact(objective or ""), "oversight": oversight or self.settings.engine.default_oversight,
                "budget_usd": budget_usd if budget_usd is not None else self.settings.engine.budget_usd,
                "budget_tokens": budget_tokens if budget_tokens is not None else self.settings.engine.budget_tokens})
        except ValidationError as e:
            raise AgencyError("Cannot start the project: " + "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())) from None
        async with self.db.session() as s:
            a = await self._agency(s, agency_external_id)
            p = ProjectRow(agency_id=a.id, objective=req.objective, oversight=req.oversight, status=ProjectState.NEW,
                           budget_usd=req.budget_usd, budget_tokens=req.budget_tokens, director_notes=[],
                           dry_run=int(self.llm.simulated))
            s.add(p)
            await s.flush()
            short = req.objective if len(req.objective) <= 60 else req.objective[:57] + "..."
            await repos.declare_space(s, a.id, repos.project_addr(p.id), "project", f"P{p.id} {short}"[:100], topic=req.objective)
            await repos.declare_space(s, a.id, overview(p.id), "overview", "overview", parent=repos.project_addr(p.id), topic=req.objective)
            dry = f"\n{NOTICE} No model endpoint is configured, so this is a dry run." if self.llm.simulated else ""
            post(s, a.id, p.id, "hq", SYSTEM, f"Project #{p.id} started ({req.oversight} oversight): {req.objective}{dry}")
            post(s, a.id, p.id, overview(p.id), PM_HANDLE, f"Objective: {req.objective}\nOversight: {req.oversight}."
                 + (f" Budget: {format_usd(req.budget_usd)}." if req.budget_usd else "")
                 + (f" Budget: {req.budget_tokens} tokens." if req.budget_tokens else "") + dry)
            repos.event(s, p.id, "created", objective=req.objective, oversight=req.oversight)
            await s.commit()
            info = self._info(p)
        self.llm.fresh_projects.add(info.id)
        self.engine.outbox_ready.set()
        self.engine.spawn(info.id)
        return info

    @staticmethod
    def _info(p: ProjectRow) -> ProjectInfo:
        return ProjectInfo(id=p.id, agency_id=p.agency_id, objective=p.objective, oversight=p.oversight, status=p.status,
                           dry_run=bool(p.dry_run), deliverable_title=p.deliverable_title, error=p.error)

    async def project(self, project_id: int) -> ProjectInfo:
        async with self.db.session() as s:
            p = await s.get(ProjectRow, project_id)
            if p is None:
                raise NotFoundError(f"There is no project #{project_id}.")
            return self._info(p)

    async def projects(self, agency_external_id: str, *, active_only: bool = False) -> list[ProjectInfo]:
        async with self.db.session() as s:
            a = await self._agency(s, agency_external_id)
            q = select(ProjectRow).where(ProjectRow.agency_id == a.id).order_by(ProjectRow.id.desc())
            if active_only:
                q = q.where(ProjectRow.status.not_in(TERMINAL))
            return [self._info(p) for p in (await s.execute(q)).scalars()]

    async def deliverable(self, project_id: int) -> str | None:
        async with self.db.session() as s:
            p = await s.get(ProjectRow, project_id)
            return p.deliverable if p else None

    async def scoped_project(self, s: Any, project_id: int, actor: Actor | None) -> ProjectRow:
        """The project ``project_id`` as the caller may name it: inside the caller's agency (``actor.agency``,
        set by every adapter for a person). Another agency's project answers exactly like an unknown one."""
        p = await s.get(ProjectRow, project_id)
        if p is not None and actor is not None and actor.agency is not None:
            a = await self._agency(s, actor.agency)
            if p.agency_id != a.id:
                p = None
        if p is None:
            raise NotFoundError(f"There is no project #{project_id}.")
        return p

    async def resolve_project(self, agency_external_id: str, project_id: int | None = None, address: str | None = None) -> int:
        """The project meant by a command: explicit (it must belong to this agency), the one whose space it
        was typed in, or the latest active."""
        async with self.db.session() as s:
            a = await self._agency(s, agency_external_id)
            if project_id:
                p = await s.get(ProjectRow, project_id)
                if p is None or p.agency_id != a.id:
                    raise NotFoundError(f"There is no project #{project_id}.")
                return project_id
            if address:
                pid = await self._project_of_address(s, a.id, address)
                if pid:
                    return pid
            latest = (await s.execute(select(ProjectRow.id).where(ProjectRow.agency_id == a.id, ProjectRow.status.not_in(TERMINAL)).order_by(ProjectRow.id.desc()).limit(1))).scalar_one_or_none()
            if latest is None:
                latest = (await s.execute(select(ProjectRow.id).where(ProjectRow.agency_id == a.id).order_by(ProjectRow.id.desc()).limit(1))).scalar_one_or_none()
            if latest is None:
                raise NotFoundError("There is no project yet: start one with `/project new`.")
            return latest

    async def _project_of_address(self, s: Any, agency_id: int, address: str) -> int | None:
        kind, _, rest = address.partition(":")
        pid: int | None = None
        if kind in ("overview", "project") and rest.isdigit():
            pid = int(rest)
        elif kind in ("stream", "thread") and rest.split(":")[0].isdigit():
            st = await s.get(StreamRow, int(rest.split(":")[0]))
            pid = st.project_id if st else None
        if pid is None:
            return None
        p = await s.get(ProjectRow, pid)
        return pid if p is not None and p.agency_id == agency_id else None  # a space of another agency means nothing here

    # -- status ---------------------------------------------------------------------------------
    async def status(self, project_id: int) -> StatusReport:
        async with self.db.session() as s:
            f = await repos.project_frame(s, project_id)
            p, tasks, streams, members = f.project, f.tasks, f.streams, f.members
            deps = await repos.task_deps(s, project_id)
            keys = {t.id: t.key for t in tasks}
            infos = [TaskInfo(key=t.key, title=t.title, stream=streams.get(t.stream_id, "?"), assignee=members.get(t.assignee_id, "?"),
                              status=t.status, depends_on=[keys[d] for d in deps.get(t.id, [])], revision=t.revision, tier=t.tier,
                              completions=t.completions) for t in tasks]
            by_stream: dict[str, dict[str, int]] = {}
            for t in infos:
                by_stream.setdefault(t.stream, {}).setdefault(t.status, 0)
                by_stream[t.stream][t.status] += 1
            approvals = [(a.id, a.kind, a.subject) for a in (await s.execute(select(ApprovalRow).where(ApprovalRow.project_id == project_id, ApprovalRow.status == "pending"))).scalars()]
            tokens, cost, calls = await repos.project_usage(s, project_id)
            from sqlalchemy import and_, func, or_

            from agency.db.tables import MessageRow
            from agency.states import MessageState

            # messages of this project (and the agency's own) that the chat refused for good, by reason
            undeliverable = [(int(n), why or "") for n, why in (await s.execute(
                select(func.count(MessageRow.id), MessageRow.error).where(
                    MessageRow.status == MessageState.UNDELIVERABLE,
                    or_(MessageRow.project_id == project_id, and_(MessageRow.agency_id == p.agency_id, MessageRow.project_id.is_(None))))
                .group_by(MessageRow.error).order_by(func.count(MessageRow.id).desc()))).all()]
            end = p.finished_at or datetime.now(UTC)
            return StatusReport(
                project=self._info(p), tasks=infos, streams=by_stream,
                running=[f"{t.key} @{t.assignee}" for t in infos if t.status in ("running", "review")],
                blockers=[f"{t.key}: {next((x.blocked_reason for x in tasks if x.key == t.key), '')}" for t in infos if t.status == "blocked"]
                + ([p.error] if p.status == "blocked" and p.error else []),
                pending_approvals=approvals, tokens=tokens, cost_usd=cost, budget_usd=p.budget_usd, budget_tokens=p.budget_tokens,
                elapsed_seconds=(end - p.created_at).total_seconds(), calls=calls, dry_run=bool(p.dry_run),
                undeliverable=undeliverable,
            )

    @staticmethod
    def render_status(r: StatusReport) -> str:
        p = r.project
        lines = [f"**Project #{p.id}** - {p.status} - {r.done}/{len(r.tasks)} tasks done"]
        if r.dry_run:
            lines.append(NOTICE)
        for stream, states in r.streams.items():
            lines.append(f"#{stream}: " + ", ".join(f"{n} {st}" for st, n in sorted(states.items())))
        if r.running:
            lines.append("Running: " + ", ".join(r.running))
        if r.blockers:
            lines.append("Blockers: " + "; ".join(b for b in r.blockers if b))
        if r.undeliverable:
            n = sum(c for c, _ in r.undeliverable)
            lines.append(f"Undeliverable: {n} message{'s' if n != 1 else ''} (kept, delivered once fixed): "
                         + "; ".join(f"{why} ({c})" for c, why in r.undeliverable))
        if r.pending_approvals:
            lines.append("Waiting for the Director: " + ", ".join(f"{k} {s}".strip() for _, k, s in r.pending_approvals))
        budget = f" of {format_usd(r.budget_usd)}" if r.budget_usd else (f" of {r.budget_tokens} tokens" if r.budget_tokens else "")
        est = " (estimated)" if r.dry_run else ""
        lines.append(f"Spend: {format_usd(r.cost_usd)}{est}{budget} - {r.tokens} tokens in {r.calls} calls - {int(r.elapsed_seconds)} s elapsed")
        return "\n".join(lines)

    def _mark_status(self, project_id: int) -> None:
        self._status_dirty.add(project_id)
        self._status_event.set()

    async def _status_loop(self) -> None:
        """Keep one status message per project, edited in place (debounced)."""
        loop = asyncio.get_running_loop()
        while True:
            await self._status_event.wait()
            self._status_event.clear()
            await asyncio.sleep(0.5)  # debounce: at most two edits a second per project
            deadline = loop.time() + 0.5
            while self._status_event.is_set() and loop.time() < deadline:  # and not in the middle of a burst of steps
                self._status_event.clear()
                await asyncio.sleep(0.02)
            await self._flush_status()

    async def _flush_status(self) -> None:
        async with self._status_lock:
            dirty, self._status_dirty = self._status_dirty, set()
            for pid in sorted(dirty):
                await asyncio.sleep(0)  # one project's status at a time, other work in between
                try:
                    await self.post_status(pid)
                except Exception:
                    log.exception("status update failed (project=%s)", pid)

    async def settle(self) -> None:
        """Post the status updates that are due now and deliver the whole outbox:
        after it returns, everything the agency has said so far is out."""
        await self._flush_status()
        if self.dispatcher is not None:
            await self.dispatcher.drain()

    async def post_status(self, project_id: int) -> None:
        r = await self.status(project_id)
        if r.project.status in ("new",):
            return
        key = f"status:{project_id}"
        async with self.db.session() as s:
            await repos.supersede_pending(s, key)
            post(s, r.project.agency_id, project_id, overview(project_id), SYSTEM, self.render_status(r), kind="status", upsert_key=key)
            await s.commit()
        self.engine.outbox_ready.set()

    # -- Director actions -----------------------------------------------------------------------
    def _need_director(self, actor: Actor) -> None:
        if not actor.is_director:
            raise PermissionDeniedError("Only the Director (the server owner or the Director role) can do that.")

    async def pause(self, project_id: int, actor: Actor) -> str:
        self._need_director(actor)
        async with self.db.session() as s:
            p = await self.scoped_project(s, project_id, actor)
            if not await transition(s, PROJECT, p.id, ProjectState.PAUSED, frm=ACTIVE, project_id=p.id, event="paused", actor=actor.name,
                                    values={"paused_from": ProjectRow.status}):
                await s.rollback()
                await s.refresh(p)  # a rollback expires what the session loaded
                return f"Project #{project_id} is {p.status}."
            post(s, p.agency_id, p.id, overview(p.id), SYSTEM, f"Project #{p.id} paused by {actor.name}. Model calls in flight are stopped; "
                 "`/project resume` makes them again.")
            await s.commit()
        self.engine.abort_calls(project_id)
        self.engine._changed(project_id)
        return f"Project #{project_id} paused."

    async def resume(self, project_id: int, actor: Actor) -> str:
        self._need_director(actor)
        async with self.db.session() as s:
            p = await self.scoped_project(s, project_id, actor)
            values: dict[str, Any] = {"paused_from": None, "error": None}
            if p.status == ProjectState.BLOCKED and p.paused_from == ProjectState.PLANNING:  # a fresh round of plan attempts
                values.update(plan_round=ProjectRow.plan_round + 1, plan_attempt=0)
            if p.status not in (ProjectState.PAUSED, ProjectState.BLOCKED) or not await transition(
                    s, PROJECT, p.id, p.paused_from or ProjectState.RUNNING, frm=(p.status,), project_id=p.id, event="resumed", actor=actor.name,
                    where=[ProjectRow.paused_from == p.paused_from] if p.paused_from else [ProjectRow.paused_from.is_(None)], values=values):
                await s.rollback()
                await s.refresh(p)  # a rollback expires what the session loaded
                return f"Project #{project_id} is {p.status}; nothing to resume."
            await supersede_approvals(s, p.id, "budget")
            post(s, p.agency_id, p.id, overview(p.id), SYSTEM, f"Project #{p.id} resumed by {actor.name}.")
            await s.commit()
        self.engine.spawn(project_id)
        return f"Project #{project_id} resumed."

    async def cancel(self, project_id: int, actor: Actor) -> str:
        self._need_director(actor)
        async with self.db.session() as s:
            p = await self.scoped_project(s, project_id, actor)
            if not await self.engine.cancel_in(s, p, f"cancelled by {actor.name}"):
                await s.rollback()
                await s.refresh(p)  # a rollback expires what the session loaded
                return f"Project #{project_id} is already {p.status}."
            await s.commit()
        self.engine.abort_calls(project_id)
        self.engine.wake(project_id)
        self.engine._changed(project_id)
        return f"Project #{project_id} cancelled."

    async def set_budget(self, project_id: int, usd: float | None, actor: Actor) -> str:
        async with self.db.session() as s:
            p = await self.scoped_project(s, project_id, actor)
            tokens, cost, calls = await repos.project_usage(s, project_id)
            if usd is None:
                b = format_usd(p.budget_usd) if p.budget_usd else (f"{p.budget_tokens} tokens" if p.budget_tokens else "no budget")
                from agency.reports import project_costs, render_costs  # cost by stream, model, member (observability)

                return f"Project #{project_id}: spent {format_usd(cost)} ({tokens} tokens, {calls} calls); budget {b}.\n" + render_costs(await project_costs(s, project_id))
            self._need_director(actor)
            if usd <= cost:
                raise AgencyError(f"The project has already spent {format_usd(cost)}; set a budget above that.")
            p.budget_usd = usd
            p.budget_warned = 0
            resumed = False
            if p.status == ProjectState.PAUSED and await transition(
                    s, APPROVAL, None, ApprovalState.APPROVED, frm=(ApprovalState.PENDING,),
                    where=[ApprovalRow.project_id == p.id, ApprovalRow.kind == "budget"], values={"decided_by": actor.name, "decided_at": utcnow()}):
                resumed = bool(await transition(s, PROJECT, p.id, p.paused_from or ProjectState.RUNNING, frm=(ProjectState.PAUSED,),
                                                project_id=p.id, event="resumed", actor=actor.name, values={"paused_from": None}))
            post(s, p.agency_id, p.id, overview(p.id), SYSTEM, f"Budget set to {format_usd(usd)} by {actor.name}." + (" The project continues." if resumed else ""))
            repos.event(s, p.id, "budget_set", usd=usd)
            await s.commit()
        self.engine.spawn(project_id)
        return f"Budget of project #{project_id} set to {format_usd(usd)}."

    async def decide(self, approval_id: int, approved: bool, actor: Actor, *, reason: str | None = None, choice: int | None = None) -> str:
        self._need_director(actor)
        agency_id = await self._agency_id(actor.agency) if actor.agency is not None else None
        return await self.engine.decide(approval_id, approved, actor=actor.name, reason=redact(reason) if reason else reason, choice=choice,
                                        agency_id=agency_id)

    async def approve(self, project_id: int, actor: Actor, *, choice: int | None = None, approved: bool = True, reason: str | None = None) -> str:
        """Decide the project's oldest pending approval."""
        self._need_director(actor)
        async with self.db.session() as s:
            await self.scoped_project(s, project_id, actor)
        a = await self.engine.pending_approval(project_id)
        if a is None:
            raise AgencyError(f"Project #{project_id} is not waiting for an approval.")
        return await self.decide(a.id, approved, actor, reason=reason, choice=choice)

    async def approval_info(self, approval_id: int) -> tuple[int, str, str]:
        async with self.db.session() as s:
            a = await s.get(ApprovalRow, approval_id)
            if a is None:
                raise NotFoundError(f"There is no approval #{approval_id}.")
            return a.project_id, a.kind, a.status

    # -- members ---------------------------------------------------------------------------------
    async def feedback(self, agency_external_id: str, handle: str, rating: int | None, text: str, actor: Actor,
                       *, source: str = "director", project_id: int | None = None) -> str:
        if source == "director":
            self._need_director(actor)
        if rating is not None and not 1 <= rating <= 5:
            raise AgencyError("A rating is a whole number from 1 to 5.")
        text = redact(text or "")
        async with self.db.session() as s:
            a = await self._agency(s, agency_external_id)
            m = await repos.member_by_handle(s, a.id, handle)
            if m is None:
                raise NotFoundError(f"There is no member @{handle.lstrip('@')}. Try `/specialist list`.")
            s.add(FeedbackRow(agency_id=a.id, project_id=project_id, member_id=m.id, source=source, rating=rating, text=text, author=actor.name))
            await s.commit()
        return f"Feedback for @{m.handle} recorded."

    async def members(self, agency_external_id: str, kinds: tuple[str, ...] = ("specialist", "human")) -> list[MemberInfo]:
        async with self.db.session() as s:
            a = await self._agency(s, agency_external_id)
            rows = (await s.execute(select(MemberRow).where(MemberRow.agency_id == a.id, MemberRow.kind.in_(kinds)).order_by(MemberRow.handle))).scalars()
            return [await self._member_info(s, m) for m in rows]

    async def member(self, agency_external_id: str, handle: str) -> MemberInfo:
        async with self.db.session() as s:
            a = await self._agency(s, agency_external_id)
            m = await repos.member_by_handle(s, a.id, handle)
            if m is None:
                raise NotFoundError(f"There is no member @{handle.lstrip('@')}. Try `/specialist list`.")
            return await self._member_info(s, m)

    async def _member_info(self, s: Any, m: MemberRow) -> MemberInfo:
        sm = await repos.active_system_message(s, m.id)
        return MemberInfo(handle=m.handle, kind=m.kind, role=m.role, external_user_id=m.external_user_id, definition=m.definition,
                          system_message=sm.text if sm else None, system_version=sm.version if sm else None,
                          record=await self.record(s, m.id), created_at=m.created_at)

    async def record(self, s: Any, member_id: int) -> dict[str, Any]:
        """Performance figures of a member: tasks, acceptance, revisions, escalations, tokens and latency."""
        return await member_record(s, member_id)

    async def records(self, s: Any, member_ids: list[int]) -> dict[int, dict[str, Any]]:
        """:meth:`record` of several members at once (:func:`agency.db.records.member_records`)."""
        return await member_records(s, member_ids)

    async def add_human(self, agency_external_id: str, address: str, user_id: str, display_name: str, actor: Actor) -> str:
        self._need_director(actor)
        async with self.db.session() as s:
            a = await self._agency(s, agency_external_id)
            kind, _, rest = address.partition(":")
            if kind not in ("stream", "thread"):
                raise AgencyError("Use `/stream add-human` inside a work stream's channel.")
            st = await s.get(StreamRow, int(rest.split(":")[0]))
            if st is None:
                raise NotFoundError("That channel is not a work stream any more.")
            m = await repos.member_by_user(s, a.id, user_id)
            if m is None:
                base = "".join(ch for ch in display_name if ch.isalnum() or ch in "-_")[:24] or "Human"
                if not base[0].isalpha():
                    base = "H" + base
                handle = base if len(base) >= 2 else base + "-H"
                n = 2
                while await repos.member_by_handle(s, a.id, handle):
                    handle = f"{base}-{n}"
                    n += 1
                m = MemberRow(agency_id=a.id, handle=handle, kind="human", role="human", external_user_id=user_id, display_name=display_name)
                s.add(m)
                await s.flush()
            if (await s.execute(select(StreamMemberRow).where(StreamMemberRow.stream_id == st.id, StreamMemberRow.member_id == m.id))).first() is None:
                s.add(StreamMemberRow(stream_id=st.id, member_id=m.id))
            post(s, a.id, st.project_id, repos.stream_addr(st.id), SYSTEM,
                 f"{display_name} joins #{st.key} as a human specialist (@{m.handle}). The PM may assign them tasks; `/todo` lists them.",
                 mentions=[user_id])
            await s.commit()
            return f"{display_name} is now a human specialist in #{st.key} (handle @{m.handle})."

    async def todo(self, agency_external_id: str, user_id: str) -> str:
        async with self.db.session() as s:
            a = await self._agency(s, agency_external_id)
            m = await repos.member_by_user(s, a.id, user_id)
            if m is None:
                return "You have no tasks: you are not a specialist in any stream yet."
            rows = (await s.execute(select(TaskRow).where(TaskRow.assignee_id == m.id, TaskRow.status.in_(("pending", "running"))).order_by(TaskRow.project_id, TaskRow.key))).scalars().all()
            if not rows:
                return "You have no open tasks."
            return "\n".join(f"P{t.project_id} {t.key} '{t.title}' - {t.status}" + (f" - `/submit {t.key} <output>`" if t.status == "running" else " (waiting for inputs)") for t in rows)

    async def human_submit(self, agency_external_id: str, user_id: str, task_key: str, output: str, project_id: int | None) -> str:
        if not output.strip():
            raise CommandError(f"Put your output after the task id: `/submit {task_key} <output>`, or attach it.")
        async with self.db.session() as s:
            a = await self._agency(s, agency_external_id)
            m = await repos.member_by_user(s, a.id, user_id)
            if m is None:
                raise PermissionDeniedError("Only a human specialist of this stream can submit work.")
            q = select(TaskRow).where(TaskRow.key == task_key, TaskRow.assignee_id == m.id)
            if project_id:
                q = q.where(TaskRow.project_id == project_id)
            t = (await s.execute(q.order_by(TaskRow.id.desc()).limit(1))).scalar_one_or_none()
            if t is None:
                raise NotFoundError(f"{task_key} is not assigned to you. `/todo` lists your tasks.")
            if t.status != TaskState.RUNNING or not await transition(s, TASK, t.id, TaskState.REVIEW, frm=(TaskState.RUNNING,),
                                                                    where=[TaskRow.seq == t.seq], values={"output": output}, project_id=t.project_id,
                                                                    event="submitted", key=t.key, by=m.handle):
                await s.rollback()
                await s.refresh(t)  # a rollback expires what the session loaded
                raise AgencyError(f"{task_key} is {t.status}; you can submit only a running task.")
            post(s, a.id, t.project_id, repos.stream_addr(t.stream_id), m.handle, f"/submit {t.key}\n{output}")
            await s.commit()
            pid = t.project_id
        self.engine.spawn(pid)
        return f"{task_key} submitted for review."

    # -- messages from people ------------------------------------------------------------------------
    @staticmethod
    async def _in_streams(s: Any, sender: MemberRow | None, pid: int, kind: str, rest: str) -> bool:
        """A human specialist speaking in one of its streams (or threads), or in the overview of a project it works in."""
        if sender is None or sender.kind != "human":
            return False
        mine = set((await s.execute(select(StreamMemberRow.stream_id).join(StreamRow, StreamRow.id == StreamMemberRow.stream_id)
                                    .where(StreamRow.project_id == pid, StreamMemberRow.member_id == sender.id))).scalars())
        if kind in ("stream", "thread"):
            return int(rest.split(":")[0]) in mine
        return bool(mine)

    async def handle_message(self, agency_external_id: str, address: str, actor: Actor, text: str) -> CommandResult | None:
        """A person wrote in a project space. Commands run; other text reaches the addressed member."""
        text = redact((text or "").strip())  # a secret a person pastes is never stored, relayed or sent to a model
        if not text:
            return None
        if text.startswith("/"):
            return await self.run_command(agency_external_id, address, actor, text)
        async with self.db.session() as s:
            a = await self._agency(s, agency_external_id)
            pid = await self._project_of_address(s, a.id, address)
            if pid is None:
                return None
            p = await s.get(ProjectRow, pid)
            kind, _, rest = address.partition(":")
            target: MemberRow | None = None
            if kind == "thread":
                target = await s.get(MemberRow, int(rest.split(":")[1]))
            elif kind == "stream":
                st = await s.get(StreamRow, int(rest))
                target = await s.get(MemberRow, st.collaborator_id) if st and st.collaborator_id else None
            else:
                target = await repos.member_by_handle(s, a.id, PM_HANDLE)
            s.add(MessageRow(agency_id=a.id, project_id=pid, direction="in", address=address, persona=actor.name, content=text[:8000], status="received"))
            sender = await repos.member_by_user(s, a.id, actor.external_user_id) if actor.external_user_id else None
            # the Director steers anywhere, a human specialist only in its own streams; anyone else is recorded, never relayed
            steer = actor.is_director or await self._in_streams(s, sender, pid, kind, rest)
            if target is not None and kind == "thread" and target.kind == "specialist":
                # a person's words in a specialist's thread: guidance for its current task, and feedback
                t = (await s.execute(select(TaskRow).where(TaskRow.project_id == pid, TaskRow.assignee_id == target.id, TaskRow.status.in_(("running", "pending", "review"))).order_by(TaskRow.key).limit(1))).scalar_one_or_none()
                if t is not None and steer:
                    t.context = [*(t.context or []), {"from": actor.name, "text": text[:4000]}]
                s.add(FeedbackRow(agency_id=a.id, project_id=pid, member_id=target.id, task_id=t.id if t else None,
                                  source="human" if (sender is not None and sender.kind == "human") or not actor.is_director else "director",
                                  text=text[:4000], author=actor.name))
            if actor.is_director and p is not None:
                p.director_notes = [*p.director_notes, {"about": "guidance", "text": text[:2000], "at": address}]
            await s.commit()
            if not steer:
                return CommandResult("Only the Director and the specialists of this stream can direct its members; your message was recorded.")
            if target is None or p is None or p.status in TERMINAL:
                return None
            sysmsg = await repos.active_system_message(s, target.id)
            identity = sysmsg.text if sysmsg else (f"You are {target.handle}, the Project Manager." if target.kind == "pm" else f"You are {target.handle}, the {target.kind} of this stream.")
            n_in = (await s.execute(select(func.count(MessageRow.id)).where(MessageRow.project_id == pid, MessageRow.direction == "in"))).scalar()
            ctx = CallContext(role=target.kind if target.kind in ("pm", "collaborator", "learning") else "specialist", purpose="answer",
                              agency_id=a.id, project_id=pid, member_id=target.id, call_key=f"p{pid}:in{n_in}:reply",
                              meta={"purpose": "answer", "text": text, "objective": p.objective})
            target_handle, agency_id, objective = target.handle, a.id, p.objective
        try:
            reply = await self.llm.call(AgentTurn, spec_role.answer_messages(identity, asker=actor.name, question=text, context=objective), ctx)
        except ProjectPaused:  # paused or stopping: acknowledged all the same; the note is kept for the PM
            return CommandResult(f"Noted: {target_handle} will see your message when project #{pid} runs again.", ephemeral=False)
        except AgencyError as e:
            return CommandResult(f"{target_handle} could not answer: {e.user_message}")
        async with self.db.session() as s:
            post(s, agency_id, pid, address, target_handle, reply.message or "Noted.")
            await s.commit()
        self.engine.outbox_ready.set()
        return None

    async def run_command(self, agency_external_id: str, address: str, actor: Actor, text: str) -> CommandResult:
        """Parse, authorize and execute a command a person typed."""
        cmd = cmdlib.parse(redact(text or ""))
        async with self.db.session() as s:
            a = await self._agency(s, agency_external_id)
            member = await repos.member_by_user(s, a.id, actor.external_user_id) if actor.external_user_id else None
        role = "director" if actor.is_director else ("human" if member is not None and member.kind == "human" else None)
        if role is None:
            raise PermissionDeniedError("Only the Director or a human specialist of this agency can use commands here.")
        try:
            cmdlib.authorize(cmd, role, is_model=False)
        except PermissionDeniedError:
            if role == "director" and cmd.name in ("submit", "todo"):
                pass
            else:
                raise
        n = cmd.name
        ag = agency_external_id
        actor = replace(actor, agency=ag)  # every id this person names is resolved in this agency
        if n in self.extra_commands:
            return await self.extra_commands[n](self, ag, address, actor, cmd)
        if n == "project new":
            info = await self.new_project(ag, cmd.args["objective"], actor=actor)
            return CommandResult(f"Project #{info.id} started.", ephemeral=False, data={"project_id": info.id})
        if n == "todo":
            return CommandResult(await self.todo(ag, actor.external_user_id or ""))
        if n == "submit":
            pid = await self.resolve_project(ag, address=address)
            return CommandResult(await self.human_submit(ag, actor.external_user_id or "", cmd.args["task"], cmd.args.get("output", ""), pid), ephemeral=False)
        if n == "feedback":
            return CommandResult(await self.feedback(ag, cmd.args["handle"], cmd.args["rating"], cmd.args.get("text", ""), actor))
        if n == "specialist list":
            ms = await self.members(ag)
            return CommandResult("\n".join(f"@{m.handle} - {m.role} ({m.kind}) - {m.record.get('tasks_done', 0)} tasks" for m in ms) or "No specialists yet.")
        if n == "specialist show":
            m = await self.member(ag, cmd.args["handle"])
            return CommandResult(self.render_member(m))
        if n == "stream add-human":
            raise CommandError("Mention the person: `/stream add-human @member` (use the slash command in Discord).")
        if n == "evaluate":
            return CommandResult("The Learning & Performance Manager is not enabled in this build.")
        pid = await self.resolve_project(ag, address=address)
        if n == "project status":
            return CommandResult(self.render_status(await self.status(pid)))
        if n == "project pause":
            return CommandResult(await self.pause(pid, actor), ephemeral=False)
        if n == "project resume":
            return CommandResult(await self.resume(pid, actor), ephemeral=False)
        if n == "project cancel":
            return CommandResult(await self.cancel(pid, actor), ephemeral=False)
        if n == "approve":
            return CommandResult(await self.approve(pid, actor, choice=cmd.args.get("choice")), ephemeral=False)
        if n == "reject":
            return CommandResult(await self.approve(pid, actor, approved=False, reason=cmd.args["reason"]), ephemeral=False)
        if n == "budget":
            return CommandResult(await self.set_budget(pid, cmd.args.get("amount"), actor))
        raise CommandError(f"`/{n}` is not available here yet.")

    @staticmethod
    def render_member(m: MemberInfo) -> str:
        d = m.definition or {}
        lines = [f"**@{m.handle}** - {d.get('title') or m.role} ({m.kind})"]
        if d:
            lines.append(f"Expertise: {', '.join(d.get('expertise', []))}")
            lines.append("Expectations: " + "; ".join(d.get("expectations", [])))
        r = m.record
        if r:
            lines.append(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in r.items() if v is not None))
        if m.system_message:
            lines.append(f"System message v{m.system_version}:\n{m.system_message[:1500]}")
        return "\n".join(lines)

    # -- chat adapters: spaces and the Director role by external id (added for the Discord bot) ----------
    async def address_for_external(self, agency_external_id: str, external_id: str) -> str | None:
        """The core's address of a chat space (channel, thread, category) by its external id; None if unknown."""
        async with self.db.session() as s:
            a = (await s.execute(select(AgencyRow).where(AgencyRow.external_id == agency_external_id))).scalar_one_or_none()
            if a is None:
                return None
            return (await s.execute(select(SpaceRow.address).where(
                SpaceRow.agency_id == a.id, SpaceRow.external_id == str(external_id)).limit(1))).scalar_one_or_none()

    async def space_external_id(self, agency_external_id: str, address: str) -> str | None:
        """The external id recorded for a space, or None when it was never materialised."""
        async with self.db.session() as s:
            a = (await s.execute(select(AgencyRow).where(AgencyRow.external_id == agency_external_id))).scalar_one_or_none()
            if a is None:
                return None
            return (await s.execute(select(SpaceRow.external_id).where(
                SpaceRow.agency_id == a.id, SpaceRow.address == address))).scalar_one_or_none()

    async def record_space(self, agency_external_id: str, address: str, external_id: str, *, kind: str | None = None,
                           name: str | None = None) -> None:
        """Record the external id of a space the adapter created itself (e.g. ``hq`` at set-up)."""
        async with self.db.session() as s:
            a = await self._agency(s, agency_external_id)
            k = kind or address.split(":", 1)[0]
            row = await repos.declare_space(s, a.id, address, k, name or address.replace(":", "-"))
            row.external_id = str(external_id)
            await s.commit()

    async def set_director_role(self, agency_external_id: str, role_id: str | None) -> None:
        async with self.db.session() as s:
            a = await self._agency(s, agency_external_id)
            a.director_role_id = role_id
            await s.commit()

    async def director_roles(self) -> dict[str, str]:
        """Agency external id -> the recorded Director role id, for every agency that has one."""
        async with self.db.session() as s:
            rows = (await s.execute(select(AgencyRow.external_id, AgencyRow.director_role_id).where(AgencyRow.director_role_id.is_not(None)))).all()
            return {ext: rid for ext, rid in rows if rid is not None}  # (the query leaves out None already)

    async def member_address(self, agency_external_id: str, handle: str, project_id: int) -> str | None:
        """Where a virtual member listens in a project: the PM in ``overview``, a Collaborator in its
        stream, a specialist in its thread. None for unknown handles and for humans."""
        async with self.db.session() as s:
            a = (await s.execute(select(AgencyRow).where(AgencyRow.external_id == agency_external_id))).scalar_one_or_none()
            if a is None:
                return None
            m = await repos.member_by_handle(s, a.id, handle)
            if m is None or m.kind == "human":
                return None
            if m.kind == "pm":
                return overview(project_id)
            if m.kind == "collaborator":
                sid = (await s.execute(select(StreamRow.id).where(StreamRow.project_id == project_id, StreamRow.collaborator_id == m.id).limit(1))).scalar_one_or_none()
                return repos.stream_addr(sid) if sid else None
            sid = (await s.execute(select(StreamRow.id).join(StreamMemberRow, StreamMemberRow.stream_id == StreamRow.id).where(
                StreamRow.project_id == project_id, StreamMemberRow.member_id == m.id).order_by(StreamRow.id).limit(1))).scalar_one_or_none()
            if sid is None:
                return None
            addr = repos.thread_addr(sid, m.id)
            known = (await s.execute(select(SpaceRow.id).where(SpaceRow.agency_id == a.id, SpaceRow.address == addr))).scalar_one_or_none()
            return addr if known else None

    # -- memory and learning (plugged in by agency.wiring) -----------------------------------------
    def _need_learning(self) -> Any:
        if self.learning is None:
            raise AgencyError("The Learning & Performance Manager is off in this agency (learning.enabled = false).")
        return self.learning

    async def _agency_id(self, agency_external_id: str) -> int:
        async with self.db.session() as s:
            return (await self._agency(s, agency_external_id)).id

    async def record_reaction(self, agency_external_id: str, address: str, message_external_id: str, emoji: str, actor: Actor) -> str | None:
        """The Director reacted to a member's message: 👍 ✅ ⭐ ❤️ rate it 5, 👎 ❌ rate it 1 (feedback source ``reaction``).

        Other emoji, other people's reactions, and reactions to system messages are ignored (``None``).
        """
        from agency.learning import reaction_rating

        rating = reaction_rating(emoji)
        if rating is None or not actor.is_director:
            return None
        async with self.db.session() as s:
            a = await self._agency(s, agency_external_id)
            msg = (await s.execute(select(MessageRow).where(MessageRow.agency_id == a.id, MessageRow.direction == "out",
                                                            MessageRow.external_id == str(message_external_id)).limit(1))).scalar_one_or_none()
            if msg is None:
                return None
            m = await repos.member_by_handle(s, a.id, msg.persona)
            if m is None or m.kind == "human":
                return None
            marker = f"reaction {emoji} on message {message_external_id}"
            dup = (await s.execute(select(FeedbackRow.id).where(FeedbackRow.member_id == m.id, FeedbackRow.source == "reaction",
                                                                FeedbackRow.author == actor.name, FeedbackRow.text.startswith(marker, autoescape=True)).limit(1))).first()
            if dup is not None:
                return None
            s.add(FeedbackRow(agency_id=a.id, project_id=msg.project_id, member_id=m.id, source="reaction", rating=rating,
                              text=f"{marker} in {address}: {msg.content[:300]}", author=actor.name))
            await s.commit()
            handle = m.handle
        log.info("reaction feedback for %s: %s", handle, rating)
        return f"Reaction recorded as {rating}/5 for @{handle}."

    async def add_resource(self, agency_external_id: str, text: str, source: str, actor: Actor) -> str:
        """Add knowledge to the agency's memory (``/resource add`` text, or an attached file's text)."""
        from agency.recall import store_knowledge

        self._need_director(actor)
        text = redact(text or "")
        if self.memory is None:
            raise AgencyError("Memory is off in this agency (memory.enabled = false).")
        if not (text or "").strip():
            raise CommandError("Give the text to remember: `/resource add <text>`, or attach a text file.")
        agency_id = await self._agency_id(agency_external_id)
        ids = await store_knowledge(self.memory, agency_id, text, (source or "director")[:200])
        return f"Added {len(ids)} passage(s) from {source or 'your message'} to the agency's knowledge."

    async def search_memory(self, agency_external_id: str, query: str, *, limit: int = 8) -> str:
        """``/memory search``: what the agency knows (knowledge, earlier work, lessons) about ``query``."""
        from agency.tools.retrieve import format_hits

        if self.memory is None:
            raise AgencyError("Memory is off in this agency (memory.enabled = false).")
        if not (query or "").strip():
            raise CommandError("Say what to look for: `/memory search <query>`.")
        agency_id = await self._agency_id(agency_external_id)
        hits = await self.memory.search(agency_id, query, limit=limit)
        return format_hits(hits) if hits else f"The agency's memory has nothing on {query!r} yet."

    async def evaluate_specialist(self, agency_external_id: str, handle: str, actor: Actor, *, address: str | None = None) -> str:
        """``/evaluate @Handle``: over the project of ``address`` if typed in one, else over all its work."""
        self._need_director(actor)
        lm = self._need_learning()
        async with self.db.session() as s:
            a = await self._agency(s, agency_external_id)
            pid = await self._project_of_address(s, a.id, address) if address else None
        o = await lm.evaluate(a.id, handle, pid, trigger="director", address=address or "hq",
                              request=f"The Director ({actor.name}) asked for this evaluation.")
        self.engine.outbox_ready.set()
        text = f"Evaluated @{o.handle}: mean {o.evaluation.mean_score}/5, {o.lessons_stored} lesson(s) stored."
        if o.proposed_version:
            text += f" System message v{o.proposed_version} " + ("applied." if o.applied else "proposed; approve or reject it.")
        return text

    async def specialist_history(self, agency_external_id: str, handle: str) -> str:
        lm = self._need_learning()
        h, versions = await lm.history(await self._agency_id(agency_external_id), handle)
        return lm.render_history(h, versions)

    async def rollback_specialist(self, agency_external_id: str, handle: str, version: int, actor: Actor) -> str:
        self._need_director(actor)
        lm = self._need_learning()
        return await lm.rollback(await self._agency_id(agency_external_id), handle, version, actor.name)

    async def ask_learning_manager(self, agency_external_id: str, text: str, actor: Actor, *, address: str = "hq") -> str:
        """A person wrote to @Learning-Manager: it answers, and may evaluate, revise or store a lesson."""
        self._need_director(actor)
        text = redact(text or "")
        lm = self._need_learning()
        async with self.db.session() as s:
            a = await self._agency(s, agency_external_id)
            pid = await self._project_of_address(s, a.id, address)
        return await lm.converse(a.id, text, actor.name, project_id=pid, address=address)
