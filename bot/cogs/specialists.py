"""`/specialist list|show` and `/feedback`."""
from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.checks import director_only
from bot.context import agency_id, answer, handle_autocomplete

if TYPE_CHECKING:
    from bot.client import AgencyBot


class Specialists(commands.Cog):
    specialist = app_commands.Group(name="specialist", description="The agency's specialists.", guild_only=True)

    def __init__(self, bot: AgencyBot) -> None:
        self.bot = bot

    @specialist.command(name="list")
    @director_only()
    async def list_(self, interaction: discord.Interaction) -> None:
        """List the agency's specialists with their record."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        members = await self.bot.service.members(agency_id(interaction))
        lines = [f"@{m.handle} - {m.role} ({m.kind}) - {m.record.get('tasks_done', 0)} tasks done"
                 + (f", rated {m.record['director_rating']}" if m.record.get("director_rating") else "") for m in members]
        await answer(interaction, "\n".join(lines) or "No specialists yet: they are hired when a plan is approved.")

    @specialist.command(name="show")
    @app_commands.describe(handle="The member's handle, e.g. Researcher-A")
    @app_commands.autocomplete(handle=handle_autocomplete)
    @director_only()
    async def show(self, interaction: discord.Interaction, handle: str) -> None:
        """Show a specialist: expertise, expectations, record and system message."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        service = self.bot.service
        await answer(interaction, service.render_member(await service.member(agency_id(interaction), handle)))

    @app_commands.command(name="feedback")
    @app_commands.guild_only()
    @app_commands.describe(handle="The member's handle", rating="1 (poor) to 5 (excellent)", text="What was good or should change")
    @app_commands.autocomplete(handle=handle_autocomplete)
    @director_only()
    async def feedback(self, interaction: discord.Interaction, handle: str, rating: app_commands.Range[int, 1, 5],
                       text: app_commands.Range[str, 1, 2000] = "") -> None:
        """Rate a member's work; the Learning Manager turns it into lessons."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        result = await self.bot.service.feedback(agency_id(interaction), handle, rating, text, self.bot.actor(interaction.user))
        await answer(interaction, result)


async def setup(bot: AgencyBot) -> None:
    await bot.add_cog(Specialists(bot))
