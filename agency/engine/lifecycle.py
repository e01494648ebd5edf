"""Runs projects durably: one runner per project dispatches the step that the
project's stored state calls for, and recovers from what a step raises.

State lives in the database, not in coroutines: every step reads the project
and its tasks, makes at most one model call, and writes the result together
with its state change (:func:`agency.states.transition`) and its outbound
messages in one transaction. After a crash or restart, :meth:`Engine.start`
reloads every unfinished project and carries on from the last committed step;
model answers already recorded are reused (see
:class:`agency.llm.client.LLMClient`), and conditional transitions make sure no
step is applied twice.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from agency.db.session import Database
from agency.db.tables import ApprovalRow, EventRow, ProjectRow, TaskRow
from agency.engine import tasks as task_moves
from agency.engine.base import LOCK_RETRIES, Changes, Core, ProjectHook, ProjectPaused, Recall, RunFlags, is_transient_db_error, log
from agency.engine.decisions import Decisions, Handler
from agency.engine.delivery import Delivery
from agency.engine.escalation import Escalations
from agency.engine.leases import Leases
from agency.engine.planning import Planning
from agency.engine.questions import Questions
from agency.engine.review import Reviews
from agency.engine.scheduling import FlightStats, Scheduler, TaskSteps
from agency.engine.staffing import Staffing
from agency.engine.work import Work
from agency.errors import BudgetExceededError, LLMError
from agency.llm.client import LLMClient
from agency.schemas import WorkPlan
from agency.settings import Settings
from agency.states import PROJECT_TERMINAL, ProjectState, TaskState
from specialists.loader import Catalogue


class Engine:
    """Built by :mod:`agency.wiring` with every collaborator it needs (nothing is assigned afterwards):
    ``changes`` and ``flags`` are shared with the budget gate the model client calls before each call."""

    def __init__(self, db: Database, llm: LLMClient, settings: Settings, catalogue: Catalogue, *, changes: Changes, flags: RunFlags,
                 recall: Recall | None = None, tools: Any = None, on_project_done: Sequence[ProjectHook] = (),
                 extra_decisions: Mapping[str, Handler] | None = None) -> None:
        self.core = core = Core(db, llm, settings, catalogue, changes=changes, recall=recall, tools=tools)
        self.db, self.llm, self.settings, self.catalogue = db, llm, settings, catalogue
        self.flags = flags
        self.on_project_done: list[ProjectHook] = list(on_project_done)
        self._runners: dict[int, asyncio.Task[None]] = {}
        self._wake: dict[int, asyncio.Event] = {}
        self.leases = Leases(db, settings.engine.lease_seconds)
        self._lease_task: asyncio.Task[None] | None = None
        self.planning = Planning(core)
        self.staffing = Staffing(core)
        self.work = Work(core)
        self.questions = Questions(core)
        self.reviews = Reviews(core)
        self.escalations = Escalations(core)
        self.delivery = Delivery(core, self.on_project_done)
        self.decisions = Decisions(core, self.planning, extra_decisions, on_decided=self.spawn)
        self.scheduler = Scheduler(core, TaskSteps(turn=self.work.turn, answer=self.questions.answer, review=self.reviews.review,
                                                   pm_decision=self.escalations.pm_decision),
                                   halting=flags.halting, stop_tasks=self._stop_tasks, wait_wake=self._wait_wake,
                                   stopping=lambda: flags.stopping)
        # keyed by ProjectState, looked up with the row's plain str status (a StrEnum member hashes and compares as its value)
        self._steps: dict[str, Callable[[int], Awaitable[None]]] = {ProjectState.NEW: self.planning.propose, ProjectState.PLANNING: self.planning.plan,
                       ProjectState.STAFFING: self.staffing.staff, ProjectState.RUNNING: self.scheduler.run_tasks,
                       ProjectState.DELIVERING: self.delivery.deliver}

    @property
    def _stopping(self) -> bool:
        return self.flags.stopping

    @_stopping.setter
    def _stopping(self, value: bool) -> None:
        self.flags.stopping = value

    # -- what the service and adapters use ------------------------------------------------------
    @property
    def recall(self) -> Recall | None:
        return self.core.recall

    @property
    def tools(self) -> Any:
        return self.core.tools

    @property
    def outbox_ready(self) -> asyncio.Event:
        return self.core.outbox_ready

    @property
    def on_change(self) -> list[Callable[[int], None]]:
        return self.core.changes.on_change

    @property
    def stats(self) -> dict[int, FlightStats]:
        return self.scheduler.stats

    @property
    def extra_decisions(self) -> dict[str, Handler]:
        return self.decisions.handlers

    def _changed(self, pid: int) -> None:
        self.core.changed(pid)

    async def decide(self, approval_id: int, approved: bool, *, actor: str, reason: str | None = None, choice: int | None = None,
                     agency_id: int | None = None) -> str:
        return await self.decisions.decide(approval_id, approved, actor=actor, reason=reason, choice=choice, agency_id=agency_id)

    async def pending_approval(self, project_id: int) -> ApprovalRow | None:
        return await self.decisions.pending(project_id)

    async def validate_plan(self, s: AsyncSession, p: ProjectRow, plan: WorkPlan) -> list[str]:
        return await self.planning.validate_plan(s, p, plan)

    async def cancel_in(self, s: AsyncSession, p: ProjectRow, why: str) -> bool:
        return await task_moves.cancel(s, p, why)

    def abort_calls(self, pid: int) -> int:
        """Cancel the project's model calls in flight (after a pause or cancel): the connection closes, so
        the server stops generating and a paid API stops billing. Only tasks waiting on a model are
        cancelled (nothing of their step is committed yet); returns how many."""
        tasks = [*self.scheduler.workers.get(pid, {}).values(), self._runners.get(pid)]
        aborted = 0
        for t in tasks:
            if t is not None and not t.done() and t in self.llm.in_model:
                t.cancel()
                aborted += 1
        if aborted:
            log.info("project %s: %d model call(s) in flight aborted", pid, aborted)
        return aborted

    async def escalate(self, pid: int, tid: int, reason: str) -> bool:
        """Escalate a running task from outside its worker (the watchdog); its worker's step in flight
        then no longer applies."""
        async with self.db.session() as s:
            t = await s.get(TaskRow, tid)
            p = await s.get(ProjectRow, pid)
            if t is None or p is None:
                return False
            applied = await task_moves.escalate(s, p, t, reason, frm=(TaskState.RUNNING, TaskState.REVIEW))
            await self.core.commit(s, pid)
        if applied:
            self.scheduler.interrupt(pid, tid)
            self.spawn(pid)
        return applied

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> list[int]:
        """Take the lease of every unfinished project no live process holds and run it (after a restart,
        or beside other processes on the same database); then keep leases renewed and look for work."""
        resumed = [pid for pid in await self.leases.claimable() if await self.leases.claim(pid)]
        for pid in resumed:
            self.spawn(pid)
        if resumed:
            log.info("resumed %d project(s): %s", len(resumed), resumed)
        if self.on_project_done:
            async with self.db.session() as s:
                finished = select(EventRow.project_id).where(EventRow.kind == "after_delivery_done")
                cut = list((await s.execute(select(ProjectRow.id).where(ProjectRow.status == ProjectState.DONE, ProjectRow.id.not_in(finished)))).scalars())
            for pid in cut:  # delivered, but the process stopped before memory and learning ran
                if await self.leases.claim(pid, finished=True):
                    self._runners[pid] = asyncio.create_task(self._finish_delivery(pid), name=f"after-delivery-{pid}")
        if self._lease_task is None or self._lease_task.done():
            self._lease_task = asyncio.create_task(self._lease_loop(), name="leases")
        return resumed

    async def _finish_delivery(self, pid: int) -> None:
        try:
            await self.delivery.after_delivery(pid)
        finally:
            await self.leases.release(pid)

    async def _lease_loop(self) -> None:
        """Every ``engine.poll_seconds``: renew the leases of the projects this process runs (stop those
        another process took), wake them (a decision or a message may have arrived through another
        process), and take projects whose owner is gone."""
        poll = self.settings.engine.poll_seconds
        while not self._stopping:
            await asyncio.sleep(poll)
            try:
                held = {pid for pid, t in self._runners.items() if not t.done()}
                for pid in await self.leases.renew(held):
                    log.warning("project %s: another process took its lease; this one stops running it", pid)
                    self.flags.lost.add(pid)
                    self.wake(pid)
                for pid in held:  # a runner with workers in flight looks again when one ends: no need to wake it
                    if not self.scheduler.workers.get(pid):
                        self.wake(pid)
                for pid in await self.leases.claimable():
                    if pid not in held and await self.leases.claim(pid):
                        log.info("project %s: taken over (its lease was free or expired)", pid)
                        self.spawn(pid)
            except asyncio.CancelledError:
                raise
            except Exception:  # the next round tries again; a lease lasts several rounds
                log.exception("lease round failed")

    def spawn(self, project_id: int) -> None:
        """Run the project here if this process can take its lease (else its owner runs it)."""
        t = self._runners.get(project_id)
        if t is not None and not t.done():
            self.wake(project_id)
            return
        self.flags.lost.discard(project_id)
        self._runners[project_id] = asyncio.create_task(self._run_project(project_id), name=f"project-{project_id}")

    def wake(self, project_id: int) -> None:
        self._wake.setdefault(project_id, asyncio.Event()).set()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop scheduling: every runner and worker ends at its next step (committed state stands)."""
        self._stopping = True
        for ev in self._wake.values():
            ev.set()
        if self._lease_task is not None:
            self._lease_task.cancel()
            await asyncio.gather(self._lease_task, return_exceptions=True)
            self._lease_task = None
        await self._stop_tasks([t for t in self._runners.values() if not t.done()], timeout)
        try:
            await self.leases.release()  # a clean stop: another process may take them at once
        except Exception:  # noqa: BLE001 - they expire anyway
            log.warning("could not release this process's leases; they expire in %.0f s", self.leases.ttl.total_seconds())

    async def _stop_tasks(self, tasks: list[asyncio.Task[Any]], timeout: float) -> None:
        """End tasks without interrupting a database write: a task waiting on a model is cancelled at
        once; any other finishes its step and stops at the next check. Past ``timeout``, cancel."""
        pending = {t for t in tasks if not t.done()}
        end = asyncio.get_running_loop().time() + timeout
        while pending:
            for t in pending:
                if t in self.llm.in_model:
                    t.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.05)
            if pending and asyncio.get_running_loop().time() > end:
                log.warning("%d task(s) did not stop within %.0f s; cancelling them", len(pending), timeout)
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                break
        for t in tasks:  # retrieved here: how they ended is already recorded in the database
            if t.done() and not t.cancelled():
                t.exception()

    async def wait_project(self, project_id: int) -> None:
        t = self._runners.get(project_id)
        if t is not None:
            await asyncio.shield(t)

    async def _wait_wake(self, pid: int, timeout: float | None = None) -> None:
        ev = self._wake.setdefault(pid, asyncio.Event())
        try:
            async with asyncio.timeout(timeout):
                await ev.wait()
        except TimeoutError:
            pass
        ev.clear()

    # -- the project loop ----------------------------------------------------------------------
    async def _run_project(self, pid: int) -> None:
        structlog.contextvars.clear_contextvars()  # this task's own context: every log line in it carries the project id
        structlog.contextvars.bind_contextvars(project_id=pid)
        lock_retries = 0
        if not await self.leases.claim(pid):
            return  # another live process runs it
        try:
            while not self._stopping and pid not in self.flags.lost:
                async with self.db.session() as s:
                    status = (await s.execute(select(ProjectRow.status).where(ProjectRow.id == pid))).scalar_one_or_none()
                if status is None or status in PROJECT_TERMINAL:
                    if status is not None:
                        await self.leases.release(pid)  # (delivery ran its after-delivery work before this)
                    return
                step = self._steps.get(status)
                try:
                    if step is None:  # awaiting_approach, awaiting_plan, paused, blocked: a person decides
                        await self._wait_wake(pid)
                    else:
                        await step(pid)
                except ProjectPaused:
                    continue
                except BudgetExceededError as e:
                    await self._pause_for_budget(pid, e.user_message)
                except LLMError as e:
                    await self._block(pid, f"A model call failed: {e.user_message}")
                except DBAPIError as e:
                    # SQLite breaks a lock wait with "database is locked" once its busy timeout passes; PostgreSQL
                    # aborts a serialization conflict or a deadlock, or loses the connection: the step's
                    # transaction was rolled back, and every step is safe to redo (as after a restart)
                    if not is_transient_db_error(e) or lock_retries >= LOCK_RETRIES:
                        raise
                    lock_retries += 1
                    log.warning("project %s: a transient database error (%s); retrying the step (%d/%d)", pid,
                                type(getattr(e, "orig", e)).__name__, lock_retries, LOCK_RETRIES)
                    await asyncio.sleep(min(0.5 * 2 ** lock_retries, 5.0))
                else:
                    lock_retries = 0
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never die silently: record and tell the Director
            log.exception("project %s crashed", pid)
            await self._block(pid, f"Internal error: {type(e).__name__}: {e}")

    async def _block(self, pid: int, reason: str) -> None:
        async with self.db.session() as s:
            await task_moves.block(s, pid, reason)
            await self.core.commit(s, pid)

    async def _pause_for_budget(self, pid: int, message: str) -> None:
        async with self.db.session() as s:
            await task_moves.pause_for_budget(s, pid, message)
            await self.core.commit(s, pid)
