"""AgencyBot: the discord.py client that hosts the agency."""
from __future__ import annotations

import logging
from typing import Any

import discord
from discord.ext import commands

from agency.models import Actor
from agency.service import AgencyService
from agency.settings import Settings
from bot.discord_chat import DiscordChat
from bot.permissions import INVITE_SCOPES, needed_permissions
from bot.views import DYNAMIC_ITEMS

log = logging.getLogger(__name__)

EXTENSIONS = (
    "bot.cogs.errors",
    "bot.cogs.agency",
    "bot.cogs.projects",
    "bot.cogs.approvals",
    "bot.cogs.specialists",
    "bot.cogs.streams",
    "bot.cogs.relay",
)


def intents() -> discord.Intents:
    i = discord.Intents.default()
    i.members = True  # the Director role check and `/stream add-human`
    i.message_content = True  # relaying people's messages and text commands
    return i


class AgencyBot(commands.Bot):
    """One process, many guilds: each guild is an agency. Services are injected."""

    def __init__(self, settings: Settings, service: AgencyService, chat: DiscordChat, *,
                 sync_commands: bool = True, start_service: bool = True, **options: Any) -> None:
        options.setdefault("allowed_mentions", discord.AllowedMentions(everyone=False, roles=False, users=True, replied_user=False))
        super().__init__(command_prefix=commands.when_mentioned, intents=intents(), help_command=None, **options)
        self.settings = settings
        self.service = service
        self.chat = chat
        self.sync_commands = sync_commands
        self.start_service = start_service
        self.director_role_ids: dict[int, int] = {}  # guild id -> recorded Director role id
        self._service_started = False
        chat.attach(self, service)

    # -- start-up ------------------------------------------------------------------------------
    async def setup_hook(self) -> None:
        for ext in EXTENSIONS:
            try:
                await self.load_extension(ext)
            except Exception:
                log.exception("failed to load extension %s", ext)
        self.add_dynamic_items(*DYNAMIC_ITEMS)  # approval buttons of any age keep working
        await self.load_director_roles()
        if self.sync_commands:
            await self.sync_application_commands()
        if self.start_service:
            resumed = await self.service.start()
            self._service_started = True
            if resumed:
                log.info("resumed projects %s", resumed)

    async def sync_application_commands(self) -> list[Any]:
        """Sync to the development guild when one is set (instant), otherwise globally (up to an hour)."""
        gid = self.settings.discord.dev_guild_id
        if gid:
            guild = discord.Object(id=gid)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d application commands to guild %s", len(synced), gid)
        else:
            synced = await self.tree.sync()
            log.info("synced %d application commands globally", len(synced))
        return synced

    async def load_director_roles(self) -> None:
        roles = await self.service.director_roles()
        self.director_role_ids = {int(g): int(r) for g, r in roles.items() if g.isdigit() and r.isdigit()}

    async def on_ready(self) -> None:
        self.chat.online.set()
        if self.user is not None:
            url = discord.utils.oauth_url(self.application_id or self.user.id, permissions=needed_permissions(), scopes=INVITE_SCOPES)
            log.info("logged in as %s (%s) in %d server(s); invite URL: %s", self.user, self.user.id, len(self.guilds), url)

    async def on_resumed(self) -> None:
        self.chat.online.set()

    async def on_message(self, message: discord.Message) -> None:
        """No prefix commands: the relay cog handles people's messages."""

    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        self.chat.forget(channel.id)
        await self.redeliver(channel.guild)  # room for a new channel (a full server)

    # -- a cause of undeliverable messages may be fixed: try them again ------------------------------
    async def redeliver(self, guild: discord.Guild | None, *, content: bool = False) -> None:
        """Queue this server's undeliverable messages again (``content``: also those AutoMod blocked)."""
        dispatcher = getattr(self.service, "dispatcher", None)
        if guild is None or dispatcher is None:
            return
        try:
            await dispatcher.redeliver(agency_external_id=str(guild.id), content=content)
        except Exception:
            log.exception("could not queue the undeliverable messages of guild %s again", guild.id)

    async def on_guild_channel_create(self, channel: discord.abc.GuildChannel) -> None:
        await self.redeliver(channel.guild)

    async def on_guild_channel_update(self, before: discord.abc.GuildChannel, after: discord.abc.GuildChannel) -> None:
        await self.redeliver(after.guild)  # e.g. permission overwrites granted

    async def on_guild_role_update(self, before: discord.Role, after: discord.Role) -> None:
        await self.redeliver(after.guild)

    async def on_guild_update(self, before: discord.Guild, after: discord.Guild) -> None:
        await self.redeliver(after)

    async def on_member_update(self, before: discord.Member, after: discord.Member) -> None:
        if self.user is not None and after.id == self.user.id:  # the bot's own roles changed
            await self.redeliver(after.guild)

    async def on_guild_join(self, guild: discord.Guild) -> None:
        await self.redeliver(guild)

    async def on_automod_rule_update(self, rule: discord.AutoModRule) -> None:
        await self.redeliver(rule.guild, content=True)

    async def on_automod_rule_delete(self, rule: discord.AutoModRule) -> None:
        await self.redeliver(rule.guild, content=True)

    async def on_thread_delete(self, thread: discord.Thread) -> None:
        self.chat.forget(thread.id)

    async def close(self) -> None:
        self.chat.closing = True
        if self._service_started:
            self._service_started = False
            await self.service.stop()  # drains the outbox while still connected
        self.chat.online.clear()
        await super().close()

    # -- who is who ----------------------------------------------------------------------------
    def director_role(self, guild: discord.Guild) -> discord.Role | None:
        """The Director role recorded at `/agency setup`, by id: a role that merely carries the name (which
        anyone with Manage Roles can create) confers nothing."""
        rid = self.director_role_ids.get(guild.id)
        return guild.get_role(rid) if rid else None

    def is_director(self, user: discord.abc.User | discord.Member) -> bool:
        if not isinstance(user, discord.Member):
            return False
        if user.guild.owner_id == user.id:
            return True
        rid = self.director_role_ids.get(user.guild.id)
        return rid is not None and any(r.id == rid for r in user.roles)

    def actor(self, user: discord.abc.User | discord.Member) -> Actor:
        guild = getattr(user, "guild", None)  # a Member acts in its guild's agency; every id it names is resolved there
        return Actor(name=user.display_name, external_user_id=str(user.id), is_director=self.is_director(user),
                     agency=str(guild.id) if guild is not None else None)
