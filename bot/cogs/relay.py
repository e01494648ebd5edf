"""People's messages in the agency's channels reach the right member.

A thread reaches its specialist, a stream channel its Collaborator,
`#overview` the PM; `@Handle` addresses a virtual member directly. Text
starting with `/` runs through the core's command parser and checks. The bot
ignores every bot and webhook message, its own included, so it can never
answer itself.
"""
from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from agency.errors import AgencyError
from bot.errors import describe_error
from bot.text import split_message

if TYPE_CHECKING:
    from bot.client import AgencyBot

log = logging.getLogger(__name__)

HANDLE = re.compile(r"(?<![\w<@&])@([A-Za-z][A-Za-z0-9_-]{1,31})\b")
ADD_HUMAN = re.compile(r"^/stream\s+add-human\b", re.IGNORECASE)
TEXT_ATTACHMENT_MAX = 256 * 1024
TEXT_SUFFIXES = (".md", ".txt", ".markdown", ".csv", ".json", ".py", ".yaml", ".yml")


class Relay(commands.Cog):
    def __init__(self, bot: AgencyBot) -> None:
        self.bot = bot

    @staticmethod
    def ignored(message: discord.Message) -> bool:
        return (message.guild is None or message.author.bot or message.webhook_id is not None
                or message.type not in (discord.MessageType.default, discord.MessageType.reply))

    async def _text(self, message: discord.Message) -> str:
        """The message's text, plus the content of attached text files (e.g. a `/submit` output)."""
        text = message.content or ""
        for att in message.attachments:
            if att.size > TEXT_ATTACHMENT_MAX or not (att.filename.lower().endswith(TEXT_SUFFIXES)
                                                     or (att.content_type or "").startswith("text/")):
                continue
            try:
                data = await att.read()
            except discord.HTTPException as e:
                log.warning("could not read attachment %s: %s", att.filename, e)
                continue
            text += f"\n\n{data.decode('utf-8', errors='replace')}"
        return text.strip()

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if self.ignored(message):
            return
        assert message.guild is not None
        channel = message.channel
        if not isinstance(channel, (discord.TextChannel, discord.Thread)):
            return
        address = await self.bot.chat.address_of(message.guild.id, channel)
        if address is None:
            return  # not one of the agency's channels
        text = await self._text(message)
        if not text:
            return
        try:
            reply = await self._handle(message, address, text)
        except Exception as e:  # noqa: BLE001 - every error becomes a reply
            reply = describe_error(e, channel=channel)
        if reply:
            await self._reply(message, reply)

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        """The Director's reaction on a member's message is feedback for that member (👍 ✅ ⭐ ❤️ = 5, 👎 ❌ = 1)."""
        member = payload.member
        if payload.guild_id is None or member is None or member.bot:
            return
        guild = self.bot.get_guild(payload.guild_id)
        channel = guild.get_channel_or_thread(payload.channel_id) if guild is not None else None
        if not isinstance(channel, (discord.TextChannel, discord.Thread)):
            return
        try:
            address = await self.bot.chat.address_of(payload.guild_id, channel)
            if address is None:
                return
            await self.bot.service.record_reaction(str(payload.guild_id), address, str(payload.message_id),
                                                   str(payload.emoji), self.bot.actor(member))
        except Exception:  # a reaction must never break the bot
            log.exception("could not record the reaction on message %s", payload.message_id)

    async def _handle(self, message: discord.Message, address: str, text: str) -> str | None:
        bot = self.bot
        gid = str(message.guild.id)  # type: ignore[union-attr]
        actor = bot.actor(message.author)
        if ADD_HUMAN.match(text):
            people = [m for m in message.mentions if isinstance(m, discord.Member) and not m.bot]
            if not people:
                raise AgencyError("Mention the person: `/stream add-human @member`.")
            return "\n".join([await bot.service.add_human(gid, address, str(m.id), m.display_name, actor) for m in people])
        if text.startswith("/"):
            result = await bot.service.handle_message(gid, address, actor, text)
            return result.text if result is not None else None
        target, note = address, None
        handle = next(iter(HANDLE.findall(text)), None)
        if handle is not None:
            try:
                pid = await bot.service.resolve_project(gid, address=address)
                where = await bot.service.member_address(gid, handle, pid)
            except AgencyError:
                where = None
            if where is not None and where != address:
                target = where
                ext = bot.chat.channel_id_of(gid, where) or await bot.service.space_external_id(gid, where)
                note = f"Passed to @{handle}" + (f" in <#{ext}>." if ext else ".")
        if target == "hq":
            return None  # plain talk in #hq is between people; `@PM ...` or a command reaches the team
        async with message.channel.typing():
            result = await bot.service.handle_message(gid, target, actor, text)
        return result.text if result is not None else note

    async def _reply(self, message: discord.Message, text: str) -> None:
        for i, part in enumerate(split_message(text)):
            try:
                if i == 0:
                    await message.reply(part, mention_author=False, allowed_mentions=discord.AllowedMentions.none())
                else:
                    await message.channel.send(part, allowed_mentions=discord.AllowedMentions.none())
            except discord.HTTPException as e:
                log.warning("could not reply in channel %s: %s", message.channel.id, e)
                return


async def setup(bot: AgencyBot) -> None:
    await bot.add_cog(Relay(bot))
