"""What a Discord failure means for the outbox (issue 11, defect 5): transient errors are retried, permanent ones
keep the message as undeliverable with what to do, and the bot queues them again when Discord shows that the
cause may be fixed."""
from __future__ import annotations

from typing import Any

import aiohttp
import discord
import discord.ext.test as dpytest
import pytest
from discord.ext.test import backend as back
from sqlalchemy import select

import dpytest_compat as compat
from agency.db import repos
from agency.db.tables import AgencyRow, MessageRow
from agency.ports import (
    DeliveryPermanentError,
    DeliveryTransientError,
    OutboundMessage,
    SpaceSpec,
)
from bot.discord_chat import ChatUnavailableError, NotInGuildError, delivery_error
from bot.permissions import DiscordPermissionError
from bot_harness import eventually


def _http(status: int, code: int, text: str = "error", cls: type[discord.HTTPException] = discord.HTTPException) -> discord.HTTPException:
    return cls(back.FakeRequest(status, "reason"), {"code": code, "message": text})


# -- the mapping -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("error", [
    _http(500, 0, "Internal Server Error", discord.DiscordServerError),
    _http(503, 0, "Service Unavailable", discord.DiscordServerError),
    _http(429, 0, "You are being rate limited."),
    _http(429, 20028, "The channel you are writing has hit the write rate limit"),
    _http(400, 50083, "Thread is archived"),
    _http(400, 12345, "something new"),  # a code we do not know: try again later (and the outbox logs it)
    aiohttp.ClientConnectionError("connection reset"),
    TimeoutError(),
    ChatUnavailableError("Discord is not connected yet; the message stays in the outbox."),
])
def test_outages_and_rate_limits_are_transient(error: BaseException) -> None:
    mapped = delivery_error(error, "#research")
    assert isinstance(mapped, DeliveryTransientError), mapped


def test_a_rate_limit_carries_its_wait() -> None:
    mapped = delivery_error(discord.RateLimited(12.5))
    assert isinstance(mapped, DeliveryTransientError) and mapped.retry_after == 12.5


@pytest.mark.parametrize("code", [50013, 50001, 0])
def test_missing_access_or_permissions_are_permanent_and_say_what_to_grant(code: int) -> None:
    mapped = delivery_error(_http(403, code, "Missing Permissions", discord.Forbidden), "#research")
    assert isinstance(mapped, DeliveryPermanentError) and not mapped.content
    assert "#research" in mapped.reason and "#research" in mapped.what_to_do
    assert "Send Messages" in mapped.what_to_do and "delivered" in mapped.what_to_do
    assert mapped.cause.endswith("#research")  # one cause per channel


def test_our_own_permission_check_is_permanent() -> None:
    mapped = delivery_error(DiscordPermissionError("manage_channels"), "#overview")
    assert isinstance(mapped, DeliveryPermanentError) and "Manage Channels" in mapped.reason
    again = delivery_error(DiscordPermissionError("manage_channels"), "#overview")
    assert isinstance(again, DeliveryPermanentError) and again.cause == mapped.cause


def test_a_full_server_is_one_cause_whatever_the_channel() -> None:
    a = delivery_error(_http(400, 30013, "Maximum number of guild channels reached (500)"), "#research")
    b = delivery_error(_http(400, 30013, "Maximum number of guild channels reached (500)"), "#overview")
    assert isinstance(a, DeliveryPermanentError) and isinstance(b, DeliveryPermanentError)
    assert a.cause == b.cause and "500 channels" in a.reason and "Delete" in a.what_to_do


def test_an_unknown_channel_or_a_lost_server_is_permanent() -> None:
    gone = delivery_error(_http(404, 10003, "Unknown Channel", discord.NotFound), "#research")
    assert isinstance(gone, DeliveryPermanentError) and not gone.content
    left = delivery_error(NotInGuildError("The bot is not in the server 1 (any more)."))
    assert isinstance(left, DeliveryPermanentError) and "Invite me again" in left.what_to_do


def test_automod_refuses_that_content_only() -> None:
    blocked = delivery_error(_http(400, 200000, "Message was blocked by automatic moderation"), "#research")
    assert isinstance(blocked, DeliveryPermanentError) and blocked.content and "AutoMod" in blocked.reason
    name = delivery_error(_http(400, 200001, "Title was blocked by automatic moderation"), "#research")
    assert isinstance(name, DeliveryPermanentError) and not name.content


def test_an_exception_nobody_knows_is_left_to_the_outbox() -> None:
    assert delivery_error(ValueError("a bug")) is None  # the outbox retries it as transient, with a traceback in the log


# -- the adapter -----------------------------------------------------------------------------------------------
async def _stream(h) -> tuple[int, SpaceSpec]:
    """An agency with a project category and a stream channel, declared as the engine would."""
    await h.setup_agency()
    async with h.service.db.session() as s:
        a = (await s.execute(select(AgencyRow).where(AgencyRow.external_id == h.gid))).scalar_one()
        await repos.declare_space(s, a.id, "project:1", "project", "P1 Espresso")
        await repos.declare_space(s, a.id, "stream:1", "stream", "research", parent="project:1")
        await s.commit()
        return a.id, SpaceSpec("stream:1", "stream", "research", parent="project:1", agency_external_id=h.gid)


async def _post(h, agency_id: int, address: str, *texts: str) -> list[int]:
    async with h.service.db.session() as s:
        rows = [repos.post(s, agency_id, None, address, "Researcher-A", text) for text in texts]
        await s.commit()
    h.service.engine.outbox_ready.set()
    return [r.id for r in rows]


async def _status(h, *ids: int) -> list[str]:
    async with h.service.db.session() as s:
        return [(await s.get(MessageRow, i)).status for i in ids]


