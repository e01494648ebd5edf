"""The chat port over Discord: categories, channels, threads and webhook personas.

The outbox dispatcher calls :meth:`DiscordChat.ensure_space` (parents first)
and then :meth:`DiscordChat.send`. Spaces are found by the Discord id the
database recorded for them; one deleted by hand is created again. Each
member speaks through one webhook per channel (created once, reused after a
restart) with its own name and avatar; without the Manage Webhooks permission
it speaks through embeds, and the Director is told once what is missing.

Failures reach the outbox as :class:`~agency.ports.DeliveryTransientError` (it
retries with backoff) or :class:`~agency.ports.DeliveryPermanentError` (it keeps
the message as undeliverable, tells the Director once, and redelivers when the
bot sees a permission or channel change); :func:`delivery_error` decides which.
The pace per channel or thread (``pace_limits``) is kept by the outbox, per
space, so a wait holds back only that space.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import aiohttp
import discord

from agency.errors import AgencyError
from agency.ports import (
    DeliveryError,
    DeliveryPermanentError,
    DeliveryTransientError,
    OutboundMessage,
    SpaceSpec,
)
from agency.settings import Settings
from bot.permissions import DiscordPermissionError, missing_in
from bot.text import channel_name, persona_name, split_message, truncate

if TYPE_CHECKING:
    from bot.client import AgencyBot

log = logging.getLogger(__name__)

WEBHOOK_NAME = "A-TEAMs"
RECENT_CHECK = 50  # messages read back when a resend after a crash may be a duplicate
THREAD_ARCHIVE_MINUTES: Literal[10080] = 10080  # a week: specialists' threads stay open between turns
_COLOURS = (0x5865F2, 0x57F287, 0xFEE75C, 0xEB459E, 0xED4245, 0x3BA55C, 0xFAA61A, 0x9B59B6)
# Discord's limits per channel (a thread counts as one): bots 5 messages per 5 s, webhooks about 30 per minute
PACE_LIMITS: tuple[tuple[int, float], ...] = ((5, 5.0), (30, 60.0))


class SpaceStore(Protocol):
    """What the adapter needs from the core (AgencyService implements it)."""

    async def space_external_id(self, agency_external_id: str, address: str) -> str | None: ...

    async def approval_info(self, approval_id: int) -> tuple[int, str, str]: ...

    async def address_for_external(self, agency_external_id: str, external_id: str) -> str | None: ...

    async def record_space(self, agency_external_id: str, address: str, external_id: str, *, kind: str | None = None,
                           name: str | None = None) -> None: ...


class ChatUnavailableError(AgencyError):
    """Discord is not connected (yet, or any more); the outbox retries later."""


class NotInGuildError(AgencyError):
    """The bot is not (any more) in the agency's server."""


class ChannelGoneError(AgencyError):
    """A channel or thread was not found even after it was created again."""


GRANT = "Once that is fixed, the waiting messages are delivered (I try again when a role or channel changes)."
# Discord error codes that no retry fixes: (why, what the Director does); the whole space waits for the fix
_PERMANENT: dict[int, tuple[str, str]] = {
    10003: ("the channel no longer exists and could not be created again", "Check that I may see and create channels. " + GRANT),
    10004: ("I am no longer in this server", "Invite me again (see docs/discord.md); then the waiting messages are delivered."),
    50001: ("I have no access to {where}", "Give my role **View Channel** and **Send Messages** (and **Send Messages in Threads**) "
            "in {where}. " + GRANT),
    50013: ("I am missing a permission in {where}", "Give my role **Send Messages**, **Send Messages in Threads**, "
            "**Embed Links** and **Attach Files** in {where}. " + GRANT),
    30013: ("the server has reached Discord's maximum of 500 channels", "Delete or archive channels of old projects. " + GRANT),
    160006: ("the server has reached Discord's maximum of active threads", "Archive some threads. " + GRANT),
    200001: ("AutoMod blocked the name of {where}", "Adjust the AutoMod rule (Server Settings > AutoMod). " + GRANT),
}
# ... and those about this message's content only: later messages of the space go on
_PERMANENT_CONTENT: dict[int, tuple[str, str]] = {
    200000: ("AutoMod blocked a message in {where}", ("If it should pass, adjust the AutoMod rule (Server Settings > AutoMod); "
                                                      "blocked messages are tried again when a rule changes.")),
    40005: ("a message in {where} was too large for Discord", "It is kept in the audit export."),
    50035: ("Discord refused a message in {where} as invalid", "It is kept in the audit export; please report it."),
}


