"""Slash commands through the application command tree, with mock interactions (no gateway)."""
from __future__ import annotations

import re
from unittest.mock import AsyncMock

import discord
import pytest
from discord import app_commands
from discord.ext.test import backend as back
from discord.ext.test import factories as facts

import dpytest_compat as compat
from bot_harness import start_harness, stop_harness, text_of

DIRECTOR_COMMANDS = [
    ("project new", {"objective": "Write a brief on espresso machines"}),
    ("project status", {}),
    ("project pause", {}),
    ("project resume", {}),
    ("project cancel", {}),
    ("approve", {}),
    ("reject", {"reason": "too expensive"}),
    ("budget", {}),
    ("feedback", {"handle": "PM", "rating": 4}),
    ("specialist list", {}),
    ("specialist show", {"handle": "PM"}),
]


def _walk(commands):
    for c in commands:
        if isinstance(c, app_commands.Group):
            yield from _walk(c.commands)
        else:
            yield c


def test_commands_are_kebab_case_and_described(harness):
    cmds = list(_walk(harness.bot.tree.get_commands()))
    names = {c.qualified_name for c in cmds}
    assert {"agency setup", "project new", "project status", "project pause", "project resume", "project cancel", "approve",
            "reject", "feedback", "specialist list", "specialist show", "stream add-human", "budget", "todo"} <= names
    for c in cmds:
        assert all(re.fullmatch(r"[a-z0-9-]+", part) for part in c.qualified_name.split()), c.qualified_name
        assert c.description and c.description != "…", c.qualified_name
        for p in c.parameters:
            assert p.description and p.description != "…", f"{c.qualified_name} {p.name}"
        assert c.guild_only or (c.parent is not None and c.parent.guild_only), c.qualified_name
    new = harness.bot.tree.get_command("project").get_command("new")
    assert {ch.value for ch in new._params["oversight"].choices} == {"autonomous", "plan", "milestones", "every_task"}
    status = harness.bot.tree.get_command("project").get_command("status")
    assert status._params["project"].autocomplete is not None


@pytest.mark.parametrize("name,options", DIRECTOR_COMMANDS)
async def test_only_a_director_may_use_director_commands(harness, name, options):
    h = harness
    await h.setup_agency()
    out = await h.slash(name, by=h.bob, **options)
    assert len(out) == 1 and out[0]["type"] == 4 and out[0]["ephemeral"]
    assert "Only the Director" in text_of(out)


async def test_project_lifecycle_commands(harness):
    h = harness
    await h.setup_agency()
    out = await h.slash("project new", objective="Write a brief on espresso machines", oversight="plan", budget=2.5)
    assert out[0]["type"] == 5 and not out[0]["ephemeral"] and "Project #1 started" in text_of(out)
    await h.approval_message(1, "approach")
    out = await h.slash("project status")
    assert out[0]["type"] == 5 and out[0]["ephemeral"]
    assert "**Project #1** - awaiting_approach" in text_of(out) and out[-1]["ephemeral"]
    out = await h.slash("budget")
    assert "budget $2.50" in text_of(out)
    out = await h.slash("budget", amount=5.0)
    assert "set to $5.00" in text_of(out) and not out[-1]["ephemeral"]
    out = await h.slash("project pause", project=1)
    assert "paused" in text_of(out) and await h.status(1) == "paused"
    out = await h.slash("project resume", project=1)
    assert "resumed" in text_of(out) and await h.status(1) == "awaiting_approach"
    out = await h.slash("approve", choice=2)
    assert "Approach 2 chosen" in text_of(out)
    await h.approval_message(1, "plan")
    out = await h.slash("reject", reason="add a section on grinders")
    assert "revise the plan" in text_of(out)
    out = await h.slash("project cancel")
    assert "cancelled" in text_of(out) and await h.status(1) == "cancelled"
    out = await h.slash("approve")
    assert "is not waiting for an approval" in text_of(out) and out[-1]["ephemeral"]


async def test_the_project_of_the_channel_is_the_default(harness):
    h = harness
    await h.setup_agency()
    await h.slash("project new", objective="First project about espresso")
    await h.approval_message(1, "approach")
    await h.slash("project new", objective="Second project about tea")
    await h.approval_message(2, "approach")
    overview1 = h.channel("overview", h.category_of(1))
    out = await h.slash("project status", where=overview1)
    assert "**Project #1**" in text_of(out)
    out = await h.slash("project status", where=h.channel("hq"))
    assert "**Project #2**" in text_of(out)  # the latest active one


async def test_specialists_feedback_and_streams(harness):
    h = harness
    await h.setup_agency()
    await h.slash("project new", objective="Write a brief on espresso machines", oversight="autonomous")
    await h.finish(1)
    out = await h.slash("specialist list")
    assert "@Researcher-A - researcher (specialist)" in text_of(out) and out[-1]["ephemeral"]
    out = await h.slash("specialist show", handle="Researcher-A")
    assert "**@Researcher-A**" in text_of(out)
    out = await h.slash("specialist show", handle="Nobody-X")
    assert "There is no member @Nobody-X" in text_of(out)
    out = await h.slash("feedback", handle="Researcher-A", rating=5, text="great sources")
    assert "Feedback for @Researcher-A recorded" in text_of(out)
    stream = next(c for c in h.category_of(1).text_channels if c.name != "overview")
    out = await h.slash("stream add-human", member=h.alice, where=stream)
    assert "is now a human specialist" in text_of(out)
    out = await h.slash("stream add-human", member=h.alice, where=h.channel("hq"))
    assert "inside a work stream's channel" in text_of(out)
    out = await h.slash("todo", by=h.alice)
    assert "no open tasks" in text_of(out) and out[-1]["ephemeral"]


