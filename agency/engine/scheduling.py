"""Scheduling a running project: start every task whose dependencies are done
(``pending -> running``), close streams whose tasks are all done (or gate them
as milestones), move the project to delivery when everything is done, and run
one worker per active task, within the concurrency limit.

A worker drives its task one step at a time; which step is decided by the
task's stored state (see ``TaskSteps``), so a worker started after a restart
carries on exactly where the last committed step left it.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from agency.db import repos
from agency.db.repos import SYSTEM, overview, post, stream_addr
from agency.db.tables import ApprovalRow, MemberRow, ProjectRow, StreamRow, TaskRow
from agency.engine.base import AGENCY_HUMANS, PM_HANDLE, PROJECT_STREAMS, TASK_STEP, Core, ProjectPaused, now
from agency.engine.tasks import unreviewed
from agency.errors import BudgetExceededError, LLMError
from agency.states import PROJECT, STREAM, TASK, TASK_FINISHED, ApprovalState, ProjectState, StreamState, TaskState, transition

Step = Callable[[int, int], Awaitable[None]]


@dataclass
class FlightStats:
    in_flight: int = 0
    max_in_flight: int = 0
    started: int = 0  # task workers started (a resumed task counts again)


@dataclass(frozen=True)
class TaskSteps:
    """The step for each task state: a turn of the assignee, an answer to its pending question, the
    Collaborator's review, the PM's decision on an escalation."""

    turn: Step
    answer: Step
    review: Step
    pm_decision: Step


class Scheduler:
    def __init__(self, core: Core, steps: TaskSteps, *, halting: set[int], stop_tasks: Callable[[list[asyncio.Task[Any]], float], Awaitable[None]],
                 wait_wake: Callable[[int], Coroutine[Any, Any, None]], stopping: Callable[[], bool]) -> None:
        self.core = core
        self.steps = steps
        self.stats: dict[int, FlightStats] = {}
        self.workers: dict[int, dict[int, asyncio.Task[None]]] = {}  # project -> task -> its worker
        self._halting = halting  # projects whose workers must stop at their next step
        self._stop_tasks = stop_tasks
        self._wait_wake = wait_wake
        self._stopping = stopping

    async def run_tasks(self, pid: int) -> None:
        core = self.core
        stats = self.stats.setdefault(pid, FlightStats())
        workers = self.workers.setdefault(pid, {})
        limit = core.settings.engine.project_concurrency
        try:
            while not self._stopping():
                async with core.db.session() as s:
                    p = await s.get(ProjectRow, pid)
                    assert p is not None
                    if p.status != ProjectState.RUNNING:
                        return
                    tasks = await repos.project_tasks(s, pid)
                    deps = await repos.task_deps(s, pid)
                    streams = {r.id: r for r in (await s.execute(PROJECT_STREAMS, {"pid": pid})).scalars()}
                    by_id = {t.id: t for t in tasks}
                    changed = await self._close_streams(s, p, tasks, streams)
                    if all(t.status in TASK_FINISHED for t in tasks) and all(st.status == StreamState.DONE for st in streams.values()):
                        await transition(s, PROJECT, pid, ProjectState.DELIVERING, frm=(ProjectState.RUNNING,), project_id=pid, event="all_tasks_done")
                        await core.commit(s, pid)
                        return
                    humans = set((await s.execute(AGENCY_HUMANS, {"aid": p.agency_id})).scalars())
                    for t in tasks:  # tasks mid-flight (after a restart, or moved on by a decision)
                        if t.status == TaskState.RUNNING and t.assignee_id in humans and not t.asks:
                            continue  # a person is working on it; their /submit wakes the project
                        if t.status in (TaskState.RUNNING, TaskState.REVIEW, TaskState.ESCALATED) and t.id not in workers and len(workers) < limit:
                            workers[t.id] = self._start_worker(pid, t.id, stats)
                    for t in sorted(tasks, key=lambda x: x.key):  # newly ready tasks
                        if len(workers) >= limit:
                            break
                        if t.status != TaskState.PENDING:
                            continue
                        if not all(self._dep_satisfied(by_id[d], streams, p.oversight, t.stream_id) for d in deps.get(t.id, [])):
                            continue
                        started = now()
                        if await transition(s, TASK, t.id, TaskState.RUNNING, frm=(TaskState.PENDING,), values={
                                "started_at": started, "step": 0,
                                "deadline_at": started + timedelta(seconds=core.settings.engine.task_deadline_seconds)}):
                            await self._announce_start(s, p, t, by_id, deps)
                            changed = True
                            if t.assignee_id not in humans:
                                workers[t.id] = self._start_worker(pid, t.id, stats)
                    if changed:
                        await core.commit(s, pid)
                    else:
                        await s.commit()
                if not workers:
                    await self._wait_wake(pid)  # blocked or awaiting the Director
                    continue
                wake = asyncio.create_task(self._wait_wake(pid))
                try:
                    await asyncio.wait([*workers.values(), wake], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    wake.cancel()
                for tid, w in list(workers.items()):
                    if w.done():
                        del workers[tid]
                        if w.cancelled():  # interrupted (its task moved on): the next round starts what is due
                            continue
                        exc = w.exception()
                        if isinstance(exc, (BudgetExceededError, LLMError)):
                            raise exc
                        if exc is not None and not isinstance(exc, ProjectPaused):
                            raise exc
        finally:
            if workers:  # siblings of a failed worker, or a stop: each ends at its next step
                self._halting.add(pid)
                try:
                    await self._stop_tasks(list(workers.values()), 30.0)
                finally:
                    self._halting.discard(pid)

    def interrupt(self, pid: int, tid: int) -> None:
        """Stop the worker of a task that was moved on from outside (the watchdog), if it is waiting on a
        model: nothing of its step is committed yet, and its project's runner starts what is due next."""
        w = self.workers.get(pid, {}).get(tid)
        if w is not None and not w.done() and w in self.core.llm.in_model:
            w.cancel()

    @staticmethod
    def _dep_satisfied(dep: TaskRow, streams: dict[int, StreamRow], oversight: str, stream_id: int) -> bool:
        if dep.status != TaskState.DONE:
            return False
        if oversight == "milestones" and dep.stream_id != stream_id:
            return streams[dep.stream_id].status == StreamState.DONE
        return True

    async def _close_streams(self, s: AsyncSession, p: ProjectRow, tasks: list[TaskRow], streams: dict[int, StreamRow]) -> bool:
        changed = False
        for st in streams.values():
            mine = [t for t in tasks if t.stream_id == st.id]
            if st.status != StreamState.OPEN or not mine or not all(t.status in TASK_FINISHED for t in mine):
                continue
            gated = p.oversight == "milestones"
            still_running = StreamRow.project_id.in_(select(ProjectRow.id).where(ProjectRow.id == p.id, ProjectRow.status == ProjectState.RUNNING))
            if not await transition(s, STREAM, st.id, StreamState.GATED if gated else StreamState.DONE, frm=(StreamState.OPEN,),
                                    where=[still_running],  # a cancel (or pause) committed meanwhile: no milestone for it
                                    project_id=p.id, event="stream_complete", stream=st.key, gated=gated):
                continue
            if gated:
                appr = ApprovalRow(project_id=p.id, kind="milestone", subject=st.key, status=ApprovalState.PENDING)
                s.add(appr)
                await s.flush()
                post(s, p.agency_id, p.id, overview(p.id), PM_HANDLE,
                     f"Milestone: stream #{st.key} is complete ({len(mine)} tasks). Criteria: {'; '.join(st.success_criteria)}.\n"
                     "`/approve` to accept it, or `/reject <what to change>`.", kind="approval", approval_id=appr.id, mentions=["director"])
            else:  # a stream with stopped or unreviewed tasks says so and claims nothing
                stopped = [t.key for t in mine if t.status != TaskState.DONE]
                no_review = await unreviewed(s, p.id)
                unchecked = [t.key for t in mine if t.id in no_review]
                gaps = ([f"without {', '.join(stopped)} (stopped)"] if stopped else []) + \
                       ([f"with {', '.join(unchecked)} accepted without review"] if unchecked else [])
                text = (f"Stream #{st.key} is closed {' and '.join(gaps)}; its criteria are not shown to be met: " if gaps
                        else f"Stream #{st.key} has met its criteria: ")
                post(s, p.agency_id, p.id, stream_addr(st.id), SYSTEM, text + "; ".join(st.success_criteria) + ".")
            changed = True
        return changed

    async def _announce_start(self, s: AsyncSession, p: ProjectRow, t: TaskRow, by_id: dict[int, TaskRow], deps: dict[int, list[int]]) -> None:
        m = await s.get(MemberRow, t.assignee_id)
        assert m is not None
        after = ", ".join(by_id[d].key for d in deps.get(t.id, []))
        text = f"{t.key} '{t.title}' is ready for @{m.handle}" + (f" (inputs: {after})" if after else "") + "."
        if m.kind == "human":
            text += f" Reply here with `/submit {t.key} <your output>` when done."
        st = await s.get(StreamRow, t.stream_id)
        assert st is not None
        collab = await s.get(MemberRow, st.collaborator_id) if st.collaborator_id else None
        post(s, p.agency_id, p.id, stream_addr(st.id), collab.handle if collab else SYSTEM, text,
             mentions=[m.external_user_id] if m.external_user_id else [])
        repos.event(s, p.id, "task_started", task_id=t.id, key=t.key, assignee=m.handle)

    def _start_worker(self, pid: int, tid: int, stats: FlightStats) -> asyncio.Task[None]:
        stats.started += 1

        async def run() -> None:
            structlog.contextvars.bind_contextvars(task_id=tid)  # log lines of this worker carry the task id
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            try:
                await self._work_task(pid, tid)
            finally:
                stats.in_flight -= 1
        return asyncio.create_task(run(), name=f"task-{tid}")

    async def _work_task(self, pid: int, tid: int) -> None:
        """Drive one task, a step at a time, until it is done or waits for someone."""
        steps = self.steps
        while not self._stopping() and pid not in self._halting:
            async with self.core.db.engine.connect() as conn:  # one prebuilt read before every step
                status, kind, asks = (await conn.execute(TASK_STEP, {"tid": tid})).one()
            if status == TaskState.RUNNING and asks:
                await steps.answer(pid, tid)
            elif status == TaskState.RUNNING:
                if kind == "human":
                    return  # a person works on it; their /submit wakes the project
                await steps.turn(pid, tid)
            elif status == TaskState.REVIEW:
                await steps.review(pid, tid)
            elif status == TaskState.ESCALATED:
                await steps.pm_decision(pid, tid)
            else:
                return
