"""`/approve` and `/reject`: the same decisions as the buttons on approval messages."""
from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import director_only
from bot.context import answer, project_autocomplete, project_here
from bot.views import submit_reject_reason

if TYPE_CHECKING:
    from bot.client import AgencyBot


class Approvals(commands.Cog):
    def __init__(self, bot: AgencyBot) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """A reject's reason form, answered here rather than by the form's object (see ``RejectModal``)."""
        await submit_reject_reason(interaction)

    @app_commands.command(name="approve")
    @app_commands.guild_only()
    @app_commands.describe(choice="The approach to go with (for approach choices)",
                           project="The project (default: the one of this channel, else the latest active one)")
    @app_commands.autocomplete(project=project_autocomplete)
    @director_only()
    async def approve(self, interaction: discord.Interaction, choice: app_commands.Range[int, 1, 20] | None = None,
                      project: int | None = None) -> None:
        """Approve what the project is waiting for (or pick approach N)."""
        await interaction.response.defer(thinking=True)
        pid = await project_here(interaction, project)
        await answer(interaction, await self.bot.service.approve(pid, self.bot.actor(interaction.user), choice=choice), ephemeral=False)

    @app_commands.command(name="reject")
    @app_commands.guild_only()
    @app_commands.describe(reason="What should change", project="The project (default: the one of this channel, else the latest active one)")
    @app_commands.autocomplete(project=project_autocomplete)
    @director_only()
    async def reject(self, interaction: discord.Interaction, reason: app_commands.Range[str, 3, 1000], project: int | None = None) -> None:
        """Reject what the project is waiting for, saying what to change."""
        await interaction.response.defer(thinking=True)
        pid = await project_here(interaction, project)
        result = await self.bot.service.approve(pid, self.bot.actor(interaction.user), approved=False, reason=reason)
        await answer(interaction, result, ephemeral=False)


async def setup(bot: AgencyBot) -> None:
    await bot.add_cog(Approvals(bot))
