"""Delivers the outbox through a chat port, exactly once per row where the
platform allows it (rows are marked delivered with the external id; a resend
after a crash carries the same nonce)."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sqlalchemy import bindparam, func, select, update

from agency.db.session import Database
from agency.db.tables import AgencyRow, MessageRow, SpaceRow, utcnow
from agency.ports import ChatPort, OutboundMessage, SpaceSpec

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 5
# built once: constructing a SQLAlchemy statement costs more than running it on SQLite
_MARK_DELIVERED = (update(MessageRow).where(MessageRow.id == bindparam("mid"))
                   .values(status="delivered", external_id=bindparam("ext"), delivered_at=bindparam("at"),
                           attempts=MessageRow.attempts + 1))


class OutboxDispatcher:
    def __init__(self, db: Database, chat: ChatPort, ready: asyncio.Event | None = None, *, poll_seconds: float = 1.0,
                 quiet_seconds: float = 0.02, max_gather_seconds: float = 0.25) -> None:
        self.db = db
        self.chat = chat
        self.ready = ready or asyncio.Event()
        self.poll_seconds = poll_seconds
        # after a wake, wait until the engine has been quiet for ``quiet_seconds`` (at most ``max_gather_seconds``):
        # a burst of engine steps finishes and sends its model requests first, and delivery runs while the
        # models think, off the project's critical path
        self.quiet_seconds = quiet_seconds
        self.max_gather_seconds = max_gather_seconds
        self.delivered = 0
        self.observers: list[Callable[[OutboundMessage, float], None]] = []  # (message, seconds to send)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._stopping = False
        self._spaces: dict[tuple[int, str], tuple[SpaceSpec, str]] = {}
        # rows that may have gone out before a crash: the first pending row of each space among those written
        # before this dispatcher existed (delivery is one message at a time, so at most that one was in flight);
        # None = not looked yet
        self._maybe_sent: set[int] | None = None
        self._born = utcnow()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="outbox")

    async def stop(self) -> None:
        """Stop after the delivery in progress is recorded (never between a send and its mark)."""
        if self._task is not None:
            self._stopping = True
            try:
                async with asyncio.timeout(10):
                    await self._lock.acquire()
            except TimeoutError:
                log.warning("outbox: a delivery is still in progress at shutdown; it is retried with the same nonce after restart")
            else:
                self._lock.release()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            self._stopping = False

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.poll_seconds):
                    await self.ready.wait()
            except TimeoutError:
                pass
            if self.ready.is_set() and self.quiet_seconds > 0:
                await self._gather()
            self.ready.clear()
            try:
                await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox drain failed; retrying")
                await asyncio.sleep(self.poll_seconds)

    async def _gather(self) -> None:
        """Wait for a pause in the engine's commits (each sets ``ready``), bounded by ``max_gather_seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_gather_seconds
        while True:
            self.ready.clear()
            await asyncio.sleep(min(self.quiet_seconds, max(deadline - loop.time(), 0.0)))
            if not self.ready.is_set() or loop.time() >= deadline:
                return

    async def depth(self) -> int:
        async with self.db.session() as s:
            return int((await s.execute(select(func.count(MessageRow.id)).where(MessageRow.direction == "out", MessageRow.status == "pending"))).scalar() or 0)

    async def drain(self) -> int:
        """Deliver every pending message, oldest first; return how many went out."""
        async with self._lock:
            sent = 0
            while True:
                async with self.db.session() as s:
                    rows = list((await s.execute(
                        select(MessageRow).where(MessageRow.direction == "out", MessageRow.status == "pending").order_by(MessageRow.id).limit(200)
                    )).scalars())
                if self._maybe_sent is None:
                    firsts: dict[str, int] = {}
                    for row in rows:
                        if row.created_at is not None and row.created_at < self._born:
                            firsts.setdefault(row.address, row.id)
                    self._maybe_sent = set(firsts.values())
                if not rows:
                    return sent
                stuck: set[str] = set()
                progressed = False
                for row in rows:
                    if self._stopping:
                        return sent
                    if row.address in stuck:
                        continue  # keep per-space order: a failed message holds back the ones after it
                    ok = await self._deliver(row)
                    if ok:
                        sent += 1
                        progressed = True
                    else:
                        stuck.add(row.address)
                if not progressed:
                    return sent

    async def _space(self, agency_id: int, address: str) -> tuple[SpaceSpec, str]:
        """The space of an address, materialised by the adapter (cached; a failed send evicts it)."""
        hit = self._spaces.get((agency_id, address))
        if hit is not None:
            return hit
        resolved = await self._resolve_space(agency_id, address)
        self._spaces[(agency_id, address)] = resolved
        return resolved

    async def _resolve_space(self, agency_id: int, address: str) -> tuple[SpaceSpec, str]:
        async with self.db.session() as s:
            agency = await s.get(AgencyRow, agency_id)
            row = (await s.execute(select(SpaceRow).where(SpaceRow.agency_id == agency_id, SpaceRow.address == address))).scalar_one_or_none()
            if row is None:
                kind = address.split(":", 1)[0]
                row = SpaceRow(agency_id=agency_id, address=address, kind=kind if kind in ("hq", "overview", "stream", "thread", "project") else "hq", name=address.replace(":", "-"))
                s.add(row)
                await s.commit()
            spec = SpaceSpec(address=row.address, kind=row.kind, name=row.name, parent=row.parent, topic=row.topic,  # type: ignore[arg-type]
                             agency_external_id=agency.external_id if agency else "")
            if row.parent:
                await self._space(agency_id, row.parent)
            ext = await self.chat.ensure_space(spec)
            if ext != row.external_id:
                row = await s.get(SpaceRow, row.id)
                row.external_id = ext  # type: ignore[union-attr]
                await s.commit()
            return spec, ext

    async def _deliver(self, row: MessageRow) -> bool:
        try:
            spec, space_ext = await self._space(row.agency_id, row.address)
            options: list[str] = []
            previous = None
            if row.approval_id or row.upsert_key:  # most messages need no extra read
                async with self.db.session() as s:
                    if row.approval_id:
                        from agency.db.tables import ApprovalRow

                        a = await s.get(ApprovalRow, row.approval_id)
                        options = list(a.options or []) if a else []
                    if row.upsert_key:
                        previous = (await s.execute(select(MessageRow.external_id).where(
                            MessageRow.upsert_key == row.upsert_key, MessageRow.status == "delivered", MessageRow.external_id.is_not(None)
                        ).order_by(MessageRow.id.desc()).limit(1))).scalar_one_or_none()
            msg = OutboundMessage(
                id=row.id, agency_external_id=spec.agency_external_id, space=spec, persona=row.persona,
                content=row.content, kind=row.kind, attachment_name=row.attachment_name, attachment_text=row.attachment_text,
                approval_id=row.approval_id, approval_options=options, mention_user_ids=list(row.mentions or []),
                upsert_key=row.upsert_key, nonce=f"ateams-{row.id}", maybe_sent=row.id in (self._maybe_sent or ()),
            )
            started = time.perf_counter()
            if previous:
                ext = await self.chat.edit(msg, space_ext, previous)
            else:
                ext = await self.chat.send(msg, space_ext)
            elapsed = time.perf_counter() - started
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("delivery of message %s to %s failed: %s", row.id, row.address, e)
            self._spaces.pop((row.agency_id, row.address), None)  # re-resolve (e.g. a channel deleted by hand)
            async with self.db.session() as s, s.begin():
                r = await s.get(MessageRow, row.id)
                if r is not None:
                    r.attempts += 1
                    r.error = str(getattr(e, "user_message", e))[:500]
                    if r.attempts >= MAX_ATTEMPTS:
                        r.status = "failed"
                        log.error("message %s gave up after %d attempts: %s", row.id, r.attempts, r.error)
            return False
        async with self.db.engine.begin() as conn:  # one prebuilt statement, no ORM session: this runs once per message sent
            await conn.execute(_MARK_DELIVERED, {"mid": row.id, "ext": str(ext), "at": utcnow()})
        self.delivered += 1
        if self._maybe_sent:
            self._maybe_sent.discard(row.id)
        for obs in self.observers:
            try:
                obs(msg, elapsed)
            except Exception:
                log.exception("outbox observer failed")
        return True
