"""`/stream add-human` and `/todo`: people as specialists in a work stream."""
from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from agency.errors import AgencyError
from bot.checks import director_only
from bot.context import address_here, agency_id, answer

if TYPE_CHECKING:
    from bot.client import AgencyBot


class Streams(commands.Cog):
    stream = app_commands.Group(name="stream", description="Work streams.", guild_only=True)

    def __init__(self, bot: AgencyBot) -> None:
        self.bot = bot

    @stream.command(name="add-human")
    @app_commands.describe(member="The person who joins this stream as a specialist")
    @director_only()
    async def add_human(self, interaction: discord.Interaction, member: discord.Member) -> None:
        """Add a person to this work stream: the PM may assign them tasks; they submit with /submit."""
        await interaction.response.defer(thinking=True)
        if member.bot:
            raise AgencyError("Bots cannot be specialists; add a person.")
        address = await address_here(interaction)
        if address is None:
            raise AgencyError("Use `/stream add-human` inside a work stream's channel.")
        result = await self.bot.service.add_human(agency_id(interaction), address, str(member.id), member.display_name,
                                                  self.bot.actor(interaction.user))
        await answer(interaction, result, ephemeral=False)

    @app_commands.command(name="todo")
    @app_commands.guild_only()
    async def todo(self, interaction: discord.Interaction) -> None:
        """List the tasks assigned to you as a human specialist."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        await answer(interaction, await self.bot.service.todo(agency_id(interaction), str(interaction.user.id)))


async def setup(bot: AgencyBot) -> None:
    await bot.add_cog(Streams(bot))
