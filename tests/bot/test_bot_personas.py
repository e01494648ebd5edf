"""Personas: webhook posts in channels and threads, embeds without Manage Webhooks, splitting,
attachments, mentions and edits in place."""
from __future__ import annotations

import itertools

import discord
import pytest

import dpytest_compat as compat
from agency.ports import OutboundMessage, SpaceSpec
from bot.permissions import needed_permissions
from bot_harness import start_harness, stop_harness

_ids = itertools.count(1000)


async def _spaces(h) -> dict[str, SpaceSpec]:
    await h.setup_agency()
    gid = h.gid
    specs = {
        "project": SpaceSpec("project:1", "project", "P1 Espresso", agency_external_id=gid),
        "overview": SpaceSpec("overview:1", "overview", "overview", parent="project:1", agency_external_id=gid),
        "stream": SpaceSpec("stream:1", "stream", "research", parent="project:1", agency_external_id=gid),
        "thread": SpaceSpec("thread:1:2", "thread", "Researcher-A - work", parent="stream:1", agency_external_id=gid),
    }
    for spec in specs.values():
        await h.chat.ensure_space(spec)
    return specs


def _msg(h, spec: SpaceSpec, persona: str, content: str, **kw) -> OutboundMessage:
    return OutboundMessage(id=next(_ids), agency_external_id=h.gid, space=spec, persona=persona, content=content, **kw)


async def _send(h, spec: SpaceSpec, persona: str, content: str, **kw) -> tuple[str, OutboundMessage]:
    ext = await h.chat.ensure_space(spec)
    m = _msg(h, spec, persona, content, **kw)
    return await h.chat.send(m, ext), m


async def test_personas_speak_through_one_webhook_per_channel(harness):
    h = harness
    specs = await _spaces(h)
    stream_id = int(await h.chat.ensure_space(specs["stream"]))
    thread_id = int(await h.chat.ensure_space(specs["thread"]))
    await _send(h, specs["stream"], "Collab-research", "Hi, I review every submission.")
    await _send(h, specs["thread"], "Researcher-A", "Gathering sources now.")
    await _send(h, specs["thread"], "Researcher-A", "Found three reviews.")
    in_channel = h.sends(channel_id=stream_id, thread_id=None)
    in_thread = h.sends(thread_id=thread_id)
    assert [(s["username"], s["content"]) for s in in_channel] == [("Collab-research", "Hi, I review every submission.")]
    assert [s["username"] for s in in_thread] == ["Researcher-A", "Researcher-A"]
    assert all(s["avatar_url"].startswith("https://cdn.discordapp.com/embed/avatars/") for s in in_channel + in_thread)
    # created once, reused for the channel and its threads
    hooks = [w for w in h.rec.webhooks.values() if w["channel_id"] == stream_id]
    assert len(hooks) == 1 and {s["webhook_id"] for s in in_channel + in_thread} == {hooks[0]["id"]}
    msgs = h.messages(h.guild.get_thread(thread_id))
    assert msgs[-1]["author"]["username"] == "Researcher-A" and msgs[-1]["webhook_id"] == hooks[0]["id"]


async def test_a_restarted_adapter_reuses_the_existing_webhook(harness):
    h = harness
    specs = await _spaces(h)
    await _send(h, specs["stream"], "PM", "one")
    h.chat._hooks.clear()  # as after a restart
    await _send(h, specs["stream"], "PM", "two")
    assert len(h.rec.webhooks) == 1


async def test_a_webhook_deleted_by_hand_is_replaced(harness):
    h = harness
    specs = await _spaces(h)
    await _send(h, specs["stream"], "PM", "one")
    h.rec.webhooks.clear()  # deleted in Discord; our cache still holds it
    await _send(h, specs["stream"], "PM", "two")
    assert len(h.rec.webhooks) == 1
    assert [s["content"] for s in h.rec.webhook_sends] == ["one", "two"]


async def test_long_messages_are_split_without_breaking_code(harness):
    h = harness
    specs = await _spaces(h)
    code = "\n".join(f"step_{i}()  # " + "x" * 70 for i in range(60))
    text = "Here is the script:\n```python\n" + code + "\n```\nDone."
    first, _ = await _send(h, specs["thread"], "Writer-A", text)
    parts = h.rec.webhook_sends
    assert len(parts) >= 3 and all(len(p["content"]) <= 2000 for p in parts)  # the fake refuses more, like Discord
    assert str(parts[0]["message_id"]) == first
    assert parts[0]["content"].endswith("```") and parts[1]["content"].startswith("```python\n")
    assert parts[-1]["content"].endswith("Done.")


