"""Delivers the outbox through a chat port: every message, in order within its space, exactly once
where the platform allows it (a row is marked delivered with its external id; a resend after a crash
carries the same nonce).

- **Spaces are independent.** Each space (channel, thread) has at most one message in flight, sent only
  when every earlier pending message of that space went out; spaces run concurrently (at most
  ``max_spaces`` sends at once), each paced on its own within the port's ``pace_limits``. A pacing wait,
  a slow send or a failure of one space delays only that space.
- **Transient failures are retried forever**, with exponential backoff and jitter capped at
  ``BACKOFF_CAP_SECONDS``; the next attempt time is stored on the row (``next_attempt_at``), so a
  restart continues the backoff. Any exception a port raises other than
  :class:`~agency.ports.DeliveryPermanentError` counts as transient.
- **A permanent failure** keeps the row as ``undeliverable`` with its reason (``error``) and cause, tells
  the Director once per cause (a notice in ``hq``, through this outbox), and holds the later messages of
  that space in order (unless the failure concerned only that message's content). :meth:`redeliver`
  moves such rows back to pending; it runs every ``REDELIVER_SECONDS`` and when the adapter sees that the
  cause may be fixed (a permission or channel change).

Every status change goes through :func:`agency.states.transition` (a conditional update): a row that
someone else moved meanwhile is left as it is.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BindParameter,
    and_,
    bindparam,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import aliased

from agency.db.session import Database
from agency.db.tables import AgencyRow, MessageRow, SpaceRow, TZDateTime, utcnow
from agency.engine.leases import gone, process_owner
from agency.ports import (
    ChatPort,
    DeliveryPermanentError,
    DeliveryTransientError,
    OutboundMessage,
    SpaceSpec,
)
from agency.states import MESSAGE, MessageState, transition

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 1.0  # the first retry comes after 0.5-1 s, then doubling
BACKOFF_CAP_SECONDS = 300.0  # never more than 5 minutes between two attempts
REDELIVER_SECONDS = 300.0  # undeliverable messages are tried again this often (and on the adapter's hints)
MAX_SPACES = 16  # sends in flight at once, one per space
CLAIM_TTL = timedelta(seconds=60)  # a message claimed by a process that stopped answering is free again after this
NOTICE_PERSONA = "A-TEAMs"
SpaceKey = tuple[int, str]  # (agency id, address)

_M = MessageState
_held = aliased(MessageRow)
# a space-scope undeliverable message holds the later messages of its space (order within a space is kept)
_HELD_BEFORE = exists().where(_held.agency_id == MessageRow.agency_id, _held.address == MessageRow.address,
                              _held.status == _M.UNDELIVERABLE, _held.cause.like("space:%"), _held.id < MessageRow.id)
# built once: constructing a SQLAlchemy statement costs more than running it on SQLite
_HEADS = select(MessageRow.id, MessageRow.agency_id, MessageRow.address, MessageRow.next_attempt_at, MessageRow.created_at).where(
    MessageRow.id.in_(select(func.min(MessageRow.id)).where(MessageRow.direction == "out", MessageRow.status == _M.PENDING)
                      .group_by(MessageRow.agency_id, MessageRow.address)), ~_HELD_BEFORE)
BATCH = 20  # a space's worker reads its next pending messages this many at a time
# a space's next pending messages, oldest first (none if the space is held behind an undeliverable one)
_HEAD = (select(MessageRow).where(MessageRow.direction == "out", MessageRow.status == _M.PENDING,
                                  MessageRow.agency_id == bindparam("agency"), MessageRow.address == bindparam("address"),
                                  ~_HELD_BEFORE)
         .order_by(MessageRow.id).limit(BATCH))
# the claim of one message, conditional on the claim it was seen with (none, or a given one)
_CLAIM_VALUES: dict[str, BindParameter[Any]] = {"claimed_by": bindparam("owner"), "claim_expires_at": bindparam("until")}
_CLAIM_FREE = (update(MessageRow).where(MessageRow.id == bindparam("mid"), MessageRow.status == _M.PENDING,
                                        MessageRow.claimed_by.is_(None))
               .values(**_CLAIM_VALUES).execution_options(synchronize_session=False))
_CLAIM_SEEN = (update(MessageRow).where(MessageRow.id == bindparam("mid"), MessageRow.status == _M.PENDING,
                                        MessageRow.claimed_by == bindparam("seen"))
               .values(**_CLAIM_VALUES).execution_options(synchronize_session=False))
_RETRY_LATER = (update(MessageRow).where(MessageRow.id == bindparam("mid"), MessageRow.status == _M.PENDING)
                .values(attempts=MessageRow.attempts + 1, error=bindparam("err"), next_attempt_at=bindparam("at")))


class Pacer:
    """One space's pace: at most ``count`` sends per ``seconds`` for each ``(count, seconds)`` window."""

    def __init__(self, limits: Sequence[tuple[int, float]]) -> None:
        self.limits = [(int(n), float(per)) for n, per in limits if n > 0]
        self._span = max((per for _, per in self.limits), default=0.0)
        self._stamps: deque[float] = deque()

    def delay(self, now: float) -> float:
        """Seconds until the next send may go (0: now)."""
        while self._stamps and now - self._stamps[0] >= self._span:
            self._stamps.popleft()
        wait = 0.0
        for n, per in self.limits:
            if len(self._stamps) >= n:
                wait = max(wait, per - (now - self._stamps[-n]))
        return wait

    def record(self, now: float) -> None:
        self._stamps.append(now)


