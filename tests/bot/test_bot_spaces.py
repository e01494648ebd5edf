"""Spaces: #hq and the Director role, categories, channels, threads; idempotent, mapped, repaired."""
from __future__ import annotations

import discord
import discord.ext.test as dpytest
from discord.ext.test import backend as back
from sqlalchemy import select

from agency.db.tables import AgencyRow, MessageRow, SpaceRow
from agency.ports import SpaceSpec
from bot.permissions import needed_permissions
from bot_harness import eventually, start_harness, stop_harness, text_of


async def _space(h, address: str) -> SpaceRow | None:
    async with h.service.db.session() as s:
        return (await s.execute(select(SpaceRow).where(SpaceRow.address == address))).scalar_one_or_none()


async def test_agency_setup_creates_and_records_hq_and_the_director_role(harness):
    h = harness
    out = await h.slash("agency setup")
    assert out[0]["type"] == 5 and out[0]["ephemeral"]  # deferred, privately
    hq = h.channel("hq")
    role = discord.utils.get(h.guild.roles, name="Director")
    assert hq is not None and role is not None
    assert (await _space(h, "hq")).external_id == str(hq.id)
    async with h.service.db.session() as s:
        agency = (await s.execute(select(AgencyRow))).scalar_one()
    assert agency.external_id == h.gid and agency.director_role_id == str(role.id)
    # running it again changes nothing
    out = await h.slash("agency setup")
    assert "Using" in text_of(out)
    assert [c.name for c in h.guild.text_channels].count("hq") == 1
    assert [r.name for r in h.guild.roles].count("Director") == 1


async def test_agency_setup_needs_manage_server(harness):
    h = harness
    out = await h.slash("agency setup", by=h.bob)
    assert out[0]["ephemeral"] and "Manage Server" in text_of(out)
    assert h.channel("hq") is None


async def test_agency_setup_recreates_a_deleted_hq(harness):
    h = harness
    await h.setup_agency()
    old = h.channel("hq")
    await old.delete()
    await dpytest.run_all_events()
    assert h.channel("hq") is None
    await h.setup_agency()
    new = h.channel("hq")
    assert new is not None and new.id != old.id
    assert (await _space(h, "hq")).external_id == str(new.id)


async def test_project_spaces_are_created_once_and_mapped(harness):
    h = harness
    await h.setup_agency()
    gid = h.gid
    chat = h.chat
    cat = await chat.ensure_space(SpaceSpec("project:9", "project", "P9 Espresso brief", agency_external_id=gid))
    ov = await chat.ensure_space(SpaceSpec("overview:9", "overview", "overview", parent="project:9", topic="Espresso", agency_external_id=gid))
    st = await chat.ensure_space(SpaceSpec("stream:4", "stream", "Market Research", parent="project:9", agency_external_id=gid))
    th = await chat.ensure_space(SpaceSpec("thread:4:7", "thread", "Researcher-A - work", parent="stream:4", agency_external_id=gid))
    category = h.guild.get_channel(int(cat))
    assert isinstance(category, discord.CategoryChannel) and category.name == "P9 Espresso brief"
    overview, stream = h.guild.get_channel(int(ov)), h.guild.get_channel(int(st))
    assert isinstance(overview, discord.TextChannel) and overview.category_id == category.id and overview.name == "overview"
    assert isinstance(stream, discord.TextChannel) and stream.category_id == category.id and stream.name == "market-research"
    thread = h.guild.get_thread(int(th))
    assert isinstance(thread, discord.Thread) and thread.parent_id == stream.id and thread.name == "Researcher-A - work"
    # idempotent: the same ids again, nothing new in the server
    n = len(h.guild.channels) + len(h.guild.threads)
    again = [await chat.ensure_space(SpaceSpec(a, k, nm, parent=p, agency_external_id=gid)) for a, k, nm, p in (
        ("project:9", "project", "P9 Espresso brief", None), ("overview:9", "overview", "overview", "project:9"),
        ("stream:4", "stream", "Market Research", "project:9"), ("thread:4:7", "thread", "Researcher-A - work", "stream:4"))]
    assert again == [cat, ov, st, th]
    assert len(h.guild.channels) + len(h.guild.threads) == n
    # a fresh adapter (after a restart) adopts what exists by name instead of duplicating it
    await h.service.record_space(gid, "project:9", cat, name="P9 Espresso brief")
    chat._ids.clear()
    chat._addresses.clear()
    assert await chat.ensure_space(SpaceSpec("stream:4", "stream", "Market Research", parent="project:9", agency_external_id=gid)) == st


