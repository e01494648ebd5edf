"""The error handler: every application-command error is answered through :mod:`bot.errors`."""
from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import reply_error

if TYPE_CHECKING:
    from bot.client import AgencyBot


class ErrorHandler(commands.Cog):
    """Routes every application-command error through :func:`reply_error`."""

    def __init__(self, bot: AgencyBot) -> None:
        self.bot = bot
        self._previous = bot.tree.on_error

    async def cog_load(self) -> None:
        self.bot.tree.on_error = self.on_app_command_error  # type: ignore[method-assign]

    async def cog_unload(self) -> None:
        self.bot.tree.on_error = self._previous  # type: ignore[method-assign]

    async def on_app_command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await reply_error(interaction, error)


async def setup(bot: AgencyBot) -> None:
    await bot.add_cog(ErrorHandler(bot))
