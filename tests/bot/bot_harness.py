"""The test harness for the Discord adapter: a bot on dpytest's fake Discord, a real service on a
temporary SQLite database and the scripted LLM (imported by the tests; fixtures live in conftest.py)."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import discord
import discord.ext.test as dpytest
import pytest
from discord.ext.test import backend as back

import dpytest_compat as compat
from agency.llm.client import ModelSet
from agency.llm.scripted import ScriptedModel
from agency.service import AgencyService
from agency.settings import Settings
from bot.client import AgencyBot
from bot.discord_chat import DiscordChat
from bot.permissions import needed_permissions

assert discord.__version__ == "2.7.1", "dpytest_compat touches discord.py internals: re-check it before upgrading"


def scripted_models(model: ScriptedModel | None = None) -> ModelSet:
    model = model or ScriptedModel()
    return ModelSet({"fast": (model, "gpt-4o-mini"), "strong": (model, "gpt-4o")}, "fast", simulated=True)


async def eventually(predicate: Callable[[], Any], *, timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` (sync or async) until it is truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


class Harness:
    """One bot on the fake Discord, with helpers to act as people and to look at what was posted."""

    def __init__(self, bot: AgencyBot, service: AgencyService, chat: DiscordChat, rec: compat.Recorder) -> None:
        self.bot, self.service, self.chat, self.rec = bot, service, chat, rec
        cfg = dpytest.get_config()
        self.guild: discord.Guild = cfg.guilds[0]
        self.owner, self.alice, self.bob = cfg.members[:3]
        self.general: discord.TextChannel = cfg.channels[0]

    @property
    def gid(self) -> str:
        return str(self.guild.id)

    async def slash(self, name: str, *, by: Any = None, where: Any = None, **options: Any) -> list[dict]:
        """Run ``/name option=value ...`` as ``by`` (default: the owner) in ``where`` (default: #TextChannel_0)."""
        return await compat.invoke_slash(self.bot, name, member=by or self.owner, channel=where or self.general,
                                         raise_errors=False, options_=options)

    async def click(self, message: discord.Message, custom_id: str, *, member: Any = None) -> list[dict]:
        return await compat.click(message, custom_id, member=member or self.owner)

    async def say(self, channel: Any, text: str, *, member: Any = None) -> discord.Message:
        msg = await dpytest.message(text, channel=channel, member=member or self.owner)
        await dpytest.run_all_events()
        return msg

    async def ask(self, channel: Any, text: str, *, member: Any = None) -> str:
        """Say ``text`` and return what the bot itself (not a persona) replied in that channel."""
        await dpytest.empty_queue()
        await self.say(channel, text, member=member)
        replies = []
        while not dpytest.sent_queue.empty():
            m = dpytest.get_message()
            if m.channel.id == channel.id:
                replies.append(m.content)
        return "\n".join(replies)

    async def setup_agency(self) -> None:
        out = await self.slash("agency setup")
        assert "is an A-TEAMs agency" in text_of(out), out

    def channel(self, name: str, category: discord.CategoryChannel | None = None) -> discord.TextChannel | None:
        pool = category.text_channels if category is not None else self.guild.text_channels
        return discord.utils.get(pool, name=name)

    def category_of(self, pid: int) -> discord.CategoryChannel | None:
        return discord.utils.find(lambda c: c.name.startswith(f"P{pid} "), self.guild.categories)

    def sends(self, **where: Any) -> list[dict]:
        return [s for s in self.rec.webhook_sends if all(s.get(k) == v for k, v in where.items())]

    def messages(self, channel: discord.abc.Messageable) -> list[dict]:
        return list(compat._raw_messages(channel.id))

    async def message(self, channel_id: int, message_id: int) -> discord.Message:
        raw = compat._raw_message(channel_id, message_id)
        assert raw is not None, f"no message {message_id} in {channel_id}"
        msg = self.bot._connection._get_message(int(message_id))
        if msg is None:
            ch = self.guild.get_channel_or_thread(channel_id)
            msg = discord.Message(state=self.bot._connection, channel=ch, data=raw)  # type: ignore[arg-type]
        return msg

    async def status(self, pid: int) -> str:
        return (await self.service.project(pid)).status

    async def wait_status(self, pid: int, *states: str, timeout: float = 30.0) -> str:
        async def check() -> str | None:
            st = await self.status(pid)
            if st in ("failed", "blocked") and st not in states:
                raise AssertionError(f"project {pid} ended {st}: {(await self.service.project(pid)).error}")
            return st if st in states else None

        return await eventually(check, timeout=timeout, what=f"project {pid} to reach {states}")

    async def finish(self, pid: int, *, timeout: float = 60.0) -> None:
        """Wait for the project to be done and its after-delivery work (the Learning Manager's evaluations)
        to end, then post the due status and deliver the whole outbox: after it, everything said is out."""
        await self.wait_status(pid, "done", timeout=timeout)
        async with asyncio.timeout(timeout):
            await self.service.engine.wait_project(pid)
        await self.service.settle()

    async def approval_message(self, pid: int, kind: str, *, timeout: float = 30.0) -> tuple[discord.Message, int]:
        """The delivered approval message of ``kind`` that is still pending, and its approval id."""
        from sqlalchemy import select

        from agency.db.tables import ApprovalRow, MessageRow

        async def find() -> tuple[int, int, int] | None:
            async with self.service.db.session() as s:
                row = (await s.execute(select(MessageRow, ApprovalRow).join(ApprovalRow, ApprovalRow.id == MessageRow.approval_id).where(
                    MessageRow.project_id == pid, MessageRow.kind == "approval", MessageRow.status == "delivered",
                    ApprovalRow.kind == kind, ApprovalRow.status == "pending"))).first()
                if row is None:
                    return None
                m, a = row
                return int(m.external_id), a.id, 0

        mid, aid, _ = await eventually(find, timeout=timeout, what=f"a delivered {kind} approval")
        send = next(s for s in self.rec.webhook_sends if s["message_id"] == mid)
        return await self.message(int(send["thread_id"] or send["channel_id"]), mid), aid


def text_of(responses: list[dict]) -> str:
    return "\n".join((r.get("content") or "") for r in responses)


async def grant_bot(guild: discord.Guild, permissions: discord.Permissions) -> discord.Role:
    role = back.make_role("A-TEAMs bot", guild, permissions=permissions.value)
    back.update_member(guild.me, roles=[role])
    return role


async def start_harness(settings: Settings, monkeypatch: pytest.MonkeyPatch, *, models: ModelSet | None = None,
                        bot_permissions: discord.Permissions | None = None, first: bool = True) -> Harness:
    chat = DiscordChat(settings, pace=(1000, 1.0))
    service = await AgencyService.create(settings, chat, models=models or scripted_models())
    bot = AgencyBot(settings, service, chat, sync_commands=False)
    await bot._async_setup_hook()
    if first:
        dpytest.configure(bot, members=["Owner", "Alice", "Bob"])
        rec = compat.install(bot, monkeypatch)
        guild = dpytest.get_config().guilds[0]
        guild.owner_id = dpytest.get_config().members[0].id
        await grant_bot(guild, bot_permissions if bot_permissions is not None else needed_permissions())
    else:
        compat.move_to(bot)
        rec = compat.REC
    await bot.setup_hook()
    await bot.on_ready()
    return Harness(bot, service, chat, rec)


async def stop_harness(h: Harness) -> None:
    await h.service.close()
    await dpytest.empty_queue()