async def test_the_outbox_maps_spaces_in_the_database_and_recreates_deleted_channels(harness):
    h = harness
    await h.setup_agency()
    await h.slash("project new", objective="Compare three espresso machines")
    await h.approval_message(1, "approach")
    overview_row = await _space(h, "overview:1")
    project_row = await _space(h, "project:1")
    overview = h.guild.get_channel(int(overview_row.external_id))
    assert overview.category_id == int(project_row.external_id)
    await overview.delete()  # by hand
    await dpytest.run_all_events()
    out = await h.slash("project pause", where=h.channel("hq"))  # posts in #overview
    assert "paused" in text_of(out)
    await h.service.settle()  # the due status edit too, so nothing is left pending below
    new_row = await _space(h, "overview:1")
    assert new_row.external_id != overview_row.external_id
    new = h.guild.get_channel(int(new_row.external_id))
    assert new.name == "overview" and new.category_id == int(project_row.external_id)
    assert any("paused by" in s["content"] for s in h.sends(channel_id=new.id))
    async with h.service.db.session() as s:
        stuck = (await s.execute(select(MessageRow).where(MessageRow.status.in_(("pending", "failed"))))).scalars().all()
    assert not stuck


async def test_missing_manage_channels_is_reported_not_a_crash(settings, monkeypatch):
    perms = needed_permissions()
    h = await start_harness(settings, monkeypatch, bot_permissions=perms)
    try:
        await h.setup_agency()
        bot_role = discord.utils.get(h.guild.roles, name="A-TEAMs bot")
        perms.manage_channels = False
        back.update_role(bot_role, permissions=perms.value)
        await h.slash("project new", objective="Compare three espresso machines")
        hq = h.channel("hq")
        # the Director is told once, in #hq, which permission is missing
        warned = await eventually(lambda: [m for m in h.messages(hq) if "Manage Channels" in m["content"]], what="a warning")
        assert len(warned) == 1 and h.bot.director_role(h.guild).mention in warned[0]["content"]

        async def first_overview_message() -> MessageRow | None:
            async with h.service.db.session() as s:
                row = (await s.execute(select(MessageRow).where(MessageRow.address == "overview:1").order_by(MessageRow.id))).scalars().first()
            return row if row is not None and row.error else None

        row = await eventually(first_overview_message, what="the delivery error to be recorded")
        assert row.status == "undeliverable" and "Manage Channels" in row.error  # kept, with what to do
        assert h.category_of(1) is None
        # once granted (the role update queues the undeliverable messages again), the outbox catches up
        perms.manage_channels = True
        back.update_role(bot_role, permissions=perms.value)
        await dpytest.run_all_events()
        await h.service.dispatcher.drain()
        assert h.category_of(1) is not None
        assert len([m for m in h.messages(hq) if "Manage Channels" in m["content"]]) == 1
    finally:
        await stop_harness(h)


async def test_setup_without_manage_roles_names_the_permission(settings, monkeypatch):
    perms = needed_permissions()
    perms.manage_roles = False
    h = await start_harness(settings, monkeypatch, bot_permissions=perms)
    try:
        out = await h.slash("agency setup")
        assert "**Manage Roles**" in text_of(out) and out[-1]["ephemeral"]
    finally:
        await stop_harness(h)


async def test_a_send_to_a_channel_deleted_meanwhile_recreates_it(harness):
    """The outbox may hold on to a channel id; a send to a channel deleted since lands in a new one."""
    from agency.ports import OutboundMessage

    h = harness
    await h.setup_agency()
    gid = h.gid
    await h.chat.ensure_space(SpaceSpec("project:9", "project", "P9 Espresso", agency_external_id=gid))
    stream = SpaceSpec("stream:4", "stream", "research", parent="project:9", agency_external_id=gid)
    old = await h.chat.ensure_space(stream)
    await h.guild.get_channel(int(old)).delete()
    await dpytest.run_all_events()
    msg = OutboundMessage(id=1, agency_external_id=gid, space=stream, persona="Collab-research", content="Still here.")
    await h.chat.send(msg, old)
    new = await h.service.space_external_id(gid, "stream:4")
    assert new and new != old
    channel = h.guild.get_channel(int(new))
    assert channel.name == "research" and [s["content"] for s in h.sends(channel_id=channel.id)] == ["Still here."]


async def test_a_role_merely_named_director_confers_nothing(harness):
    """The Director role is recognised by the id recorded at `/agency setup`, not by its name, and it is
    created unmentionable (only the bot pings it)."""
    h = harness
    await h.setup_agency()
    recorded = h.bot.director_role(h.guild)
    assert recorded is not None and not recorded.mentionable
    impostor = await h.guild.create_role(name="Director")  # anyone with Manage Roles can do this
    await dpytest.run_all_events()
    await dpytest.add_role(h.bob, impostor)
    assert not h.bot.is_director(h.guild.get_member(h.bob.id))
    out = await h.slash("project new", by=h.bob, objective="Take over the agency")
    assert "Only the Director" in text_of(out)
    await dpytest.add_role(h.bob, recorded)
    assert h.bot.is_director(h.guild.get_member(h.bob.id))
