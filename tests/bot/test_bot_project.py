"""A whole project through the bot: slash command, buttons, spaces, personas, deliverable."""
from __future__ import annotations

import discord
from sqlalchemy import func, select

from agency.db.tables import MessageRow, SpaceRow
from bot_harness import text_of


async def test_whole_project_through_the_bot(harness):
    h = harness
    await h.setup_agency()
    out = await h.slash("project new", objective="Write a one-page brief on home espresso machines", oversight="plan")
    assert out[0]["type"] == 5  # deferred before any database or model work
    assert "Project #1 started" in text_of(out)

    # the PM's approaches arrive in #overview with one button per approach and a Reject
    await h.wait_status(1, "awaiting_approach")
    approaches, aid = await h.approval_message(1, "approach")
    category = h.category_of(1)
    assert category is not None
    overview = h.channel("overview", category)
    assert overview is not None
    assert approaches.channel.id == overview.id
    ids = [c.custom_id for row in approaches.components for c in row.children]
    assert ids[-1] == f"ateams:reject:{aid}"
    assert ids[:-1] == [f"ateams:approve:{aid}:{i}" for i in range(1, len(ids))]
    assert h.bot.director_role(h.guild).mention in approaches.content

    out = await h.click(approaches, f"ateams:approve:{aid}:2")
    assert "Approach 2 chosen" in text_of(out)
    assert all(r["ephemeral"] for r in out if r.get("content"))
    raw = next(m for m in h.messages(overview) if int(m["id"]) == approaches.id)
    assert raw["components"] == []  # the buttons are gone once decided

    plan, plan_aid = await h.approval_message(1, "plan")
    assert [c.custom_id for row in plan.components for c in row.children] == [f"ateams:approve:{plan_aid}", f"ateams:reject:{plan_aid}"]
    out = await h.click(plan, f"ateams:approve:{plan_aid}")
    assert "Plan approved" in text_of(out)

    await h.finish(1)

    # a channel per work stream in the project's category, a thread per specialist
    async with h.service.db.session() as s:
        spaces = {r.address: r for r in (await s.execute(select(SpaceRow))).scalars()}
        pending = (await s.execute(select(func.count(MessageRow.id)).where(MessageRow.direction == "out", MessageRow.status != "delivered",
                                                                           MessageRow.status != "superseded"))).scalar()
    assert pending == 0
    streams = [r for a, r in spaces.items() if a.startswith("stream:")]
    threads = [r for a, r in spaces.items() if a.startswith("thread:")]
    assert streams and threads
    for r in streams:
        ch = h.guild.get_channel(int(r.external_id))
        assert isinstance(ch, discord.TextChannel) and ch.category_id == category.id
    for r in threads:
        th = h.guild.get_thread(int(r.external_id))
        assert isinstance(th, discord.Thread)
        assert th.parent_id == int(spaces[r.parent].external_id)
        # the specialist speaks in its own thread, under its own name
        said = h.sends(thread_id=th.id)
        assert said, f"nothing posted in {th.name}"
        handle = th.name.split(" - ")[0]
        assert {s["username"] for s in said} == {handle}

    # one webhook per channel, reused for every persona and thread
    hooks = {s["webhook_id"] for s in h.rec.webhook_sends}
    assert len(hooks) == len({s["channel_id"] for s in h.rec.webhook_sends})
    assert len(h.rec.webhooks) == len(hooks)

    # the deliverable: a message in #overview with the Markdown file attached
    files = [f for f in h.rec.files if f["channel_id"] == overview.id]
    assert [f["filename"] for f in files] == ["project-1-deliverable.md"]
    assert "home espresso machines" in files[0]["text"] and len(files[0]["text"]) > 500
    deliverable = next(s for s in h.sends(channel_id=overview.id) if s["files"])
    assert deliverable["username"] == "PM"
    assert "is complete" in deliverable["content"]
    assert all(len(s["content"]) <= 2000 for s in h.rec.webhook_sends)

    # every outbox row went out exactly once
    async with h.service.db.session() as s:
        delivered = list((await s.execute(select(MessageRow).where(MessageRow.direction == "out", MessageRow.status == "delivered"))).scalars())
    ext_ids = [m.external_id for m in delivered if m.upsert_key is None]
    assert len(ext_ids) == len(set(ext_ids))


async def test_reject_button_asks_for_a_reason(harness):
    h = harness
    await h.setup_agency()
    await h.slash("project new", objective="Plan a small team offsite")
    msg, aid = await h.approval_message(1, "approach")
    out = await h.click(msg, f"ateams:reject:{aid}")
    assert out[0]["type"] == 9  # a modal, not a decision yet
    modal = h.rec.modals[-1]
    assert modal["data"]["custom_id"] == f"ateams:reject-reason:{aid}"
    assert await h.status(1) == "awaiting_approach"
    field = modal["data"]["components"][0]
    cid = (field.get("component") or field["components"][0])["custom_id"]
    import dpytest_compat as compat

    out = await compat.submit_modal(modal, {cid: "cheaper options please"}, member=h.owner)
    assert "propose new approaches" in text_of(out)
    await h.wait_status(1, "awaiting_approach", "new")
    async with h.service.db.session() as s:
        from agency.db.tables import ApprovalRow

        a = await s.get(ApprovalRow, aid)
    assert a.status == "rejected" and a.reason == "cheaper options please"


async def test_only_a_director_can_press_the_buttons(harness):
    h = harness
    await h.setup_agency()
    await h.slash("project new", objective="Plan a small team offsite")
    msg, aid = await h.approval_message(1, "approach")
    out = await h.click(msg, f"ateams:approve:{aid}:1", member=h.bob)
    assert out[0]["ephemeral"] and "Only the Director" in text_of(out)
    out = await h.click(msg, f"ateams:reject:{aid}", member=h.bob)
    assert out[0]["ephemeral"] and "Only the Director" in text_of(out)
    assert await h.status(1) == "awaiting_approach"
    # a member given the Director role may
    role = h.bot.director_role(h.guild)
    await h.alice.add_roles(role)
    out = await h.click(msg, f"ateams:approve:{aid}:1", member=h.alice)
    assert "Approach 1 chosen" in text_of(out)