def backoff_seconds(attempts: int, rng: random.Random, retry_after: float | None = None) -> float:
    """The wait after the ``attempts``-th failure: doubling from ``BACKOFF_BASE_SECONDS``, capped, with
    jitter (half to all of it, so retries of many messages spread out), at least the platform's hint."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** min(max(attempts - 1, 0), 30))
    wait = ceiling * rng.uniform(0.5, 1.0)
    if retry_after:
        wait = max(wait, min(float(retry_after), BACKOFF_CAP_SECONDS))
    return wait


def _place(address: str) -> str:
    kind, _, rest = address.partition(":")
    return {
        "hq": "#hq",
        "project": f"the category of project {rest}",
        "overview": f"the overview channel of project {rest}",
        "stream": "a stream's channel",
        "thread": "a member's thread",
    }.get(kind, address)


class OutboxDispatcher:
    def __init__(self, db: Database, chat: ChatPort, ready: asyncio.Event | None = None, *, poll_seconds: float = 1.0,
                 quiet_seconds: float = 0.02, max_gather_seconds: float = 0.25, max_spaces: int = MAX_SPACES,
                 clock: Callable[[], datetime] = utcnow, monotonic: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.db = db
        self.chat = chat
        self.owner = process_owner()  # this process's name in the messages it claims
        self.ready = ready or asyncio.Event()
        self.poll_seconds = poll_seconds
        # after a wake, wait until the engine has been quiet for ``quiet_seconds`` (at most ``max_gather_seconds``):
        # a burst of engine steps finishes and sends its model requests first, and delivery runs while the
        # models think, off the project's critical path
        self.quiet_seconds = quiet_seconds
        self.max_gather_seconds = max_gather_seconds
        self.clock = clock  # the time next_attempt_at is compared with (tests inject one, or pass drain(now=...))
        self.monotonic = monotonic
        self.rng = rng or random.Random()
        self.delivered = 0
        self.observers: list[Callable[[OutboundMessage, float], None]] = []  # (message, seconds to send)
        self.pace_limits: tuple[tuple[int, float], ...] = tuple(getattr(chat, "pace_limits", None) or ())
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stops = 0  # a drain running across a stop ends with it
        self._stop_event = asyncio.Event()  # ends pacing waits at a stop
        self._slots = asyncio.Semaphore(max(1, max_spaces))
        self._workers: dict[SpaceKey, asyncio.Task[None]] = {}
        self._recheck: set[SpaceKey] = set()  # a scan found work for a space whose worker was finishing
        self._requeued = 0  # counts redeliveries that moved messages: a worker's batch read before one is read again
        self._pacers: dict[SpaceKey, Pacer] = {}
        self._spaces: dict[SpaceKey, tuple[SpaceSpec, str]] = {}
        self._resolving: dict[SpaceKey, asyncio.Lock] = {}
        self._notice_lock = asyncio.Lock()
        # rows that may have gone out before a crash: the first pending row of each space among those written
        # before this dispatcher existed (one message per space is in flight at a time, so at most that one
        # was); None = not looked yet
        self._maybe_sent: set[int] | None = None
        self._born = utcnow()

    # -- running -------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="outbox")

    async def stop(self) -> None:
        """Stop after the deliveries in progress are recorded (never between a send and its mark)."""
        self._stopping = True
        self._stops += 1
        self._stop_event.set()
        try:
            if self._task is not None:  # the scan loop ends at its next look at the flag, never inside a statement
                self.ready.set()
                try:
                    await asyncio.wait_for(asyncio.shield(self._task), 10)
                except TimeoutError:
                    self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
                self._task = None
            workers = list(self._workers.values())
            if workers:
                _, late = await asyncio.wait(workers, timeout=10)
                if late:
                    log.warning("outbox: %d deliveries still in progress at shutdown; they are retried with the same nonce "
                                "after restart", len(late))
                    for t in late:
                        t.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        finally:
            self._stopping = False
            self._stop_event.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_redeliver = loop.time()  # at the start too: a cause may have been fixed while we were down
        wake: datetime | None = None
        while not self._stopping:
            if loop.time() >= next_redeliver:
                next_redeliver = loop.time() + REDELIVER_SECONDS
                try:
                    await self.redeliver(content=False)  # a blocked content waits for a moderation change
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("outbox: periodic redelivery failed")
            timeout = self.poll_seconds
            if wake is not None:
                timeout = min(timeout, max((wake - self.clock()).total_seconds(), 0.0))
            try:
                async with asyncio.timeout(timeout):
                    await self.ready.wait()
            except TimeoutError:
                pass
            if self.ready.is_set() and self.quiet_seconds > 0 and not self._stopping:
                await self._gather()
            self.ready.clear()
            if self._stopping:
                return
            try:
                wake = await self._schedule(None)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox scan failed; retrying")
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
            return int((await s.execute(select(func.count(MessageRow.id)).where(MessageRow.direction == "out", MessageRow.status == _M.PENDING))).scalar() or 0)

    async def drain(self, now: datetime | None = None) -> int:
        """Deliver every message deliverable at ``now`` (default: the clock), in order within each space;
        return how many went out meanwhile. Messages waiting for their next attempt are not waited for
        (nor the spaces held behind an undeliverable one); pacing waits are."""
        now = now or self.clock()
        before, stops = self.delivered, self._stops
        while not self._stopping and self._stops == stops:
            await self._schedule(now)
            running = list(self._workers.values())
            if not running:
                break
            await asyncio.wait(running)
            for t in running:
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        return self.delivered - before

    async def _schedule(self, now: datetime | None) -> datetime | None:
        """Start a worker for every space whose first pending message is due; return the earliest time a
        waiting one becomes due."""
        async with self.db.session() as s:
            heads = (await s.execute(_HEADS)).all()
        if self._maybe_sent is None:
            self._maybe_sent = {h.id for h in heads if h.created_at is not None and h.created_at < self._born}
        current = now or self.clock()
        wake: datetime | None = None
        for h in sorted(heads, key=lambda h: h.id):
            key = (h.agency_id, h.address)
            if h.next_attempt_at is not None and h.next_attempt_at > current:
                wake = h.next_attempt_at if wake is None else min(wake, h.next_attempt_at)
                continue
            if key in self._workers:
                self._recheck.add(key)
                continue
            if self._stopping:
                break
            task = asyncio.create_task(self._work(key, now), name=f"outbox {h.address}")
            self._workers[key] = task
            task.add_done_callback(self._worker_done)
        return wake

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("outbox worker failed; the next scan retries", exc_info=task.exception())

    async def _work(self, key: SpaceKey, now: datetime | None) -> None:
        """One space: its pending messages, oldest first, one at a time, while they are due. They are read
        ``BATCH`` at a time; a failure, a refused claim of a row read earlier, or a redelivery meanwhile
        makes the worker read again before it goes on."""
        try:
            batch: deque[MessageRow] = deque()
            full = True  # the last read may have left rows behind
            fresh = False  # the row at hand was read just now (not before an earlier delivery)
            requeued = self._requeued
            while not self._stopping:
                if requeued != self._requeued:  # messages went back to pending: an earlier one may be among them
                    batch.clear()
                    full = True
                    requeued = self._requeued
                if not batch and full:
                    async with self.db.session() as s:
                        batch.extend((await s.execute(_HEAD, {"agency": key[0], "address": key[1]})).scalars())
                    full, fresh = len(batch) >= BATCH, True
                row = batch[0] if batch else None
                current = now or self.clock()
                if row is None or (row.next_attempt_at is not None and row.next_attempt_at > current):
                    if key in self._recheck:  # a scan saw work here while this worker was finishing: look again
                        self._recheck.discard(key)
                        batch.clear()
                        full = True
                        continue
                    if row is None and full:  # the batch was full: more may follow
                        continue
                    return
                await self._pace(key)
                if self._stopping:
                    return
                if not await self._claim(row, current):
                    if fresh:
                        return  # another live process is sending this space's head; order is kept by never skipping it
                    batch.clear()  # the row changed since it was read: look again
                    full = True
                    continue
                batch.popleft()
                fresh = False
                async with self._slots:
                    if self._stopping:
                        return
                    if not await self._deliver(row, current):  # retried later or undeliverable: what follows is read again
                        batch.clear()
                        full = True
        finally:
            if self._workers.get(key) is asyncio.current_task():
                del self._workers[key]
            self._recheck.discard(key)

    async def _claim(self, row: MessageRow, now: datetime) -> bool:
        """Claim the message for this process before sending it, so that two processes delivering from one
        database never send one message: a conditional update on the claim it was seen with (free, ours,
        expired, or held by a process of this machine that is gone)."""
        free = (row.claimed_by is None or row.claimed_by == self.owner or gone(row.claimed_by)
                or (row.claim_expires_at is not None and row.claim_expires_at < now))
        if not free:
            return False
        params = {"mid": row.id, "owner": self.owner, "until": now + CLAIM_TTL}
        if row.claimed_by is not None:
            params["seen"] = row.claimed_by
        async with self.db.session() as s:
            n = (await s.execute(_CLAIM_FREE if row.claimed_by is None else _CLAIM_SEEN,
                                 params)).rowcount  # type: ignore[attr-defined]
            await s.commit()
        return bool(n)

    async def _pace(self, key: SpaceKey) -> None:
        if not self.pace_limits:
            return
        pacer = self._pacers.get(key)
        if pacer is None:
            pacer = self._pacers[key] = Pacer(self.pace_limits)
        while (wait := pacer.delay(self.monotonic())) > 0 and not self._stopping:
            try:  # only this space waits; a stop ends the wait
                await asyncio.wait_for(self._stop_event.wait(), wait)
            except TimeoutError:
                pass
        pacer.record(self.monotonic())

    # -- spaces --------------------------------------------------------------------------------------------
    async def _space(self, agency_id: int, address: str) -> tuple[SpaceSpec, str]:
        """The space of an address, materialised by the adapter (cached; a failed send evicts it)."""
        key = (agency_id, address)
        hit = self._spaces.get(key)
        if hit is not None:
            return hit
        lock = self._resolving.setdefault(key, asyncio.Lock())  # two threads of one channel resolve it once
        async with lock:
            hit = self._spaces.get(key)
            if hit is None:
                hit = self._spaces[key] = await self._resolve_space(agency_id, address)
            return hit

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

    # -- one message ---------------------------------------------------------------------------------------
    async def _deliver(self, row: MessageRow, now: datetime) -> bool:
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
                            MessageRow.upsert_key == row.upsert_key, MessageRow.status == _M.DELIVERED, MessageRow.external_id.is_not(None)
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
        except Exception as e:  # noqa: BLE001 - whatever the port raises, the message is kept and retried or reported
            self._spaces.pop((row.agency_id, row.address), None)  # re-resolve (e.g. a channel deleted by hand)
            if isinstance(e, DeliveryPermanentError):
                await self._undeliverable(row, e)
            else:
                await self._retry_later(row, e, now)
            return False
        async with self.db.session() as s:
            moved = await transition(s, MESSAGE, row.id, _M.DELIVERED, values={
                "external_id": str(ext), "delivered_at": utcnow(), "attempts": MessageRow.attempts + 1,
                "next_attempt_at": None, "cause": None})
            await s.commit()
        if not moved:
            log.info("message %s was marked by someone else meanwhile; left as it is", row.id)
        self.delivered += 1
        if self._maybe_sent:
            self._maybe_sent.discard(row.id)
        for obs in self.observers:
            try:
                obs(msg, elapsed)
            except Exception:
                log.exception("outbox observer failed")
        return True

    async def _retry_later(self, row: MessageRow, e: Exception, now: datetime) -> None:
        attempts = (row.attempts or 0) + 1
        retry_after = e.retry_after if isinstance(e, DeliveryTransientError) else None
        at = now + timedelta(seconds=backoff_seconds(attempts, self.rng, retry_after))
        reason = e.reason if isinstance(e, DeliveryTransientError) else f"{type(e).__name__}: {getattr(e, 'user_message', e)}"
        if isinstance(e, DeliveryTransientError):
            log.warning("delivery of message %s to %s failed (attempt %d, next at %s): %s", row.id, row.address, attempts,
                        at.isoformat(timespec="seconds"), reason)
        else:  # not a failure the adapter knows: retried all the same, but someone should look at it
            log.warning("delivery of message %s to %s failed unexpectedly (attempt %d, next at %s)", row.id, row.address,
                        attempts, at.isoformat(timespec="seconds"), exc_info=e)
        async with self.db.session() as s:
            await s.execute(_RETRY_LATER, {"mid": row.id, "err": reason[:500], "at": at})
            await s.commit()

    async def _undeliverable(self, row: MessageRow, e: DeliveryPermanentError) -> None:
        cause = f"{'message' if e.content else 'space'}:{e.cause}"
        if len(cause) > 80:
            cause = cause[:50] + "#" + hashlib.sha256(cause.encode()).hexdigest()[:20]
        error = f"{e.reason} {e.what_to_do}".strip()[:1000]
        log.warning("message %s to %s is undeliverable: %s", row.id, row.address, error)
        async with self._notice_lock, self.db.session() as s:  # one notice per cause (in this process)
            moved = await transition(
                s, MESSAGE, row.id, _M.UNDELIVERABLE, frm=(_M.PENDING,),
                values={"attempts": MessageRow.attempts + 1, "error": error, "cause": cause, "next_attempt_at": None},
                event="message_undeliverable", project_id=row.project_id, message=row.id, address=row.address, reason=error)
            if moved and row.cause != cause:  # a new case: unless the cause is already known (and reported)
                await s.execute(self._notice(row, cause, e))
            await s.commit()
        self.ready.set()

    def _notice(self, row: MessageRow, cause: str, e: DeliveryPermanentError) -> Any:
        """An INSERT of the Director's notice in hq that applies only if no other message is pending or
        undeliverable for this cause (one statement: nothing read first)."""
        from agency.logs import redact

        later = ("Later messages to the same place go on." if e.content else
                 "Later messages to the same place wait for it, in order.")
        content = (f"**A message could not be delivered** ({_place(row.address)}, from {row.persona}): {e.reason} "
                   f"{e.what_to_do} It is kept (see `/project status`) and delivered when that is fixed. {later}")
        other = aliased(MessageRow)
        known = exists().where(other.agency_id == row.agency_id, other.cause == cause,
                               other.status.in_((_M.PENDING, _M.UNDELIVERABLE)), other.id != row.id)
        values = select(literal(row.agency_id), literal("out"), literal("hq"), literal(NOTICE_PERSONA), literal("notice"),
                        literal(redact(content)), literal(["director"], JSON), literal(utcnow(), TZDateTime())).where(~known)
        return insert(MessageRow).from_select(
            ["agency_id", "direction", "address", "persona", "kind", "content", "mentions", "created_at"], values)

    # -- redelivery ----------------------------------------------------------------------------------------
    async def redeliver(self, agency_id: int | None = None, address: str | None = None, *,
                        agency_external_id: str | None = None, content: bool = True) -> int:
        """Move undeliverable messages (and rows an older version gave up on) back to pending, due now; return
        how many. Narrowed to an agency (by id or its platform id) and an address; ``content=False`` leaves
        messages refused for their content (e.g. by AutoMod: they fail again until a rule changes)."""
        where: list[Any] = [MessageRow.direction == "out"]
        if agency_id is not None:
            where.append(MessageRow.agency_id == agency_id)
        if agency_external_id is not None:
            where.append(MessageRow.agency_id.in_(select(AgencyRow.id).where(AgencyRow.external_id == str(agency_external_id))))
        if address is not None:
            where.append(MessageRow.address == address)
        if not content:
            where.append(or_(MessageRow.cause.is_(None), ~MessageRow.cause.like("message:%")))
        async with self.db.session() as s:
            n = await transition(s, MESSAGE, None, _M.PENDING, frm=(_M.UNDELIVERABLE, _M.FAILED), where=where,
                                 values={"next_attempt_at": None})
            await s.commit()
        if n:
            self._requeued += 1
            log.info("outbox: %d undeliverable message(s) queued again", n)
            self.ready.set()
        return n

    async def undeliverable(self, agency_id: int | None = None) -> list[tuple[int, str]]:
        """(count, reason) of the undeliverable messages, most frequent first."""
        conds: Iterable[Any] = [MessageRow.status == _M.UNDELIVERABLE]
        if agency_id is not None:
            conds = [*conds, MessageRow.agency_id == agency_id]
        async with self.db.session() as s:
            rows = (await s.execute(select(func.count(MessageRow.id), MessageRow.error).where(and_(*conds))
                                    .group_by(MessageRow.error).order_by(func.count(MessageRow.id).desc()))).all()
        return [(int(n), err or "") for n, err in rows]
