"""A restart: the outbox is delivered exactly once by the new process and old buttons still work."""
from __future__ import annotations

import asyncio
import re
from collections import Counter

from sqlalchemy import select

from agency.db.tables import MessageRow
from agency.ports import OutboundMessage
from bot_harness import eventually, start_harness, stop_harness, text_of

MENTIONS = re.compile(r"^(<@&?\d+> )+")


async def _quiesce(h) -> None:
    """Stop scheduling and delivering at a clean point (nothing half-sent), so the test knows what is pending."""
    service = h.service
    await service.engine.stop()
    if service._status_task is not None:
        service._status_task.cancel()
        await asyncio.gather(service._status_task, return_exceptions=True)
    await service.settle()
    await service.dispatcher.stop()


async def _crash(h) -> None:
    """The process dies: nothing is drained any more."""
    h.chat.closing = True
    await h.service.db.dispose()


async def _rows(h, *states: str) -> list[MessageRow]:
    async with h.service.db.session() as s:
        return list((await s.execute(select(MessageRow).where(MessageRow.direction == "out", MessageRow.status.in_(states))
                                     .order_by(MessageRow.id))).scalars())


async def test_restart_delivers_the_outbox_once_and_buttons_still_work(settings, monkeypatch):
    h1 = await start_harness(settings, monkeypatch)
    await h1.setup_agency()
    await h1.slash("project new", objective="Write a brief on espresso machines")
    approaches, aid = await h1.approval_message(1, "approach")
    await _quiesce(h1)  # Discord delivery stops first ...
    out = await h1.slash("project pause")  # ... so these stay in the outbox
    assert "paused" in text_of(out)
    await h1.service.post_status(1)
    pending_before = await _rows(h1, "pending")
    assert any("paused by" in r.content for r in pending_before)
    await _crash(h1)
    sends_before = len(h1.rec.webhook_sends)

    h2 = await start_harness(settings, monkeypatch, first=False)  # same database, same Discord server
    try:
        assert h2.guild.id == h1.guild.id

        async def drained() -> bool:
            return not await _rows(h2, "pending")

        await eventually(drained, what="the outbox to be delivered")
        new_sends = h2.rec.webhook_sends[sends_before:]
        assert [s["content"] for s in new_sends if "paused by" in s["content"]] != []
        delivered = {r.id: r for r in await _rows(h2, "delivered")}
        superseded = {r.id for r in await _rows(h2, "superseded")}
        for r in pending_before:
            if r.upsert_key and r.id in superseded:
                continue  # a newer status replaced it before it went out
            assert delivered[r.id].external_id, r.content
        overview = h2.channel("overview", h2.category_of(1))
        assert sum("paused by" in m["content"] for m in h2.messages(overview)) == 1

        # the approach buttons posted by the old process work in the new one
        out = await h2.slash("project resume")
        assert "resumed" in text_of(out)
        out = await h2.click(approaches, f"ateams:approve:{aid}:1")
        assert "Approach 1 chosen" in text_of(out)
        plan, plan_aid = await h2.approval_message(1, "plan")
        out = await h2.click(plan, f"ateams:approve:{plan_aid}")
        assert "Plan approved" in text_of(out)
        await h2.finish(1)

        # no message went out twice, across both processes
        rows = [r for r in await _rows(h2, "delivered") if r.upsert_key is None and len(r.content) < 1800 and not r.attachment_name]
        expected = Counter((r.persona, r.content) for r in rows)
        sent = Counter((s["username"], MENTIONS.sub("", s["content"])) for s in h2.rec.webhook_sends)
        for key, n in expected.items():
            assert sent[key] == n, key
        ids = [r.external_id for r in await _rows(h2, "delivered") if r.upsert_key is None]
        assert len(ids) == len(set(ids))
        assert not await _rows(h2, "pending", "failed")
    finally:
        await stop_harness(h2)


async def test_a_message_sent_just_before_a_crash_is_not_posted_again(settings, monkeypatch):
    """The process posts a message and dies before marking it delivered: the next process finds it in the
    channel (webhook posts carry no nonce) and records its id instead of posting it a second time."""
    h1 = await start_harness(settings, monkeypatch)
    await h1.setup_agency()
    await h1.slash("project new", objective="Write a brief on espresso machines")
    await h1.approval_message(1, "approach")
    await _quiesce(h1)
    await h1.slash("project pause")  # "paused by ..." stays in the outbox
    (row,) = [r for r in await _rows(h1, "pending") if "paused by" in r.content]
    # what the dispatcher does, minus the "delivered" mark: the post reaches Discord, then the process dies
    d = h1.service.dispatcher
    spec, space_ext = await d._space(row.agency_id, row.address)
    msg = OutboundMessage(id=row.id, agency_external_id=spec.agency_external_id, space=spec, persona=row.persona,
                          content=row.content, kind=row.kind, mention_user_ids=list(row.mentions or []))
    first_id = await h1.chat.send(msg, space_ext)
    await _crash(h1)
    sends_before = len(h1.rec.webhook_sends)

    h2 = await start_harness(settings, monkeypatch, first=False)
    try:
        async def drained() -> bool:
            return not await _rows(h2, "pending")

        await eventually(drained, what="the outbox to be delivered")
        assert not [s for s in h2.rec.webhook_sends[sends_before:] if "paused by" in s["content"]]
        overview = h2.channel("overview", h2.category_of(1))
        assert sum("paused by" in m["content"] for m in h2.messages(overview)) == 1
        (marked,) = [r for r in await _rows(h2, "delivered") if r.id == row.id]
        assert marked.external_id == first_id
    finally:
        await stop_harness(h2)


async def test_a_reject_reason_submitted_after_a_restart_still_counts(settings, monkeypatch):
    """The Director opens the reject form, the bot restarts, the Director submits: the reason is applied."""
    import dpytest_compat as compat

    h1 = await start_harness(settings, monkeypatch)
    await h1.setup_agency()
    await h1.slash("project new", objective="Plan a small team offsite")
    msg, aid = await h1.approval_message(1, "approach")
    await h1.click(msg, f"ateams:reject:{aid}")
    modal = h1.rec.modals[-1]
    await _quiesce(h1)
    await _crash(h1)

    h2 = await start_harness(settings, monkeypatch, first=False)  # the form's object died with h1
    try:
        field = modal["data"]["components"][0]
        cid = (field.get("component") or field["components"][0])["custom_id"]
        out = await compat.submit_modal(modal, {cid: "cheaper venues please"}, member=h2.owner)
        assert "propose new approaches" in text_of(out)
        async with h2.service.db.session() as s:
            from agency.db.tables import ApprovalRow

            a = await s.get(ApprovalRow, aid)
        assert a.status == "rejected" and a.reason == "cheaper venues please"
        out = await compat.submit_modal(modal, {cid: "again"}, member=h2.bob)  # and only a Director's counts
        assert "Only the Director" in text_of(out)
    finally:
        await stop_harness(h2)