def _retry_after(e: discord.HTTPException) -> float | None:
    if isinstance(e, discord.RateLimited):
        return float(e.retry_after)
    headers = getattr(e.response, "headers", None) or {}
    try:
        value = headers.get("Retry-After") or headers.get("retry-after")
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _sentence(why: str, label: str) -> str:
    return f"{why[:1].upper()}{why[1:]} ({label})."


def delivery_error(e: BaseException, where: str = "") -> DeliveryError | None:
    """What an exception from Discord means for the outbox: transient (retry with backoff), permanent
    (undeliverable until a person fixes the cause) or None (not one we know: the outbox retries it as
    transient and logs it). ``where``: the channel, e.g. ``#research``, for the Director's notice."""
    where = where or "the channel"
    if isinstance(e, DeliveryError):
        return e
    if isinstance(e, DiscordPermissionError):
        return DeliveryPermanentError(e.user_message, GRANT, cause=f"permission:{','.join(e.permissions)}:{where}")
    if isinstance(e, NotInGuildError):
        return DeliveryPermanentError(e.user_message, _PERMANENT[10004][1], cause="discord:10004")
    if isinstance(e, ChannelGoneError):
        why, todo = _PERMANENT[10003]
        return DeliveryPermanentError(f"{e.user_message} ({why}).", todo, cause=f"discord:10003:{where}")
    if isinstance(e, ChatUnavailableError):
        return DeliveryTransientError(e.user_message)
    if isinstance(e, discord.RateLimited):
        return DeliveryTransientError(f"Discord rate limit ({e.retry_after:.0f} s)", retry_after=e.retry_after)
    if isinstance(e, discord.HTTPException):
        code, status = int(getattr(e, "code", 0) or 0), int(getattr(e, "status", 0) or 0)
        label = f"Discord error {code or status}: {e.text or type(e).__name__}"
        if code in _PERMANENT_CONTENT:
            why, todo = _PERMANENT_CONTENT[code]
            return DeliveryPermanentError(_sentence(why.format(where=where), label), todo.format(where=where),
                                          cause=f"discord:{code}:{where}", content=True)
        if isinstance(e, discord.Forbidden) and code not in _PERMANENT:
            code = 50013  # a 403 without a known code: a permission, as far as the Director can act on it
        if code in _PERMANENT:
            why, todo = _PERMANENT[code]
            scope = "" if code in (10004, 30013, 160006) else f":{where}"  # a server-wide cause is one cause
            return DeliveryPermanentError(_sentence(why.format(where=where), label), todo.format(where=where),
                                          cause=f"discord:{code}{scope}")
        # 429, 5xx, write limits (20016, 20028), an archived thread (50083) and whatever else: try again later
        return DeliveryTransientError(label, retry_after=_retry_after(e) if status == 429 else None)
    if isinstance(e, (aiohttp.ClientError, asyncio.TimeoutError, OSError, discord.GatewayNotFound, discord.ConnectionClosed)):
        return DeliveryTransientError(f"connection to Discord failed ({type(e).__name__}: {e})")
    return None


