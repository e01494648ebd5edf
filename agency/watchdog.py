"""The watchdog: finds work stuck past its deadline and resumes or escalates it.

Runs on APScheduler's asyncio scheduler. A task past its deadline is first
resumed (its project runner is restarted if it died, and the deadline is
extended once); if it is still stuck at the next deadline it is escalated with
the reason. Projects that should be running but have no runner are restarted.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import select

from agency.db import repos
from agency.db.tables import EventRow, ProjectRow, TaskRow
from agency.models import TERMINAL

log = logging.getLogger(__name__)


class Watchdog:
    def __init__(self, engine, *, interval_seconds: float = 30.0) -> None:  # noqa: ANN001
        self.engine = engine
        self.db = engine.db
        self.interval = interval_seconds
        self.scheduler: AsyncIOScheduler | None = None

    def start(self) -> None:
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.scheduler.add_job(self.check_once, "interval", seconds=self.interval, max_instances=1, coalesce=True, id="watchdog")
        self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.scheduler = None

    async def check_once(self, now: datetime | None = None) -> list[str]:
        """One sweep; returns what it did (for logs and tests)."""
        now = now or datetime.now(UTC)
        actions: list[str] = []
        extend = timedelta(seconds=self.engine.settings.engine.task_deadline_seconds)
        escalate: list[tuple[int, int, str]] = []
        async with self.db.session() as s:
            live = {pid for pid, t in self.engine._runners.items() if not t.done()}
            projects = list((await s.execute(select(ProjectRow).where(ProjectRow.status.not_in(TERMINAL)))).scalars())
            mine = {None, self.engine.leases.owner}  # another live process's projects are its own watchdog's
            projects = [p for p in projects if p.lease_owner in mine or p.lease_expires_at is None or p.lease_expires_at < now]
            for p in projects:
                if p.id not in live and p.status in ("new", "planning", "staffing", "running", "delivering"):
                    self.engine.spawn(p.id)
                    actions.append(f"restarted project {p.id}")
            stuck = list((await s.execute(select(TaskRow).where(
                TaskRow.status.in_(("running", "review")), TaskRow.deadline_at.is_not(None), TaskRow.deadline_at < now))).scalars())
            ours = {p.id for p in projects}
            for t in stuck:
                p = await s.get(ProjectRow, t.project_id)
                if p is None or p.status != "running" or p.id not in ours:
                    continue
                nudged = (await s.execute(select(EventRow.id).where(
                    EventRow.task_id == t.id, EventRow.kind == "watchdog_resumed", EventRow.data["attempt"].as_integer() == t.attempt))).first()
                if nudged is None:
                    t.deadline_at = now + extend
                    repos.event(s, t.project_id, "watchdog_resumed", task_id=t.id, attempt=t.attempt)
                    self.engine.spawn(t.project_id)
                    actions.append(f"resumed {t.key} of project {t.project_id}")
                else:
                    t.deadline_at = now + extend
                    escalate.append((t.project_id, t.id, f"{t.key} is stuck past its deadline ({int(extend.total_seconds())} s, twice)"))
                    actions.append(f"escalated {t.key} of project {t.project_id}")
            await s.commit()
        for pid, tid, reason in escalate:
            try:
                await self.engine.escalate(pid, tid, reason)
            except Exception:
                log.exception("watchdog could not escalate task %s (project=%s)", tid, pid)
        if actions:
            log.info("watchdog: %s", "; ".join(actions))
        return actions
