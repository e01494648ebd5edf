"""`/project new|status|pause|resume|cancel` and `/budget`."""
from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from agency.schemas import OVERSIGHT_LEVELS
from bot.checks import director_only
from bot.context import agency_id, answer, project_autocomplete, project_here

if TYPE_CHECKING:
    from bot.client import AgencyBot

OVERSIGHT_CHOICES = [
    app_commands.Choice(name="plan - approve the approach and the plan, then it runs", value="plan"),
    app_commands.Choice(name="autonomous - runs to the end on its own", value="autonomous"),
    app_commands.Choice(name="milestones - also approve each stream when it is done", value="milestones"),
    app_commands.Choice(name="every task - approve every task's output", value="every_task"),
]
assert {c.value for c in OVERSIGHT_CHOICES} == set(OVERSIGHT_LEVELS)

PROJECT_HELP = "The project (default: the one of this channel, else the latest active one)"


class Projects(commands.Cog):
    project = app_commands.Group(name="project", description="Start, watch and steer projects.", guild_only=True)

    def __init__(self, bot: AgencyBot) -> None:
        self.bot = bot

    @project.command(name="new")
    @app_commands.describe(objective="What the agency should achieve, in a sentence or two",
                           oversight="Where the project waits for you (default: plan)",
                           budget="Budget in USD; the project pauses when it is spent")
    @app_commands.choices(oversight=OVERSIGHT_CHOICES)
    @director_only()
    async def new(self, interaction: discord.Interaction, objective: app_commands.Range[str, 10, 2000],
                  oversight: app_commands.Choice[str] | None = None,
                  budget: app_commands.Range[float, 0.01, 100000.0] | None = None) -> None:
        """Start a project: the PM proposes approaches in the project's #overview."""
        await interaction.response.defer(thinking=True)
        info = await self.bot.service.new_project(agency_id(interaction), objective, oversight=oversight.value if oversight else None,
                                                  budget_usd=budget, actor=self.bot.actor(interaction.user))
        dry = " (dry run: no model is configured, every role is simulated)" if info.dry_run else ""
        await answer(interaction, f"Project #{info.id} started with **{info.oversight}** oversight{dry}. "
                                  f"A category with `#overview` is on its way; the PM will propose approaches there.", ephemeral=False)

    @project.command(name="status")
    @app_commands.describe(project=PROJECT_HELP)
    @app_commands.autocomplete(project=project_autocomplete)
    @director_only()
    async def status(self, interaction: discord.Interaction, project: int | None = None) -> None:
        """Show a project's tasks, streams, blockers and spend."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        pid = await project_here(interaction, project)
        service = self.bot.service
        await answer(interaction, service.render_status(await service.status(pid)))

    @project.command(name="pause")
    @app_commands.describe(project=PROJECT_HELP)
    @app_commands.autocomplete(project=project_autocomplete)
    @director_only()
    async def pause(self, interaction: discord.Interaction, project: int | None = None) -> None:
        """Pause a project before its next model call."""
        await interaction.response.defer(thinking=True)
        pid = await project_here(interaction, project)
        await answer(interaction, await self.bot.service.pause(pid, self.bot.actor(interaction.user)), ephemeral=False)

    @project.command(name="resume")
    @app_commands.describe(project=PROJECT_HELP)
    @app_commands.autocomplete(project=project_autocomplete)
    @director_only()
    async def resume(self, interaction: discord.Interaction, project: int | None = None) -> None:
        """Resume a paused or blocked project."""
        await interaction.response.defer(thinking=True)
        pid = await project_here(interaction, project)
        await answer(interaction, await self.bot.service.resume(pid, self.bot.actor(interaction.user)), ephemeral=False)

    @project.command(name="cancel")
    @app_commands.describe(project=PROJECT_HELP)
    @app_commands.autocomplete(project=project_autocomplete)
    @director_only()
    async def cancel(self, interaction: discord.Interaction, project: int | None = None) -> None:
        """Cancel a project (its channels stay as a record)."""
        await interaction.response.defer(thinking=True)
        pid = await project_here(interaction, project)
        await answer(interaction, await self.bot.service.cancel(pid, self.bot.actor(interaction.user)), ephemeral=False)

    @app_commands.command(name="budget")
    @app_commands.guild_only()
    @app_commands.describe(amount="New budget in USD (leave empty to see the spend)", project=PROJECT_HELP)
    @app_commands.autocomplete(project=project_autocomplete)
    @director_only()
    async def budget(self, interaction: discord.Interaction, amount: app_commands.Range[float, 0.01, 100000.0] | None = None,
                     project: int | None = None) -> None:
        """Show a project's spend, or set its budget in USD."""
        await interaction.response.defer(ephemeral=amount is None, thinking=True)
        pid = await project_here(interaction, project)
        await answer(interaction, await self.bot.service.set_budget(pid, amount, self.bot.actor(interaction.user)), ephemeral=amount is None)


async def setup(bot: AgencyBot) -> None:
    await bot.add_cog(Projects(bot))