def _fail_webhook_sends(monkeypatch: pytest.MonkeyPatch, when: Any) -> list[int]:
    """Make the fake Discord refuse webhook posts: ``when(payload)`` returns the exception to raise (or None)."""
    orig = compat._execute_webhook
    refused: list[int] = []

    def execute(wid: int, token: str, payload: dict, params: dict, files: Any = None):
        error = when(payload)
        if error is not None:
            refused.append(wid)
            raise error
        return orig(wid, token, payload, params, files)

    monkeypatch.setattr(compat, "_execute_webhook", execute)
    return refused


async def test_an_unknown_channel_is_created_again_once_then_reported(harness, monkeypatch) -> None:
    h = harness
    _, spec = await _stream(h)
    await h.chat.ensure_space(SpaceSpec("project:1", "project", "P1 Espresso", agency_external_id=h.gid))
    ext = await h.chat.ensure_space(spec)
    failures = [1]

    def once(payload: dict) -> BaseException | None:
        if failures[0] > 0:
            failures[0] -= 1
            return _http(404, 10003, "Unknown Channel", discord.NotFound)
        return None

    _fail_webhook_sends(monkeypatch, once)
    msg = OutboundMessage(id=9001, agency_external_id=h.gid, space=spec, persona="PM", content="one")
    assert await h.chat.send(msg, ext)  # re-ensured, then delivered
    failures[0] = 2
    with pytest.raises(DeliveryPermanentError) as e:
        await h.chat.send(OutboundMessage(id=9002, agency_external_id=h.gid, space=spec, persona="PM", content="two"), ext)
    assert "#research" in e.value.reason


async def test_automod_keeps_the_message_tells_the_director_once_and_the_channel_goes_on(harness, monkeypatch) -> None:
    h = harness
    agency_id, _ = await _stream(h)
    blocked = {"buy cheap watches"}
    _fail_webhook_sends(monkeypatch, lambda p: _http(400, 200000, "Message was blocked by automatic moderation")
                        if p.get("content") in blocked else None)
    ids = await _post(h, agency_id, "stream:1", "first", "buy cheap watches", "third", "buy cheap watches")
    await h.service.dispatcher.drain()
    assert await _status(h, *ids) == ["delivered", "undeliverable", "delivered", "undeliverable"]
    notices = [m for m in h.messages(h.channel("hq")) if "AutoMod" in (m["content"] or "")]
    assert len(notices) == 1 and "could not be delivered" in notices[0]["content"]
    async with h.service.db.session() as s:
        row = await s.get(MessageRow, ids[1])
    assert "AutoMod blocked a message in #research" in row.error

    blocked.clear()  # the rule was changed
    await h.bot.redeliver(h.guild, content=True)  # what on_automod_rule_update does
    await h.service.dispatcher.drain()
    assert await _status(h, *ids) == ["delivered"] * 4


async def test_a_permission_granted_in_discord_delivers_the_waiting_messages(harness, monkeypatch) -> None:
    h = harness
    agency_id, _ = await _stream(h)
    denied = [True]
    _fail_webhook_sends(monkeypatch, lambda p: _http(403, 50013, "Missing Permissions", discord.Forbidden)
                        if denied[0] and p.get("username") == "Researcher-A" else None)
    ids = await _post(h, agency_id, "stream:1", "one", "two", "three")
    await h.service.dispatcher.drain()
    assert await _status(h, *ids) == ["undeliverable", "pending", "pending"]  # the rest wait, in order
    hq = h.channel("hq")
    told = [m for m in h.messages(hq) if "Missing Permissions" in (m["content"] or "")]
    assert len(told) == 1 and "Send Messages" in told[0]["content"] and h.bot.director_role(h.guild).mention in told[0]["content"]

    denied[0] = False  # an admin fixes the channel's permissions; Discord tells the bot about a channel change
    back.update_text_channel(h.channel("research", h.category_of(1)), target=h.guild.default_role, override=discord.PermissionOverwrite())
    await dpytest.run_all_events()
    await eventually(lambda: _pending(h, ids[0]), what="the message to be queued again")
    await h.service.dispatcher.drain()
    assert await _status(h, *ids) == ["delivered"] * 3
    sent = [s["content"] for s in h.rec.webhook_sends if s["username"] == "Researcher-A"]
    assert sent == ["one", "two", "three"]


async def _pending(h, mid: int) -> bool:
    return (await _status(h, mid)) != ["undeliverable"]


@pytest.mark.parametrize("event", ["channel_create", "role_update", "guild_update"])
async def test_discord_events_that_may_fix_a_cause_queue_the_messages_again(harness, event: str) -> None:
    h = harness
    from agency.states import MESSAGE, MessageState, transition

    await h.setup_agency()
    await h.service.dispatcher.stop()  # nothing delivers it meanwhile: the test looks at the row alone
    async with h.service.db.session() as s:
        a = (await s.execute(select(AgencyRow).where(AgencyRow.external_id == h.gid))).scalar_one()
        row = repos.post(s, a.id, None, "overview:7", "PM", "waiting")
        await s.commit()

    async with h.service.db.session() as s:
        assert await transition(s, MESSAGE, row.id, MessageState.UNDELIVERABLE, values={"cause": "space:test", "error": "test"})
        await s.commit()
    if event == "channel_create":
        back.make_text_channel("new-channel", h.guild)
    elif event == "role_update":
        back.update_role(discord.utils.get(h.guild.roles, name="A-TEAMs bot"), name="A-TEAMs bot")
    else:  # (dpytest's update_guild does not work with this discord.py: the gateway event as it would arrive)
        h.bot.dispatch("guild_update", h.guild, h.guild)
    await dpytest.run_all_events()
    assert await _status(h, row.id) == ["pending"]
