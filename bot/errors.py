"""Errors become replies here: domain errors show their ``user_message``, a Discord permission
error names the missing permission, and anything else becomes "Something went wrong (ref ...)"
for the user with the full trace, under the same ref, in the log.

Used by the error-handler cog (application commands), the approval views and the relay.
"""
from __future__ import annotations

import logging
import secrets

import discord
from discord import app_commands
from discord.ext import commands

from agency.errors import AgencyError
from bot.permissions import DiscordPermissionError, label, missing_in

log = logging.getLogger(__name__)


class NotDirectorError(app_commands.CheckFailure):
    """The caller is not the Director."""


class NotServerManagerError(app_commands.CheckFailure):
    """The caller is neither the server owner nor has Manage Server."""


def _unwrap(error: BaseException) -> BaseException:
    while isinstance(error, (app_commands.CommandInvokeError, commands.CommandInvokeError)) and error.original is not None:
        error = error.original
    if isinstance(error, app_commands.TransformerError) and error.__cause__ is not None:
        return error.__cause__
    return error


def describe_error(error: BaseException, *, channel: object = None) -> str:
    """What to tell the user about ``error`` (logging the unexpected ones with a ref)."""
    e = _unwrap(error)
    if isinstance(e, AgencyError):
        return e.user_message
    if isinstance(e, (NotDirectorError, NotServerManagerError)):
        return str(e)
    if isinstance(e, app_commands.BotMissingPermissions):
        return DiscordPermissionError(e.missing_permissions).user_message
    if isinstance(e, app_commands.MissingPermissions):
        return "You need the " + ", ".join(f"**{label(p)}**" for p in e.missing_permissions) + " permission to do that."
    if isinstance(e, app_commands.NoPrivateMessage):
        return "This command works only in a server."
    if isinstance(e, app_commands.CommandOnCooldown):
        return f"Slow down: try again in {e.retry_after:.0f} s."
    if isinstance(e, app_commands.CheckFailure):
        return str(e) or "You cannot use this command here."
    if isinstance(e, app_commands.TransformerError):
        return f"`{e.value}` is not a valid value here."
    if isinstance(e, discord.Forbidden):
        missing = missing_in(channel) if isinstance(channel, (discord.abc.GuildChannel, discord.Thread)) else []
        if missing:
            return DiscordPermissionError(missing).user_message
        return f"Discord refused the action: {e.text or 'missing permissions'} (code {e.code}). Check my role's permissions."
    ref = secrets.token_hex(4)
    log.error("unhandled error (ref %s)", ref, exc_info=(type(e), e, e.__traceback__))
    return f"Something went wrong (ref {ref})."


async def reply_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Answer an interaction with the error, ephemerally, whether or not it was deferred."""
    text = describe_error(error, channel=interaction.channel)
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as e:
        log.warning("could not report an error to the user: %s", e)
