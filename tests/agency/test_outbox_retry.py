"""The outbox never drops a message and never holds one space back for another (issue 11, defects 5 and 6).

Time is never waited on: ``drain(now=...)`` is called with the times the rows store, and blocking ports
wait on events the tests hold.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from agency.audit import export_audit
from agency.db import repos
from agency.db.tables import MessageRow, ProjectRow
from agency.outbox import BACKOFF_CAP_SECONDS, OutboxDispatcher, Pacer, backoff_seconds
from agency.ports import (
    DeliveryPermanentError,
    DeliveryTransientError,
    OutboundMessage,
    SpaceSpec,
)
from agency.service import AgencyService
from agency.states import ProjectState
from tests.conftest import AGENCY

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
NO_ACCESS = DeliveryPermanentError("I am missing the **Send Messages** permission in #research.",
                                   "Grant it to my role; then the waiting messages are delivered.", cause="perm:send:#research")


class FakeChat:
    """A chat port whose failures the test decides: ``fail(message)`` returns an exception to raise (or None);
    ``gates[address]``, when set, is awaited before a send to that space completes."""

    def __init__(self, fail: Callable[[OutboundMessage], BaseException | None] | None = None, *, pace_limits: Any = None,
                 yields: random.Random | None = None) -> None:
        self.fail = fail or (lambda m: None)
        self.sent: list[OutboundMessage] = []
        self.edits: list[tuple[str, OutboundMessage]] = []
        self.tries: Counter[int] = Counter()
        self.gates: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.delivered_to: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.in_flight = 0
        self.most_in_flight = 0
        self.yields = yields
        if pace_limits is not None:
            self.pace_limits = pace_limits

    async def ensure_space(self, space: SpaceSpec) -> str:
        return space.address

    async def _go(self, message: OutboundMessage) -> None:
        self.tries[message.id] += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self.started[message.space.address].set()
            if self.yields is not None:
                for _ in range(self.yields.randrange(4)):
                    await asyncio.sleep(0)
            gate = self.gates.get(message.space.address)
            if gate is not None:
                await gate.wait()
            error = self.fail(message)
            if error is not None:
                raise error
        finally:
            self.in_flight -= 1

    async def send(self, message: OutboundMessage, space_external_id: str) -> str:
        await self._go(message)
        self.sent.append(message)
        self.delivered_to[message.space.address].set()
        return f"ext-{message.id}"

    async def edit(self, message: OutboundMessage, space_external_id: str, external_id: str) -> str:
        await self._go(message)
        self.edits.append((external_id, message))
        return external_id


async def _service(make_service) -> tuple[AgencyService, int]:
    service = await make_service(start=False)  # no engine, no background outbox: the test drives its own
    return service, await service.ensure_agency(AGENCY, "Agency")


async def _post(service: AgencyService, agency_id: int, *messages: tuple[str, str], project_id: int | None = None,
                **kw: Any) -> list[int]:
    async with service.db.session() as s:
        rows = [repos.post(s, agency_id, project_id, address, "PM", text, **kw) for address, text in messages]
        await s.commit()
        return [r.id for r in rows]


async def _row(service: AgencyService, mid: int) -> MessageRow:
    async with service.db.session() as s:
        row = await s.get(MessageRow, mid)
        assert row is not None
        return row


async def _rows(service: AgencyService, **where: Any) -> list[MessageRow]:
    async with service.db.session() as s:
        q = select(MessageRow).where(*[getattr(MessageRow, k) == v for k, v in where.items()]).order_by(MessageRow.id)
        return list((await s.execute(q)).scalars())


def _sent_ids(chat: FakeChat, address: str) -> list[int]:
    return [m.id for m in chat.sent if m.space.address == address]


# -- defect 5: transient failures ------------------------------------------------------------------------------
async def test_a_burst_of_transient_failures_is_retried_with_growing_backoff_until_delivered(make_service) -> None:
    service, agency_id = await _service(make_service)
    failures = 8  # more than the 5 attempts after which the old outbox gave up for good
    chat = FakeChat(lambda m: DeliveryTransientError("HTTP 503 from Discord") if chat.tries[m.id] <= failures else None)
    dispatcher = OutboxDispatcher(service.db, chat, rng=random.Random(7))
    [mid] = await _post(service, agency_id, ("hq", "the approval the Director must see"))

    now, times = T0, []
    for attempt in range(1, failures + 1):
        assert await dispatcher.drain(now=now) == 0
        row = await _row(service, mid)
        assert row.status == "pending" and row.attempts == attempt and row.error == "HTTP 503 from Discord"
        assert row.next_attempt_at is not None and row.next_attempt_at > now
        # not due yet: a drain before that time sends nothing and does not wait for it
        assert await dispatcher.drain(now=row.next_attempt_at - timedelta(milliseconds=1)) == 0
        assert chat.tries[mid] == attempt
        times.append(row.next_attempt_at)
        now = row.next_attempt_at
    assert await dispatcher.drain(now=now) == 1

    row = await _row(service, mid)
    assert row.status == "delivered" and row.attempts == failures + 1 and row.next_attempt_at is None
    assert [m.id for m in chat.sent] == [mid]  # delivered once
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise([T0, *times])]
    assert all(later >= earlier for earlier, later in itertools.pairwise(gaps)), gaps  # exponential: it grows
    assert gaps[-1] > 8 * gaps[0]
    assert max(gaps) <= BACKOFF_CAP_SECONDS


def test_backoff_is_capped_jittered_and_honours_the_platforms_hint() -> None:
    rng = random.Random(1)
    waits = [backoff_seconds(n, rng) for n in range(1, 60)]
    assert max(waits) <= BACKOFF_CAP_SECONDS and waits[-1] >= BACKOFF_CAP_SECONDS / 2  # no cap on attempts, a cap on the wait
    assert len({round(w, 6) for w in waits[-10:]}) > 1  # jitter: many messages do not retry in lockstep
    assert backoff_seconds(1, rng, retry_after=42.0) >= 42.0


async def test_an_unknown_exception_is_retried_as_transient_and_logged(make_service, caplog) -> None:
    service, agency_id = await _service(make_service)
    chat = FakeChat(lambda m: RuntimeError("adapter bug") if chat.tries[m.id] == 1 else None)
    dispatcher = OutboxDispatcher(service.db, chat)
    [mid] = await _post(service, agency_id, ("hq", "hello"))
    assert await dispatcher.drain(now=T0) == 0
    row = await _row(service, mid)
    assert row.status == "pending" and "adapter bug" in row.error and "failed unexpectedly" in caplog.text
    assert await dispatcher.drain(now=row.next_attempt_at) == 1


async def test_a_restart_continues_the_backoff_from_the_stored_row(make_service) -> None:
    service, agency_id = await _service(make_service)
    first = FakeChat(lambda m: DeliveryTransientError("Discord is down"))
    dispatcher = OutboxDispatcher(service.db, first, rng=random.Random(3))
    [mid] = await _post(service, agency_id, ("overview:1", "status"))
    now = T0
    for _ in range(3):
        tried_at = now
        await dispatcher.drain(now=now)
        now = (await _row(service, mid)).next_attempt_at
    before = await _row(service, mid)
    third_gap = before.next_attempt_at - tried_at
    await dispatcher.stop()

    # a new process: another dispatcher and port over the same database
    second = FakeChat(lambda m: DeliveryTransientError("still down") if second.tries[m.id] == 1 else None)
    restarted = OutboxDispatcher(service.db, second, rng=random.Random(4))
    assert await restarted.drain(now=before.next_attempt_at - timedelta(seconds=0.1)) == 0
    assert not second.tries  # the stored next attempt time holds across the restart
    assert await restarted.drain(now=before.next_attempt_at) == 0
    after = await _row(service, mid)
    assert after.attempts == 4
    assert after.next_attempt_at - before.next_attempt_at >= third_gap  # the backoff goes on growing, it does not start over
    assert await restarted.drain(now=after.next_attempt_at) == 1
    row = await _row(service, mid)
    assert row.status == "delivered" and row.attempts == 5
    assert [m.id for m in second.sent] == [mid] and second.sent[0].maybe_sent  # written before this process: look first


# -- defect 5: permanent failures ------------------------------------------------------------------------------
async def test_a_permanent_error_is_kept_reported_once_shown_and_redelivered(make_service) -> None:
    service, agency_id = await _service(make_service)
    async with service.db.session() as s:
        p = ProjectRow(agency_id=agency_id, objective="Compare espresso machines", oversight="plan", status=ProjectState.NEW,
                       director_notes=[])
        s.add(p)
        await s.commit()
        pid = p.id
    broken = {f"thread:1:{i}" for i in range(10)}
    chat = FakeChat(lambda m: NO_ACCESS if m.space.address in broken else None)
    dispatcher = OutboxDispatcher(service.db, chat)
    ids = await _post(service, agency_id, *[(f"thread:1:{i}", f"work {i}") for i in range(10)], project_id=pid)

    await dispatcher.drain(now=T0)
    rows = [await _row(service, i) for i in ids]
    assert {r.status for r in rows} == {"undeliverable"}
    assert all("Send Messages" in r.error and "Grant it" in r.error for r in rows)
    notices = [m for m in chat.sent if m.kind == "notice"]
    assert len(notices) == 1  # once per cause, not once per message
    notice = notices[0]
    assert notice.space.address == "hq" and notice.mention_user_ids == ["director"]
    assert "could not be delivered" in notice.content and "Send Messages" in notice.content and "Grant it" in notice.content

    # the periodic retry fails again: still one notice
    assert await dispatcher.redeliver(content=False) == 10
    await dispatcher.drain(now=T0 + timedelta(minutes=5))
    assert len([m for m in chat.sent if m.kind == "notice"]) == 1
    assert all(r.status == "undeliverable" for r in [await _row(service, i) for i in ids])

    # visible in /project status and in the audit export
    text = AgencyService.render_status(await service.status(pid))
    assert "Undeliverable: 10 messages" in text and "Send Messages" in text
    records = [r async for r in export_audit(service.db, pid)]
    kept = [r for r in records if r["type"] == "message" and r["status"] == "undeliverable"]
    assert len(kept) == 10 and all("Send Messages" in r["error"] for r in kept)
    assert any(r["type"] == "event" and r["kind"] == "message_undeliverable" for r in records)
    json.dumps(records)  # exportable as it is

    # the cause is fixed: everything goes out, and the status says nothing more about it
    broken.clear()
    assert await dispatcher.redeliver() == 10
    assert await dispatcher.drain(now=T0 + timedelta(minutes=6)) == 10
    assert {r.status for r in [await _row(service, i) for i in ids]} == {"delivered"}
    assert "Undeliverable" not in AgencyService.render_status(await service.status(pid))
    assert len([m for m in chat.sent if m.kind == "notice"]) == 1

    # the same cause again, later: a new case, a new notice
    broken.add("thread:1:0")
    await _post(service, agency_id, ("thread:1:0", "more work"), project_id=pid)
    await dispatcher.drain(now=T0 + timedelta(minutes=7))
    assert len([m for m in chat.sent if m.kind == "notice"]) == 2


async def test_a_space_waits_in_order_behind_its_undeliverable_message(make_service) -> None:
    service, agency_id = await _service(make_service)
    broken = {"overview:1"}
    chat = FakeChat(lambda m: NO_ACCESS if m.space.address in broken else None)
    dispatcher = OutboxDispatcher(service.db, chat)
    ids = await _post(service, agency_id, *[("overview:1", f"update {i}") for i in range(4)], ("stream:1", "elsewhere"))
    await dispatcher.drain(now=T0)
    assert [r.status for r in [await _row(service, i) for i in ids]] == ["undeliverable", "pending", "pending", "pending", "delivered"]
    assert set(chat.tries) == {ids[0], ids[4], *(m.id for m in chat.sent if m.kind == "notice")}  # the later ones were never tried
    more = await _post(service, agency_id, ("overview:1", "update 4"))
    await dispatcher.drain(now=T0)
    assert more[0] not in chat.tries  # a new message does not overtake the undeliverable one

    broken.clear()
    assert await dispatcher.redeliver(address="overview:1") == 1
    assert await dispatcher.drain(now=T0) == 5
    assert _sent_ids(chat, "overview:1") == [*ids[:4], *more]  # the order of the space is kept


async def test_a_blocked_content_does_not_hold_its_space(make_service) -> None:
    """AutoMod refuses one message: the others of the space go on; only a rule change retries it."""
    service, agency_id = await _service(make_service)
    blocked = {"forbidden words"}
    automod = DeliveryPermanentError("AutoMod blocked a message in #research.", "Adjust the AutoMod rule if it should pass.",
                                     cause="automod:#research", content=True)
    chat = FakeChat(lambda m: automod if m.content in blocked else None)
    dispatcher = OutboxDispatcher(service.db, chat)
    ids = await _post(service, agency_id, ("stream:1", "first"), ("stream:1", "forbidden words"), ("stream:1", "third"),
                      ("stream:1", "forbidden words"))
    await dispatcher.drain(now=T0)
    assert [r.status for r in [await _row(service, i) for i in ids]] == ["delivered", "undeliverable", "delivered", "undeliverable"]
    assert len([m for m in chat.sent if m.kind == "notice"]) == 1
    assert await dispatcher.redeliver(content=False) == 0  # the periodic retry leaves blocked content alone
    blocked.clear()
    assert await dispatcher.redeliver() == 2
    await dispatcher.drain(now=T0)
    assert {r.status for r in [await _row(service, i) for i in ids]} == {"delivered"}


async def test_a_row_superseded_while_in_flight_is_recorded_as_delivered(make_service) -> None:
    """The send went out: the next version of the edit-in-place message edits it instead of posting again."""
    service, agency_id = await _service(make_service)
    chat = FakeChat()
    chat.gates["overview:1"] = gate = asyncio.Event()
    dispatcher = OutboxDispatcher(service.db, chat)
    [first] = await _post(service, agency_id, ("overview:1", "status v1"), upsert_key="status:1")
    draining = asyncio.create_task(dispatcher.drain(now=T0))
    await chat.started["overview:1"].wait()
    async with service.db.session() as s:
        await repos.supersede_pending(s, "status:1")
        repos.post(s, agency_id, None, "overview:1", "A-TEAMs", "status v2", upsert_key="status:1")
        await s.commit()
    gate.set()
    assert await draining == 2
    assert (await _row(service, first)).status == "delivered"
    assert [(ext, m.content) for ext, m in chat.edits] == [(f"ext-{first}", "status v2")]


# -- defect 6: head-of-line blocking ---------------------------------------------------------------------------
async def test_a_blocked_space_does_not_stop_the_others(make_service) -> None:
    service, agency_id = await _service(make_service)
    chat = FakeChat()
    chat.gates["thread:1:1"] = gate = asyncio.Event()  # a busy (or hanging) thread
    dispatcher = OutboxDispatcher(service.db, chat)
    stuck = await _post(service, agency_id, ("thread:1:1", "long answer"), ("thread:1:1", "follow-up"))
    others = await _post(service, agency_id, ("overview:1", "plan"), ("stream:1", "hello"), ("hq", "notice"), ("overview:1", "more"))
    draining = asyncio.create_task(dispatcher.drain(now=T0))
    for address in ("overview:1", "stream:1", "hq"):
        await chat.delivered_to[address].wait()
    await asyncio.wait_for(_until(lambda: len(chat.sent) == len(others)), 10)
    assert sorted(m.id for m in chat.sent) == others and not draining.done()
    await asyncio.wait_for(_until(lambda: chat.tries.get(stuck[0]) == 1), 10)  # (its claim may come after the others' sends)
    assert chat.tries[stuck[0]] == 1 and stuck[1] not in chat.tries  # one in flight, the next waits for it
    gate.set()
    assert await draining == 6
    assert _sent_ids(chat, "thread:1:1") == stuck


async def test_a_transient_failure_of_one_space_delays_only_that_space(make_service) -> None:
    service, agency_id = await _service(make_service)
    chat = FakeChat(lambda m: DeliveryTransientError("503") if m.space.address == "stream:1" else None)
    dispatcher = OutboxDispatcher(service.db, chat)
    failing = await _post(service, agency_id, ("stream:1", "a"), ("stream:1", "b"))
    fine = await _post(service, agency_id, ("stream:2", "c"), ("stream:2", "d"), ("hq", "e"))
    assert await dispatcher.drain(now=T0) == 3
    assert sorted(m.id for m in chat.sent) == fine
    assert chat.tries[failing[0]] == 1 and failing[1] not in chat.tries


async def test_spaces_are_delivered_concurrently_and_in_order_within_each(make_service) -> None:
    """Many messages to three spaces, a port that yields at random and fails now and then: every space's messages
    arrive in the order they were written, each once (the "reordering within one channel" mutant fails this)."""
    service, agency_id = await _service(make_service)
    rng = random.Random(11)
    chat = FakeChat(lambda m: DeliveryTransientError("flaky") if rng.random() < 0.15 else None, yields=random.Random(5))
    dispatcher = OutboxDispatcher(service.db, chat, rng=random.Random(2))
    spaces = ("overview:1", "stream:1", "thread:1:2")
    written: dict[str, list[int]] = defaultdict(list)
    for i in range(40):
        address = spaces[rng.randrange(3)]
        written[address] += await _post(service, agency_id, (address, f"message {i}"))

    now = T0
    for _ in range(100):
        if len(chat.sent) == 40:
            break
        await dispatcher.drain(now=now)
        now += timedelta(seconds=BACKOFF_CAP_SECONDS)  # every retry is due by then
    for address in spaces:
        assert _sent_ids(chat, address) == written[address]
    assert len({m.id for m in chat.sent}) == 40
    # (that spaces run side by side is shown without depending on the scheduler's interleaving by
    # test_a_blocked_space_does_not_stop_the_others)


async def test_a_pacing_wait_holds_back_only_its_own_space(make_service) -> None:
    service, agency_id = await _service(make_service)
    chat = FakeChat(pace_limits=((1, 3600.0),))  # one message an hour per space
    dispatcher = OutboxDispatcher(service.db, chat)
    paced = await _post(service, agency_id, ("stream:1", "first"), ("stream:1", "second"))
    others = await _post(service, agency_id, ("stream:2", "x"), ("hq", "y"))
    draining = asyncio.create_task(dispatcher.drain(now=T0))
    await asyncio.wait_for(_until(lambda: len(chat.sent) == 3), 10)
    assert sorted(m.id for m in chat.sent) == sorted([paced[0], *others])  # the others did not wait for stream:1
    await dispatcher.stop()  # ends the pacing wait; the second message stays pending for the next start
    assert await draining == 3
    assert (await _row(service, paced[1])).status == "pending"


def test_the_pacer_spaces_sends_within_every_window() -> None:
    """(moved from tests/bot/test_bot_text.py with the pacing itself: the outbox paces each space)"""
    pacer = Pacer(((3, 5.0), (4, 60.0)))
    now, sent, waits = 0.0, [], []
    for _ in range(6):
        wait = pacer.delay(now)
        if wait:
            waits.append(wait)
            now += wait
        pacer.record(now)
        sent.append(now)
        now += 1.0
    # three go at once, the fourth waits until the oldest of the last three is 5 s old, the fifth for the minute
    assert sent == [0.0, 1.0, 2.0, 5.0, 60.0, 61.0] and waits == [2.0, 54.0]
    assert all(sum(1 for t in sent if a <= t < a + 5.0) <= 3 for a in sent)
    assert all(sum(1 for t in sent if a <= t < a + 60.0) <= 4 for a in sent)


async def test_stop_waits_for_the_send_in_flight_to_be_marked(make_service) -> None:
    service, agency_id = await _service(make_service)
    chat = FakeChat()
    chat.gates["hq"] = gate = asyncio.Event()
    dispatcher = OutboxDispatcher(service.db, chat)
    [mid, later] = await _post(service, agency_id, ("hq", "in flight"), ("hq", "after the stop"))
    draining = asyncio.create_task(dispatcher.drain(now=T0))
    await chat.started["hq"].wait()
    stopping = asyncio.create_task(dispatcher.stop())
    await asyncio.sleep(0)
    assert not stopping.done()
    gate.set()
    await stopping
    await draining
    assert (await _row(service, mid)).status == "delivered"
    assert (await _row(service, later)).status == "pending"


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0)


@pytest.mark.parametrize("legacy", ["failed"])
async def test_messages_an_older_version_gave_up_on_are_delivered_again(make_service, legacy: str) -> None:
    from agency.states import MESSAGE, MessageState, transition

    service, agency_id = await _service(make_service)
    [mid] = await _post(service, agency_id, ("hq", "lost by the old outbox"))
    async with service.db.session() as s:
        assert await transition(s, MESSAGE, mid, MessageState.FAILED)
        await s.commit()
    chat = FakeChat()
    dispatcher = OutboxDispatcher(service.db, chat)
    assert await dispatcher.redeliver(content=False) == 1  # what the background loop does at its start
    assert await dispatcher.drain(now=T0) == 1 and [m.id for m in chat.sent] == [mid]