def _windows(pace: tuple[int, float] | Sequence[tuple[int, float]]) -> tuple[tuple[int, float], ...]:
    """``(5, 5.0)`` or ``((5, 5.0), (30, 60.0))`` as a tuple of windows."""
    if len(pace) == 2 and all(isinstance(x, (int, float)) for x in pace):
        n, per = pace
        return ((int(n), float(per)),)  # type: ignore[arg-type]
    return tuple((int(n), float(per)) for n, per in pace)  # type: ignore[misc]


def _mapped(e: Exception, where: str) -> Exception:
    """``e`` as the outbox should see it (unknown exceptions unchanged: transient, logged)."""
    return delivery_error(e, where) or e


def default_avatar(persona: str) -> str:
    """A stable avatar per persona from Discord's own default avatars."""
    n = int(hashlib.sha256(persona.encode()).hexdigest(), 16) % 6
    return f"https://cdn.discordapp.com/embed/avatars/{n}.png"


def persona_colour(persona: str) -> int:
    return _COLOURS[int(hashlib.sha256(persona.encode()).hexdigest(), 16) % len(_COLOURS)]


class DiscordChat:
    """ChatPort over Discord. Attach it to the bot and the service before the first delivery."""

    def __init__(self, settings: Settings, *, pace: tuple[int, float] | Sequence[tuple[int, float]] = PACE_LIMITS,
                 webhook_name: str = WEBHOOK_NAME, avatar_for: Callable[[str], str | None] = default_avatar,
                 online_timeout: float = 60.0) -> None:
        self.settings = settings
        # (count, seconds) windows per channel or thread; the outbox paces each space by them
        self.pace_limits: tuple[tuple[int, float], ...] = _windows(pace)
        self.webhook_name = webhook_name
        self.avatar_for = avatar_for
        self.online_timeout = online_timeout
        self.bot: AgencyBot | None = None
        self.store: SpaceStore | None = None
        self.online = asyncio.Event()  # set once the gateway has delivered the guilds
        self.closing = False
        self._ids: dict[tuple[str, str], int] = {}  # (agency, address) -> Discord id
        self._addresses: dict[int, str] = {}  # Discord id -> address
        self._not_ours: set[int] = set()  # channels known not to be the agency's (no database lookup per message)
        self._hooks: dict[int, discord.Webhook] = {}  # channel id -> our webhook
        self._hook_locks: dict[int, asyncio.Lock] = {}  # one webhook lookup or creation per channel at a time
        self._create_locks: dict[int, asyncio.Lock] = {}
        self._warned: set[tuple[int, str]] = set()

    def attach(self, bot: AgencyBot, store: SpaceStore) -> None:
        self.bot = bot
        self.store = store

    # -- lookups ----------------------------------------------------------------------------------
    async def _ready(self) -> AgencyBot:
        if self.bot is None or self.store is None:
            raise ChatUnavailableError("The Discord adapter is not attached to a bot yet.")
        if not self.online.is_set():
            if self.closing:
                raise ChatUnavailableError("Discord is disconnected; the message stays in the outbox.")
            try:
                await asyncio.wait_for(self.online.wait(), self.online_timeout)
            except TimeoutError:
                raise ChatUnavailableError("Discord is not connected yet; the message stays in the outbox.") from None
        return self.bot

    async def _guild(self, agency_external_id: str) -> discord.Guild:
        bot = await self._ready()
        try:
            guild = bot.get_guild(int(agency_external_id))
        except ValueError:
            guild = None
        if guild is None:
            raise NotInGuildError(f"The bot is not in the server {agency_external_id} (any more).")
        return guild

    def _remember(self, agency: str, address: str, discord_id: int) -> None:
        old = self._ids.get((agency, address))
        if old is not None and old != discord_id:
            self._addresses.pop(old, None)
        self._ids[(agency, address)] = discord_id
        self._addresses[discord_id] = address
        self._not_ours.discard(discord_id)

    def forget(self, discord_id: int) -> None:
        """A channel or thread was deleted: drop it (it is created again on the next message)."""
        address = self._addresses.pop(discord_id, None)
        if address is not None:
            for key, value in list(self._ids.items()):
                if value == discord_id:
                    del self._ids[key]
        self._hooks.pop(discord_id, None)

    async def address_of(self, guild_id: int, channel: discord.abc.GuildChannel | discord.Thread) -> str | None:
        """The core's address of a channel or thread (a thread nobody declared counts as its channel)."""
        if self.store is None:
            return None
        for cid in (channel.id, getattr(channel, "parent_id", None)):
            if cid is None or cid in self._not_ours:
                continue
            address = self._addresses.get(cid)
            if address is None:
                address = await self.store.address_for_external(str(guild_id), str(cid))
                if address is not None:
                    self._remember(str(guild_id), address, cid)
            if address is not None:
                return address
            if len(self._not_ours) > 50_000:
                self._not_ours.clear()
            self._not_ours.add(cid)
        return None

    def channel_id_of(self, agency_external_id: str, address: str) -> int | None:
        return self._ids.get((agency_external_id, address))

    # -- spaces ---------------------------------------------------------------------------------
    async def ensure_space(self, space: SpaceSpec) -> str:
        try:
            return await self._ensure_space(space)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise _mapped(e, f"#{space.name or space.address}") from e

    async def _ensure_space(self, space: SpaceSpec) -> str:
        guild = await self._guild(space.agency_external_id)
        assert self.store is not None
        lock = self._create_locks.setdefault(guild.id, asyncio.Lock())
        async with lock:
            known = self._ids.get((space.agency_external_id, space.address))
            if known is None:
                stored = await self.store.space_external_id(space.agency_external_id, space.address)
                known = int(stored) if stored and stored.isdigit() else None
            obj = await self._existing(guild, known, space.kind) if known else None
            if obj is None:
                if known:
                    log.warning("space %s (%s) was deleted in Discord; creating it again", space.address, known)
                obj = await self._create(guild, space)
            self._remember(space.agency_external_id, space.address, obj.id)
            return str(obj.id)

    async def _existing(self, guild: discord.Guild, discord_id: int, kind: str) -> Any:
        obj: Any = guild.get_channel_or_thread(discord_id)
        if obj is None and kind == "thread":
            try:  # archived threads are not in the cache
                obj = await guild.fetch_channel(discord_id)
            except (discord.NotFound, discord.Forbidden):
                return None
        if obj is None:
            return None
        want = {"project": discord.CategoryChannel, "thread": discord.Thread}.get(kind, discord.TextChannel)
        if not isinstance(obj, want):
            return None
        if isinstance(obj, discord.Thread) and obj.archived:
            try:
                await obj.edit(archived=False)
            except discord.HTTPException as e:
                log.warning("could not reopen archived thread %s: %s", obj.id, e)
        return obj

    async def _parent(self, guild: discord.Guild, space: SpaceSpec) -> Any:
        if not space.parent:
            return None
        pid = self._ids.get((space.agency_external_id, space.parent))
        if pid is None and self.store is not None:
            stored = await self.store.space_external_id(space.agency_external_id, space.parent)
            pid = int(stored) if stored and stored.isdigit() else None
        parent = guild.get_channel(pid) if pid else None
        if parent is None:
            raise AgencyError(f"The parent of {space.address} ({space.parent}) does not exist yet.")
        return parent

    def _check(self, where: discord.abc.GuildChannel, *perms: str) -> None:
        missing = missing_in(where, *perms)
        if missing:
            raise DiscordPermissionError(missing, f"#{where.name}")

    async def _create(self, guild: discord.Guild, space: SpaceSpec) -> Any:
        """Create a space. A missing permission reaches the outbox, which tells the Director (in #hq) once;
        for #hq itself that notice could not arrive, so the Director is told here (in the system channel)."""
        try:
            return await self._create_unchecked(guild, space)
        except DiscordPermissionError as e:
            if space.kind == "hq":
                await self.warn_once(guild, ",".join(e.permissions), e.user_message)
            raise
        except discord.Forbidden as e:
            err = DiscordPermissionError("manage_channels" if space.kind != "thread" else "create_public_threads")
            if space.kind == "hq":
                await self.warn_once(guild, ",".join(err.permissions), err.user_message)
            raise err from e

    async def _create_unchecked(self, guild: discord.Guild, space: SpaceSpec) -> Any:
        reason = f"A-TEAMs: {space.address}"
        topic = (space.topic or "")[:1024]
        if space.kind == "hq":
            name = channel_name(space.name or self.settings.discord.hq_channel)
            found = discord.utils.find(lambda c: c.name == name and c.category is None, guild.text_channels)
            if found is not None:
                return found
            if not guild.me.guild_permissions.manage_channels and not guild.me.guild_permissions.administrator:
                raise DiscordPermissionError("manage_channels")
            return await guild.create_text_channel(name, topic=topic or discord.utils.MISSING, reason=reason)  # (MISSING: no topic)
        if space.kind == "project":
            name = (space.name or space.address)[:100]
            category = discord.utils.find(lambda c: c.name == name, guild.categories)
            if category is not None:
                return category
            if not guild.me.guild_permissions.manage_channels and not guild.me.guild_permissions.administrator:
                raise DiscordPermissionError("manage_channels")
            return await guild.create_category(name, reason=reason)
        parent = await self._parent(guild, space)
        if space.kind == "thread":
            if not isinstance(parent, discord.TextChannel):
                raise AgencyError(f"The parent of {space.address} is not a text channel.")
            name = (space.name or space.address)[:100]
            thread = discord.utils.find(lambda t: t.name == name, parent.threads)
            if thread is not None:
                return thread
            self._check(parent, "create_public_threads", "send_messages_in_threads")
            return await parent.create_thread(name=name, type=discord.ChannelType.public_thread,
                                              auto_archive_duration=THREAD_ARCHIVE_MINUTES, reason=reason)
        # overview, stream: a text channel in the project's category
        if not isinstance(parent, discord.CategoryChannel):
            raise AgencyError(f"The parent of {space.address} is not a category.")
        name = channel_name(space.name or space.address)
        found = discord.utils.find(lambda c: c.name == name, parent.text_channels)
        if found is not None:
            return found
        self._check(parent, "manage_channels")
        return await parent.create_text_channel(name, topic=topic or discord.utils.MISSING, reason=reason)

    # -- the Director is told once -----------------------------------------------------------------
    async def warn_once(self, guild: discord.Guild, key: str, text: str) -> None:
        """Tell the Director (in #hq, else the system channel) about a problem, once per server and kind."""
        if (guild.id, key) in self._warned:
            return
        self._warned.add((guild.id, key))
        log.warning("guild %s: %s", guild.id, text)
        hq_id = self._ids.get((str(guild.id), "hq"))
        if hq_id is None and self.store is not None:
            stored = await self.store.space_external_id(str(guild.id), "hq")
            hq_id = int(stored) if stored and stored.isdigit() else None
        channel = guild.get_channel(hq_id) if hq_id else None
        channel = channel or guild.system_channel
        if not isinstance(channel, discord.TextChannel) or missing_in(channel, "send_messages"):
            return
        mention, allowed = self.mentions(guild, ["director"])
        try:
            await channel.send(f"{mention} {text}".strip(), allowed_mentions=allowed)
        except discord.HTTPException as e:
            log.warning("could not warn the Director in guild %s: %s", guild.id, e)

    def mentions(self, guild: discord.Guild, ids: list[str]) -> tuple[str, discord.AllowedMentions]:
        """Mention text and the matching allowed mentions; ``"director"`` is the Director role (or the owner)."""
        parts: list[str] = []
        users: list[discord.abc.Snowflake] = []
        roles: list[discord.abc.Snowflake] = []
        for x in ids:
            if x == "director":
                role = self.bot.director_role(guild) if self.bot is not None else None
                if role is not None:
                    parts.append(role.mention)
                    roles.append(role)
                elif guild.owner_id:
                    parts.append(f"<@{guild.owner_id}>")
                    users.append(discord.Object(guild.owner_id))
            elif str(x).isdigit():
                parts.append(f"<@{x}>")
                users.append(discord.Object(int(x)))
        return " ".join(dict.fromkeys(parts)), discord.AllowedMentions(everyone=False, users=users or False, roles=roles or False,
                                                                       replied_user=False)

    # -- webhooks --------------------------------------------------------------------------------
    async def _webhook(self, channel: discord.TextChannel) -> discord.Webhook | None:
        hook = self._hooks.get(channel.id)
        if hook is not None:
            return hook
        async with self._hook_locks.setdefault(channel.id, asyncio.Lock()):  # a channel and its threads send concurrently
            return await self._find_or_create_webhook(channel)

    async def _find_or_create_webhook(self, channel: discord.TextChannel) -> discord.Webhook | None:
        hook = self._hooks.get(channel.id)
        if hook is not None:
            return hook
        if missing_in(channel, "manage_webhooks"):
            err = DiscordPermissionError("manage_webhooks", f"#{channel.name}")
            await self.warn_once(channel.guild, "manage_webhooks",
                                 err.user_message + " Until then the members speak through embeds posted by me.")
            return None
        me = channel.guild.me
        try:
            hooks = await channel.webhooks()
            hook = discord.utils.find(lambda h: h.name == self.webhook_name and h.token is not None
                                      and h.user is not None and h.user.id == me.id, hooks)
            if hook is None:
                hook = await channel.create_webhook(name=self.webhook_name, reason="A-TEAMs: members' voices")
        except discord.Forbidden:
            err = DiscordPermissionError("manage_webhooks", f"#{channel.name}")
            await self.warn_once(channel.guild, "manage_webhooks",
                                 err.user_message + " Until then the members speak through embeds posted by me.")
            return None
        except discord.HTTPException as e:
            if e.code != 30007:  # not "Maximum number of webhooks reached"
                raise
            await self.warn_once(channel.guild, "webhooks_full",
                                 f"#{channel.name} has the most webhooks Discord allows, so the members speak there through "
                                 "embeds posted by me. Delete an unused webhook (channel settings > Integrations) to give them "
                                 "their own names and avatars.")
            return None
        self._hooks[channel.id] = hook
        return hook

    # -- delivery ---------------------------------------------------------------------------------
    async def _target(self, message: OutboundMessage, space_external_id: str) -> tuple[discord.Guild, discord.TextChannel, discord.Thread | None]:
        guild = await self._guild(message.agency_external_id)
        space = message.space
        obj: Any = await self._existing(guild, int(space_external_id), space.kind)
        if obj is None and space.address:
            # deleted by hand since the caller resolved it: create it again and record the new id
            self.forget(int(space_external_id))
            new_id = await self.ensure_space(space)
            if new_id != space_external_id and self.store is not None:
                await self.store.record_space(space.agency_external_id, space.address, new_id, kind=space.kind, name=space.name)
            obj = guild.get_channel_or_thread(int(new_id))
        if isinstance(obj, discord.Thread):
            parent = obj.parent
            if not isinstance(parent, discord.TextChannel):
                raise AgencyError(f"The thread {obj.id} has no text channel parent.")
            return guild, parent, obj
        if isinstance(obj, discord.TextChannel):
            return guild, obj, None
        self.forget(int(space_external_id))
        raise AgencyError(f"Space {message.space.address} ({space_external_id}) is not a text channel or thread.")

    async def _view(self, message: OutboundMessage) -> discord.ui.View | None:
        if message.kind != "approval" or not message.approval_id or self.store is None:
            return None
        from bot.views import approval_view

        _, kind, status = await self.store.approval_info(message.approval_id)
        if status != "pending":
            return None
        return approval_view(message.approval_id, kind, message.approval_options)

    def _file(self, message: OutboundMessage) -> discord.File | None:
        if message.attachment_text is None:
            return None
        return discord.File(io.BytesIO(message.attachment_text.encode("utf-8")), filename=message.attachment_name or "attachment.md")

    async def send(self, message: OutboundMessage, space_external_id: str) -> str:
        """Post the message. A channel deleted meanwhile (Unknown Channel) is created again once; then, as any
        other failure, the error reaches the outbox as a transient or permanent delivery error."""
        where = f"#{message.space.name or message.space.address}"
        ids: list[int] = []  # parts already posted: a retry after Unknown Channel does not repeat them
        try:
            try:
                return await self._send(message, space_external_id, ids)
            except discord.NotFound as e:
                if e.code not in (0, 10003):
                    raise
                log.warning("space %s (%s) is gone (%s); creating it again", message.space.address, space_external_id, e)
                self.forget(int(space_external_id))
                new_id = await self.ensure_space(message.space)
                if self.store is not None:
                    await self.store.record_space(message.space.agency_external_id, message.space.address, new_id,
                                                  kind=message.space.kind, name=message.space.name)
                ids.clear()  # what went out went with the deleted channel
                try:
                    return await self._send(message, new_id, ids)
                except discord.NotFound as again:
                    if again.code not in (0, 10003):
                        raise
                    raise ChannelGoneError(f"{where} was not found even after creating it again") from again
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise _mapped(e, where) from e

    async def _send(self, message: OutboundMessage, space_external_id: str, ids: list[int]) -> str:
        guild, channel, thread = await self._target(message, space_external_id)
        mention, allowed = self.mentions(guild, message.mention_user_ids)
        view = await self._view(message)
        hook = await self._webhook(channel)
        # through a webhook the mention leads the text; in an embed it goes in the plain content
        content = f"{mention} {message.content}".strip() if mention and hook is not None else message.content
        chunks = split_message(content) or [message.attachment_name or "\u200b"]
        if message.maybe_sent and not ids:  # the last process may have sent (part of) it before it died: look first
            ids.extend(await self._already_sent(thread or channel, hook, message, chunks))
        for i, chunk in enumerate(chunks):
            if i < len(ids):
                continue
            last = i == len(chunks) - 1
            sent = await self._send_one(channel, thread, hook, message, chunk, i, allowed,
                                        view if last else None, self._file(message) if last else None)
            ids.append(sent.id)
        return str(ids[0])

    async def _already_sent(self, dest: discord.abc.Messageable, hook: discord.Webhook | None, message: OutboundMessage,
                            chunks: list[str]) -> list[int]:
        """The ids of the leading ``chunks`` of ``message`` already in ``dest`` (recent history), in order.

        Webhook sends carry no nonce, so a message sent just before a crash (and never marked delivered)
        is recognised by its author (this persona through our webhook, or our bot's embed) and its text."""
        name = persona_name(message.persona)
        me = self.bot.user.id if self.bot is not None and self.bot.user is not None else None

        def text(m: discord.Message) -> str | None:
            if hook is not None and m.webhook_id == hook.id and m.author.name == name:
                return m.content
            if me is not None and m.author.id == me and m.embeds and m.embeds[0].author and m.embeds[0].author.name == name:
                return m.embeds[0].description
            return None

        try:
            recent = [m async for m in dest.history(limit=RECENT_CHECK)][::-1]  # oldest first
        except Exception as e:  # noqa: BLE001 - e.g. no Read Message History: send, rather than risk losing it
            log.warning("could not read recent messages to check for a resend (%s: %s); sending message %s", type(e).__name__, e, message.id)
            return []
        ours = [(m.id, t) for m in recent if (t := text(m)) is not None]  # a person may have written in between
        for start in range(len(ours) - 1, -1, -1):  # the latest run of ours that starts with chunk 0
            if ours[start][1] != chunks[0]:
                continue
            found = [ours[start][0]]
            for k, chunk in enumerate(chunks[1:], start=1):
                if start + k < len(ours) and ours[start + k][1] == chunk:
                    found.append(ours[start + k][0])
                else:
                    break
            log.info("message %s was already delivered before the restart (%d of %d part(s)); not posting it again",
                     message.id, len(found), len(chunks))
            return found
        return []

    async def _send_one(self, channel: discord.TextChannel, thread: discord.Thread | None, hook: discord.Webhook | None,
                        message: OutboundMessage, chunk: str, index: int, allowed: discord.AllowedMentions,
                        view: discord.ui.View | None, file: discord.File | None) -> discord.Message:
        extra: dict[str, Any] = {}
        if view is not None:
            extra["view"] = view
        if file is not None:
            extra["file"] = file
        if hook is not None:
            try:
                msg = await hook.send(chunk, username=persona_name(message.persona), avatar_url=self.avatar_for(message.persona),
                                      thread=thread if thread is not None else discord.utils.MISSING, wait=True,
                                      allowed_mentions=allowed, **extra)
                return msg
            except discord.NotFound as e:
                if e.code != 10015:  # not "Unknown Webhook": the channel or thread is gone
                    raise
                log.warning("webhook of #%s was deleted; creating a new one", channel.name)
                self._hooks.pop(channel.id, None)
                hook = await self._webhook(channel)
                if file is not None:
                    file.reset()
                if hook is not None:
                    return await hook.send(chunk, username=persona_name(message.persona), avatar_url=self.avatar_for(message.persona),
                                           thread=thread if thread is not None else discord.utils.MISSING, wait=True,
                                           allowed_mentions=allowed, **extra)
        # no webhook: an embed whose author is the persona; a nonce makes a resend after a crash a no-op
        dest: discord.TextChannel | discord.Thread = thread or channel
        missing = missing_in(dest, "send_messages_in_threads" if thread is not None else "send_messages", "embed_links")
        if missing:
            raise DiscordPermissionError(missing, f"#{channel.name}")
        mention_line = None
        body = chunk
        embed = discord.Embed(description=body, colour=persona_colour(message.persona))
        embed.set_author(name=persona_name(message.persona), icon_url=self.avatar_for(message.persona))
        if index == 0 and message.mention_user_ids:
            mention_line, _ = self.mentions(channel.guild, message.mention_user_ids)
        nonce = f"ateams-{message.id}" + (f"-{index}" if index else "")  # discord.py sends it with enforce_nonce
        return await dest.send(content=mention_line or None, embed=embed, allowed_mentions=allowed, nonce=nonce[:25], **extra)

    async def edit(self, message: OutboundMessage, space_external_id: str, external_id: str) -> str:
        try:
            edited = await self._edit(message, space_external_id, external_id)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise _mapped(e, f"#{message.space.name or message.space.address}") from e
        if edited is not None:
            return edited
        log.info("message %s to edit is gone; posting it again", external_id)
        return await self.send(message, space_external_id)

    async def _edit(self, message: OutboundMessage, space_external_id: str, external_id: str) -> str | None:
        guild, channel, thread = await self._target(message, space_external_id)
        text = truncate(message.content)
        hook = await self._webhook(channel)
        if hook is not None:
            try:
                await hook.edit_message(int(external_id), content=text,
                                        thread=thread if thread is not None else discord.utils.MISSING)
                return external_id
            except discord.NotFound:
                pass  # deleted, or posted as an embed before the webhook existed
        dest = thread or channel
        try:
            old = await dest.fetch_message(int(external_id))
            if old.author.id == guild.me.id:
                embed = discord.Embed(description=text, colour=persona_colour(message.persona))
                embed.set_author(name=persona_name(message.persona), icon_url=self.avatar_for(message.persona))
                await old.edit(embed=embed)
                return external_id
        except discord.NotFound:
            pass
        return None
