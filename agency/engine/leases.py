"""Project leases: a project is run by at most one process at a time.

A lease is the pair (``projects.lease_owner``, ``projects.lease_expires_at``),
claimed with a conditional update (the row is taken only if it is free, expired,
already ours, or held by a process of this machine that is gone), renewed while
the process runs the project, released on a clean stop, and taken over by another
process once it expires. On PostgreSQL the scan for free projects locks the
candidate rows with ``FOR UPDATE SKIP LOCKED`` so that workers scanning at once
take different projects instead of queueing on the same ones.

Only the owner runs a project's steps; every step is still a conditional
transition (see :mod:`agency.states`), so even a process that lost its lease
without noticing cannot apply a step twice.
"""
from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta

from sqlalchemy import and_, or_, select, update

from agency.db.session import Database
from agency.db.tables import ProjectRow, utcnow
from agency.states import PROJECT_TERMINAL, ProjectState

_HOST = socket.gethostname()


def new_owner() -> str:
    """A process's name in the leases and claims it holds: host, pid and a random part (a pid is reused)."""
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


_PROCESS: dict[int, str] = {}


def process_owner() -> str:
    """This process's owner name, the same for every engine and outbox it runs (a service restarted in
    the same process takes its leases and claims back at once); a forked child gets its own."""
    pid = os.getpid()
    if pid not in _PROCESS:
        _PROCESS[pid] = new_owner()
    return _PROCESS[pid]


def gone(owner: str | None) -> bool:
    """An owner that ran on this machine and whose process no longer exists (a crash, a kill -9): its
    leases need not wait for their expiry. Owners on other machines wait for it."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _HOST or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class Leases:
    def __init__(self, db: Database, ttl_seconds: float, owner: str | None = None) -> None:
        self.db = db
        self.ttl = timedelta(seconds=ttl_seconds)
        self.owner = owner or process_owner()

    async def claim(self, pid: int, *, finished: bool = False) -> bool:
        """Take (or keep) the lease of project ``pid``; False if another live process holds it, or the
        project is finished (``finished=True``: a done project, for its after-delivery work)."""
        now = utcnow()
        async with self.db.session() as s:
            row = (await s.execute(select(ProjectRow.status, ProjectRow.lease_owner, ProjectRow.lease_expires_at)
                                   .where(ProjectRow.id == pid))).one_or_none()
            if row is None:
                return False
            status, owner, expires = row
            if status in PROJECT_TERMINAL and not (finished and status == ProjectState.DONE):
                return False
            free = owner is None or owner == self.owner or expires is None or expires < now or gone(owner)
            if not free:
                return False
            seen = ProjectRow.lease_owner.is_(None) if owner is None else ProjectRow.lease_owner == owner
            n = (await s.execute(update(ProjectRow).where(ProjectRow.id == pid, seen)
                                 .values(lease_owner=self.owner, lease_expires_at=now + self.ttl)
                                 .execution_options(synchronize_session=False))).rowcount  # type: ignore[attr-defined]
            await s.commit()
            return bool(n)

    async def claimable(self, limit: int = 100) -> list[int]:
        """Unfinished projects that no live process holds (candidates for :meth:`claim`)."""
        now = utcnow()
        q = (select(ProjectRow.id, ProjectRow.lease_owner, ProjectRow.lease_expires_at)
             .where(ProjectRow.status.not_in(PROJECT_TERMINAL),
                    or_(ProjectRow.lease_owner.is_(None), ProjectRow.lease_owner == self.owner, ProjectRow.lease_expires_at.is_(None),
                        ProjectRow.lease_expires_at < now, ProjectRow.lease_owner.like(f"{_HOST}:%")))
             .order_by(ProjectRow.id).limit(limit))
        async with self.db.session() as s:
            if self.db.engine.dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True, of=ProjectRow)
            rows = (await s.execute(q)).all()
            await s.commit()
        return [pid for pid, owner, exp in rows
                if owner is None or owner == self.owner or exp is None or exp < now or gone(owner)]

    async def renew(self, pids: set[int]) -> set[int]:
        """Extend the leases of ``pids``; return those this process no longer holds (lost)."""
        if not pids:
            return set()
        now = utcnow()
        async with self.db.session() as s:
            await s.execute(update(ProjectRow).where(ProjectRow.id.in_(pids), ProjectRow.lease_owner == self.owner)
                            .values(lease_expires_at=now + self.ttl).execution_options(synchronize_session=False))
            held = set((await s.execute(select(ProjectRow.id).where(ProjectRow.id.in_(pids), ProjectRow.lease_owner == self.owner))).scalars())
            await s.commit()
        return pids - held

    async def release(self, pid: int | None = None) -> None:
        """Give up the lease of ``pid`` (or every lease of this process): another process may take it at once."""
        conds = [ProjectRow.lease_owner == self.owner]
        if pid is not None:
            conds.append(ProjectRow.id == pid)
        async with self.db.session() as s:
            await s.execute(update(ProjectRow).where(and_(*conds)).values(lease_owner=None, lease_expires_at=None)
                            .execution_options(synchronize_session=False))
            await s.commit()
