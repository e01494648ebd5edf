"""Permission checks for application commands (small factories, RoboDanny style)."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import discord
from discord import app_commands

from bot.errors import NotDirectorError, NotServerManagerError

if TYPE_CHECKING:
    from bot.client import AgencyBot

T = TypeVar("T")


def director_only() -> Callable[[T], T]:
    """The server owner, or a member with the Director role."""

    async def predicate(interaction: discord.Interaction) -> bool:
        bot: AgencyBot = interaction.client  # type: ignore[assignment]
        if interaction.guild is None:
            raise app_commands.NoPrivateMessage()
        if bot.is_director(interaction.user):
            return True
        role = bot.settings.discord.director_role
        raise NotDirectorError(f"Only the Director (the server owner or the **{role}** role) can use `/{interaction.command.qualified_name if interaction.command else 'this'}`.")

    return app_commands.check(predicate)


def server_manager_only() -> Callable[[T], T]:
    """The server owner, or a member with Manage Server."""

    async def predicate(interaction: discord.Interaction) -> bool:
        user: Any = interaction.user
        if interaction.guild is None or not isinstance(user, discord.Member):
            raise app_commands.NoPrivateMessage()
        if interaction.guild.owner_id == user.id or user.guild_permissions.manage_guild or user.guild_permissions.administrator:
            return True
        raise NotServerManagerError("Only the server owner or a member with **Manage Server** can set up the agency.")

    return app_commands.check(predicate)