async def test_domain_errors_become_their_message(harness):
    h = harness
    out = await h.slash("project status")  # no /agency setup yet
    assert "run `/agency setup` first" in text_of(out) and out[-1]["ephemeral"]
    await h.setup_agency()
    out = await h.slash("project status", project=42)
    assert "There is no project #42" in text_of(out)


@pytest.mark.allow_errors
async def test_unexpected_errors_get_a_ref_and_a_logged_trace(harness, monkeypatch, caplog):
    h = harness
    await h.setup_agency()
    monkeypatch.setattr(h.service, "projects", AsyncMock(side_effect=RuntimeError("database on fire")))
    monkeypatch.setattr(h.service, "resolve_project", AsyncMock(side_effect=RuntimeError("database on fire")))
    out = await h.slash("project status")
    text = text_of(out)
    m = re.search(r"Something went wrong \(ref ([0-9a-f]+)\)", text)
    assert m and "database on fire" not in text
    logged = [r for r in caplog.records if m.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info and "database on fire" in str(logged[0].exc_info[1])


async def test_discord_permission_errors_name_the_permission(harness, monkeypatch):
    h = harness
    await h.setup_agency()
    await h.slash("project new", objective="Write a brief on espresso machines")
    bot_role = discord.utils.get(h.guild.roles, name="A-TEAMs bot")
    perms = bot_role.permissions
    perms.manage_webhooks = False
    back.update_role(bot_role, permissions=perms.value)
    forbidden = discord.Forbidden(back.FakeRequest(403, "Forbidden"), {"code": 50013, "message": "Missing Permissions"})
    monkeypatch.setattr(h.service, "pause", AsyncMock(side_effect=forbidden))
    out = await h.slash("project pause")
    assert "**Manage Webhooks**" in text_of(out)


async def test_autocomplete_projects_and_handles(harness):
    h = harness
    await h.setup_agency()
    await h.slash("project new", objective="Write a brief on espresso machines")
    await h.approval_message(1, "approach")
    await h.slash("project new", objective="Plan a tea tasting evening")
    choices = await _autocomplete(h, "project status", "project", "tea")
    assert [c["value"] for c in choices] == [2] and choices[0]["name"].startswith("#2 ")
    choices = await _autocomplete(h, "specialist show", "handle", "p")
    assert {"name": "@PM (pm)", "value": "PM"} in choices


async def _autocomplete(h, qualified: str, option: str, current: str) -> list[dict]:
    token, data = compat._base_interaction(h.bot, 4, h.general, h.owner)
    *path, leaf = qualified.split()
    opts = [{"name": option, "type": 3 if option == "handle" else 4, "value": current, "focused": True}]
    if path:
        opts = [{"name": leaf, "type": 1, "options": opts}]
    data["data"] = {"id": str(facts.make_id()), "name": (path or [leaf])[0], "type": 1, "options": opts}
    start = len(h.rec.interaction_responses)
    compat._state().parse_interaction_create(data)
    await compat._drain()
    resp = [r for r in h.rec.interaction_responses[start:] if r["token"] == token]
    assert resp and resp[0]["type"] == 8
    return resp[0]["payload"]["data"]["choices"]


@pytest.mark.parametrize("dev_guild", [None, 1234567890])
async def test_setup_hook_syncs_to_the_dev_guild_or_globally(settings, monkeypatch, dev_guild):
    settings.discord.dev_guild_id = dev_guild
    h = await start_harness(settings, monkeypatch)
    try:
        sync = AsyncMock(return_value=[])
        monkeypatch.setattr(h.bot.tree, "sync", sync)
        await h.bot.sync_application_commands()
        if dev_guild:
            assert sync.await_args.kwargs["guild"].id == dev_guild
            assert h.bot.tree.get_commands(guild=discord.Object(dev_guild))  # copied from the global ones
        else:
            assert sync.await_args == ((), {})
    finally:
        await stop_harness(h)


async def test_slash_commands_from_another_server_reach_nothing_of_this_one(harness):
    """Issue 12: from another server, every Director slash command aimed at this server's project number answers
    exactly like an unknown number, and nothing here changes."""
    h = harness
    await h.setup_agency()
    await h.slash("project new", objective="Write a brief on espresso machines")
    await h.approval_message(1, "approach")
    other = back.make_guild("Other server")
    intruder = back.make_member(back.make_user("Mallory", "0666"), other)
    other.owner_id = intruder.id  # the owner of their own server: a Director there
    where = back.make_text_channel("general", other)
    await h.service.ensure_agency(str(other.id), other.name)
    before = await h.status(1)
    for name, options in (("project cancel", {}), ("project pause", {}), ("project status", {}), ("budget", {"amount": 999.0})):
        theirs = text_of(await h.slash(name, by=intruder, where=where, project=1, **options))
        unknown = text_of(await h.slash(name, by=intruder, where=where, project=4242, **options))
        assert "There is no project #1" in theirs, (name, theirs)
        assert theirs.replace("#1", "#N") == unknown.replace("#4242", "#N"), name
    assert await h.status(1) == before
    async with h.service.db.session() as s:
        from agency.db.tables import ProjectRow

        assert (await s.get(ProjectRow, 1)).budget_usd != 999.0