async def test_deliverable_is_attached_and_the_director_mentioned(harness):
    h = harness
    specs = await _spaces(h)
    await _send(h, specs["overview"], "PM", "Project #1 is complete.", kind="deliverable",
                attachment_name="project-1-deliverable.md", attachment_text="# Espresso\n\nBuy the mid-range one.",
                mention_user_ids=["director", str(h.alice.id)])
    sent = h.rec.webhook_sends[-1]
    role = h.bot.director_role(h.guild)
    assert sent["content"].startswith(f"{role.mention} <@{h.alice.id}> Project #1 is complete.")
    assert sent["files"] == ["project-1-deliverable.md"]
    assert h.rec.files[-1]["text"].startswith("# Espresso")
    allowed = sent["allowed_mentions"]
    assert allowed["roles"] == [role.id] and allowed["users"] == [h.alice.id] and allowed["parse"] == []


async def test_status_is_edited_in_place_and_resent_when_gone(harness):
    h = harness
    specs = await _spaces(h)
    ext = await h.chat.ensure_space(specs["overview"])
    first, m = await _send(h, specs["overview"], "A-TEAMs", "**Project #1** - running - 0/5 tasks done", kind="status", upsert_key="status:1")
    again = await h.chat.edit(_msg(h, specs["overview"], "A-TEAMs", "**Project #1** - running - 2/5 tasks done", kind="status"), ext, first)
    assert again == first
    assert h.rec.webhook_edits[-1] == {"webhook_id": h.rec.webhook_sends[-1]["webhook_id"], "message_id": int(first),
                                      "content": "**Project #1** - running - 2/5 tasks done"}
    # the status message was deleted by hand: it is posted again
    compat._raw_messages(int(ext)).clear()
    new = await h.chat.edit(_msg(h, specs["overview"], "A-TEAMs", "**Project #1** - running - 3/5 tasks done", kind="status"), ext, first)
    assert new != first and h.rec.webhook_sends[-1]["content"].endswith("3/5 tasks done")


async def test_without_manage_webhooks_members_speak_through_embeds(settings, monkeypatch):
    perms = needed_permissions()
    perms.manage_webhooks = False
    h = await start_harness(settings, monkeypatch, bot_permissions=perms)
    try:
        specs = await _spaces(h)
        first, m = await _send(h, specs["thread"], "Researcher-A", "Gathering sources now.", mention_user_ids=["director"])
        await _send(h, specs["stream"], "Collab-research", "Welcome.")
        await _send(h, specs["stream"], "Collab-research", "x" * 4500)
        assert h.rec.webhook_sends == [] and h.rec.webhooks == {}
        thread = h.guild.get_thread(int(await h.chat.ensure_space(specs["thread"])))
        msg = h.messages(thread)[-1]
        assert str(msg["id"]) == first
        embed = discord.Embed.from_dict(msg["embeds"][0])
        assert embed.author.name == "Researcher-A" and embed.description == "Gathering sources now."
        role = h.bot.director_role(h.guild)
        assert msg["content"] == role.mention and msg["nonce"] == f"ateams-{m.id}"
        stream = h.guild.get_channel(int(await h.chat.ensure_space(specs["stream"])))
        sizes = [len(discord.Embed.from_dict(x["embeds"][0]).description) for x in h.messages(stream)]
        assert sizes[0] == 8 and sum(sizes[1:]) == 4500 and len(sizes) == 4 and max(sizes) <= 2000
        # the Director is told once what is missing
        warnings = [x for x in h.messages(h.channel("hq")) if "Manage Webhooks" in x["content"]]
        assert len(warnings) == 1 and role.mention in warnings[0]["content"]
    finally:
        await stop_harness(h)


@pytest.mark.parametrize("kind,options,labels", [
    ("approach", ["1. Research, then write", "2. Fast draft"], ["1. Research, then write", "2. Fast draft", "Reject all"]),
    ("plan", [], ["Approve", "Reject"]),
    ("budget", ["Raise the budget by 50%", "Stop the project"], ["Raise the budget by 50%", "Stop the project"]),
])
def test_approval_buttons(kind, options, labels):
    from bot.views import approval_view

    view = approval_view(7, kind, options)
    assert [b.item.label for b in view.children] == labels
    ids = [b.item.custom_id for b in view.children]
    assert ids[-1] == "ateams:reject:7"
    if kind == "approach":
        assert ids[:-1] == ["ateams:approve:7:1", "ateams:approve:7:2"]
    else:
        assert ids[0] == "ateams:approve:7"
    assert view.timeout is None and all(not b.item.url for b in view.children)
