"""The outbox after a restart: the first pending message of each space may have gone out just before the
crash (delivery is one message at a time), so it is handed over as ``maybe_sent`` for the adapter to check."""
from __future__ import annotations

from sqlalchemy import update

from agency.console import ConsoleChat
from agency.db.tables import MessageRow
from agency.outbox import OutboxDispatcher
from tests.conftest import AGENCY, DIRECTOR, drive


async def test_only_the_first_pending_message_per_space_is_maybe_sent(make_service) -> None:
    service = await make_service()
    info = await service.new_project(AGENCY, "Plan a small garden", oversight="autonomous", actor=DIRECTOR)
    assert await drive(service, info.id) == "done"
    await service.stop()
    async with service.db.session() as s, s.begin():  # as a crash would leave them: not marked delivered
        await s.execute(update(MessageRow).where(MessageRow.direction == "out", MessageRow.kind != "status").values(status="pending"))

    chat = ConsoleChat(quiet=True)
    restarted = OutboxDispatcher(service.db, chat)
    assert await restarted.drain() > 5
    firsts: dict[str, int] = {}
    for m in chat.sent:
        firsts.setdefault(m.space.address, m.id)
    assert {m.id for m in chat.sent if m.maybe_sent} == set(firsts.values())
    assert len(firsts) >= 3  # hq, overview, streams, threads

    async with service.db.session() as s, s.begin():  # later sends of the same process are ordinary
        await s.execute(update(MessageRow).where(MessageRow.id.in_(list(firsts.values()))).values(status="pending"))
    chat.sent.clear()
    await restarted.drain()
    assert len(chat.sent) == len(firsts) and not any(m.maybe_sent for m in chat.sent)


async def test_messages_written_after_the_start_are_never_maybe_sent(make_service) -> None:
    """A fresh process's own first messages cannot have been sent by an earlier one: no lookup for them."""
    from agency.db import repos

    service = await make_service()
    await service.stop()
    chat = ConsoleChat(quiet=True)
    dispatcher = OutboxDispatcher(service.db, chat)
    agency_id = await service.ensure_agency(AGENCY, "Agency")
    async with service.db.session() as s, s.begin():
        for text in ("one", "two"):
            repos.post(s, agency_id, None, "hq", "A-TEAMs", text)
    assert await dispatcher.drain() == 2
    assert [m.content for m in chat.sent] == ["one", "two"] and not any(m.maybe_sent for m in chat.sent)
